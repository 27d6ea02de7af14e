"""Records that cross stage boundaries, and the JSONL I/O every stage shares.

Each stage writes one JSONL file keyed by a record id. Writing is resumable and atomic:
records are appended to `<file>.partial` and flushed with fsync per batch, and the file is renamed to its
final name only when the stage finishes. A rerun skips a finished file; an interrupted one resumes from the
partial file (a torn last line, from a kill mid-write, is dropped), so nothing already done is lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


class RecordError(ValueError):
    """A record in a file is malformed; the message names the file and line."""


def read_jsonl(path: str | os.PathLike, *, allow_torn_tail: bool = False) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file, naming file and line on any malformed line.

    `allow_torn_tail` drops an unparseable *last* line (a write cut by a kill) instead of failing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open("r", encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if allow_torn_tail and i == len(lines) and not line.endswith("\n"):
                return
            raise RecordError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise RecordError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        yield obj


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write all records to `path` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


class ResumableJsonl:
    """Append-only stage output that survives interruption.

    with ResumableJsonl(out, key="image_id") as w:
        todo = [x for x in items if x.id not in w.done]
        for batch in ...: w.write_many(records)     # durable after each call
    # on clean exit the partial file becomes `out`

    If `out` already exists the stage is finished: `done` holds all its keys and `finished` is True.
    """

    def __init__(self, path: str | os.PathLike, key: str):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.key = key
        self.finished = self.path.exists()
        self.done: set[str] = set()
        self._f = None
        source = self.path if self.finished else self.partial
        if source.exists():
            kept = list(read_jsonl(source, allow_torn_tail=True))
            self.done = {str(r[key]) for r in kept}
            if not self.finished:
                # Rewrite the partial without a torn tail so appends start on a clean line.
                write_jsonl_atomic(self.partial, kept)

    def __enter__(self) -> "ResumableJsonl":
        if not self.finished:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = self.partial.open("a", encoding="utf-8")
        return self

    def write_many(self, records: Iterable[dict]) -> None:
        if self._f is None:
            raise RuntimeError(f"{self.path}: stage already finished or not opened")
        for r in records:
            self._f.write(json.dumps(r, ensure_ascii=False) + "\n")
            self.done.add(str(r[self.key]))
        self._f.flush()
        os.fsync(self._f.fileno())

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            if exc_type is None:
                os.replace(self.partial, self.path)
                self.finished = True
