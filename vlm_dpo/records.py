"""Records that cross stage boundaries, and the JSONL I/O every stage shares.

Each stage writes one JSONL file keyed by a record id. Writing is resumable and atomic:
records are appended to `<file>.partial` one whole batch at a time (a failed write is cut back to the end of the
previous batch) and flushed with fsync, and the file is renamed to its final name only when the stage finishes.
A rerun skips a finished file; an interrupted one resumes from the partial file (a torn last line, from a kill
mid-write, is dropped; a record already there is never appended again), so nothing already done is lost or
doubled. Given `settings` (everything that shaped the records: model and input fingerprints, generation
settings), the file's `<file>.settings.json` records them and a file made under other settings is redone
from scratch, with a warning naming what changed, never reused or mixed.

A full disk is a `StorageError` (a ValueError: the CLI prints one line), and leaves no temp file behind.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

log = logging.getLogger("vlm_dpo")


class RecordError(ValueError):
    """A record in a file is malformed; the message names the file and line."""


class StorageError(ValueError):
    """The disk is full (or over quota) while writing; the message names the file. Finished work is kept."""


def storage_error(e: OSError, path) -> Exception:
    """The error to raise for an OSError while writing `path`: a one-line StorageError for a full disk."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"{path}: no space left on device while writing; free some space and rerun "
                            "(finished work is kept and resumed)")
    return e


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


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


MAPPING_FILE_SUFFIXES = (".json", ".yaml", ".yml")  # the files read_mapping_file reads (JSON, else YAML)


def read_mapping_file(path: str | os.PathLike, what: str, shape: str, items: str) -> dict:
    """The non-empty mapping in a JSON (.json) or YAML (any other suffix) file, or a ValueError that names `what`
    ("vocabulary", "colour palette"), the file and the problem; `shape` says what the mapping should be ("class ->
    list of synonyms"), `items` what its keys are ("classes"). Each caller checks the entries itself."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml  # only needed for YAML files

            data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{what} file {str(path)!r} cannot be read: {e}") from None
    except Exception as e:  # yaml.YAMLError, without importing yaml for JSON files
        raise ValueError(f"{what} file {str(path)!r} is not valid YAML: {e}") from None
    if data is None or data == {}:  # an empty YAML file loads as None
        raise ValueError(f"{what} file {str(path)!r} is empty: it names no {items}")
    if not isinstance(data, dict):
        raise ValueError(f"{what} file {str(path)!r} must be a mapping of {shape}, not {type(data).__name__}")
    return data


def _replace_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills `<path>.tmp`, which then replaces `path`: readers see the old file or the whole new one.
    A failed write leaves no temp file, and a full disk is one StorageError naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        _unlink_quietly(tmp)
        err = storage_error(e, path)
        if err is e:
            raise
        raise err from None
    return path


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write all records to `path` atomically (temp file + fsync + rename)."""
    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    return _replace_atomically(path, write)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return _replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def settings_path(path: str | os.PathLike) -> Path:
    """Where the settings a stage file was made under are recorded (see ResumableJsonl)."""
    path = Path(path)
    return path.with_name(path.name + ".settings.json")


def setting_changes(old, new, prefix: str = "") -> list[str]:
    """What differs between two settings dicts, as 'key.sub: old -> new' lines."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str)
                for c in setting_changes(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def drop_if_other_settings(path: str | os.PathLike, settings: dict, also: Iterable[Path] = ()) -> list[str]:
    """Remove `path` (its partial file, and `also`) when they were made under settings other than `settings`,
    or when a finished file's settings were not recorded; returns what changed (empty when nothing was removed).
    """
    path = Path(path)
    files = [path, path.with_name(path.name + ".partial"), *also]
    if not any(f.exists() for f in files):
        return []
    record = settings_path(path)
    now = json.loads(json.dumps(settings, default=str))
    try:
        old = json.loads(record.read_text()) if record.exists() else None
    except (OSError, json.JSONDecodeError):
        old = None
    if old == now:
        return []
    if old is None and not path.exists() and not any(Path(f).exists() for f in also):
        return []  # a partial file from before settings were recorded: resumed, as it always was
    changed = setting_changes(old, now) if old is not None else ["settings not recorded"]
    log.warning("%s was made with other settings (%s): redoing it", path, "; ".join(changed[:6]))
    for f in files:
        _unlink_quietly(f)
    return changed


def record_settings(path: str | os.PathLike, settings: dict) -> None:
    write_text_atomic(settings_path(path), json.dumps(settings, indent=1, sort_keys=True, default=str))


class ResumableJsonl:
    """Append-only stage output that survives interruption.

    with ResumableJsonl(out, key="image_id") as w:
        todo = [x for x in items if x.id not in w.done]
        for batch in ...: w.write_many(records)     # durable after each call
    # on clean exit the partial file becomes `out`

    If `out` already exists the stage is finished: `done` holds all its keys and `finished` is True.
    """

    def __init__(self, path: str | os.PathLike, key: str, settings: dict | None = None):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.key = key
        self.settings = settings
        # Made under other settings: start afresh (never resume or reuse another run's records).
        self.changed = drop_if_other_settings(self.path, settings) if settings is not None else []
        self.finished = self.path.exists()
        self.done: set[str] = set()
        self._f = None
        source = self.path if self.finished else self.partial
        if source.exists():
            kept, seen = [], set()
            for r in read_jsonl(source, allow_torn_tail=True):
                if str(r[key]) not in seen:  # a record appended twice by an older version: keep the first
                    seen.add(str(r[key]))
                    kept.append(r)
            self.done = seen
            if not self.finished:
                # Rewrite the partial without a torn tail so appends start on a clean line.
                write_jsonl_atomic(self.partial, kept)

    def __enter__(self) -> "ResumableJsonl":
        if not self.finished:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.settings is not None:
                record_settings(self.path, self.settings)
            self._f = open(self.partial, "ab", buffering=0)  # unbuffered: nothing is left to flush after a failure
        return self

    def write_many(self, records: Iterable[dict]) -> None:
        """Append a batch durably, all or nothing: records already in the file are not written again, and a
        failed write (disk full, interrupt) is cut back to the end of the previous batch."""
        if self._f is None:
            raise RuntimeError(f"{self.path}: stage already finished or not opened")
        fd = self._f.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            lines, ids = [], []
            for r in records:
                k = str(r[self.key])
                if k not in self.done and k not in ids:
                    lines.append(json.dumps(r, ensure_ascii=False) + "\n")
                    ids.append(k)
            data = "".join(lines).encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException as e:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            err = storage_error(e, self.partial)
            if err is e:
                raise
            raise err from None
        self.done.update(ids)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            if exc_type is None:
                os.replace(self.partial, self.path)
                self.finished = True
