"""Stage and cache keys: one deterministic hash of everything that shaped an output.

    key(*parts)                 dataclasses, dicts, lists, scalars -> 16 hex digits (JSON with sorted keys)
    code_fingerprint(*modules)  hash of the source files of modules/packages: a key that covers the code which
                                builds an asset, so editing that code builds a new one (no hand-bumped versions)
    file_fingerprint(path)      hash of a file's content (big files: size + sampled chunks), never its mtime
    path_fingerprint(path)      the same for a file or a whole folder (None when missing)
    model_fingerprint(model)    a model by content: a local file/folder's fingerprint, else the hub id itself

Paths inside a run folder count where the run was made (`portable_path`, `<run>/.origin`), so a run folder moved
or copied elsewhere keeps its keys, and so its finished stages.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from types import ModuleType

KEY_CHARS = 16
# The code the embedded world is built by; every asset trained on the world has it in its key.
WORLD_CODE = ("vlm_dpo.world", "vlm_dpo.plurals")
# Files above this size are fingerprinted by their size and evenly spaced chunks instead of every byte.
WHOLE_FILE_BYTES = 64 << 20
CHUNK_BYTES = 1 << 20
CHUNKS = 16


# Written by RunFolder.setup into a run's root: {"path": the root as the run was made, "resolved": its absolute form}.
ORIGIN_FILE = ".origin"


def portable_path(path: str | Path) -> str:
    """`path` as a string, written under the place its run folder was made when it lies in one that records it
    (ORIGIN_FILE in the nearest such ancestor): a run copied from runs/demo to runs/copy names runs/copy/dpo/model
    "runs/demo/dpo/model" here, relative or absolute as given. Anything else (no such folder, a hub id) unchanged;
    for a run never moved this is the identity, so keys made before the origin was recorded stay as they were."""
    text = str(path)
    # Keys also hold text that is no path (a tokenizer's JSON, prompts): only a short, one-line string can be one.
    if "/" not in text or "\n" in text or len(text) > 1024:
        return text
    p = Path(text)
    try:
        for folder in (p, *p.parents):
            if str(folder) in (".", "/", ""):
                break
            marker = folder / ORIGIN_FILE
            if marker.is_file():
                origin = json.loads(marker.read_text())
                base = origin["resolved"] if p.is_absolute() else origin["path"]
                rest = p.relative_to(folder).as_posix()
                return base if rest == "." else f"{base}/{rest}"
    except (OSError, ValueError, KeyError, TypeError):  # not a path the system accepts, or an unreadable marker
        return text
    return text


def portable(value):
    """JSON-ready form: dataclasses as dicts, tuples as lists, paths as strings (recursively), every path in a run
    folder as where the run was made (portable_path): what keys hash, and what a resumed run's recorded settings are
    compared as."""
    if is_dataclass(value) and not isinstance(value, type):
        return portable(asdict(value))
    if isinstance(value, dict):
        return {str(k): portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, (str, Path)) and "/" in str(value):
        return portable_path(value)
    return value


def key(*parts) -> str:
    """A short, stable hash of `parts` (same parts -> same key, on any machine and Python run)."""
    blob = json.dumps(portable(list(parts)), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_CHARS]


def _source_files(module: ModuleType | str) -> list[tuple[str, Path]]:
    """(name, path) of the module's source file, or of every source file of a package."""
    if isinstance(module, str):
        __import__(module)
        module = sys.modules[module]
    path = Path(module.__file__)
    if path.name == "__init__.py":
        return [(f"{module.__name__}/{p.relative_to(path.parent).as_posix()}", p)
                for p in sorted(path.parent.rglob("*.py"))]
    return [(module.__name__, path)]


@functools.cache
def code_fingerprint(*modules: ModuleType | str) -> str:
    """Hash of the source of the given modules (objects or dotted names); a package counts with all its files.
    Read once per process: the code this process runs (an edit during a run takes effect at the next run)."""
    h = hashlib.sha256()
    for module in modules:
        for name, path in _source_files(module):
            h.update(name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:KEY_CHARS]


def file_fingerprint(path: str | Path) -> str:
    """Hash of a file's content: every byte up to WHOLE_FILE_BYTES, else its size and CHUNKS evenly spaced
    chunks (a changed weight file changes its size or, in practice, some sampled chunk)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: f.read(CHUNK_BYTES), b""):
                h.update(block)
        else:
            for i in range(CHUNKS):
                f.seek((size - CHUNK_BYTES) * i // (CHUNKS - 1))
                h.update(f.read(CHUNK_BYTES))
    return h.hexdigest()[:KEY_CHARS]


def path_fingerprint(path: str | Path) -> str | None:
    """file_fingerprint of a file, of every file (with its relative name) of a folder, None when missing."""
    path = Path(path)
    if path.is_file():
        return file_fingerprint(path)
    if path.is_dir():
        return key([(p.relative_to(path).as_posix(), file_fingerprint(p)) for p in sorted(path.rglob("*"))
                    if p.is_file()])
    return None


def model_fingerprint(model: str | Path) -> str:
    """What a model *is*, for keys: a local checkpoint (file or save_pretrained folder) by its path and content,
    so a model retrained at the same path is another model; a hub id (or any name not on disk) by the name."""
    path = Path(str(model)).expanduser()
    fp = path_fingerprint(path) if path.exists() else None
    return f"{portable_path(path.resolve())}@{fp}" if fp is not None else str(model)


def images_fingerprint(items: list[dict]) -> str:
    """The content of a list of images ({image_id, path, ...}): ids, names and every file's fingerprint (None
    for a missing one), so added, deleted, renamed or edited images change it."""
    return key([(str(it["image_id"]), str(it.get("file", "")), path_fingerprint(it["path"])) for it in items])
