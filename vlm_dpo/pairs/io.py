"""Imports and exports of preference pairs: JSONL, CSV, Hugging Face datasets, and TRL's vision format.

TRL's vision preference format has columns `images` (a list of images), `prompt`, `chosen`, `rejected`, each
text either plain or conversational (a list of {"role", "content"} messages, content a string or a list of
{"type": "text"|"image"} parts). We export conversational rows with the image embedded (so other tools can
train on the file alone) plus our own columns (pair_id, provenance, `task`, and the image path as `image_path`:
TRL takes a column named `image` for the image itself), so a round trip through the export restores every pair
exactly. Imports accept either form (rows without `task`, TRL's own or older exports, are captions); images
that arrive as pixels are written once under `<root>/imported/` and referenced by path.

The annotation app (see annotate/) writes judgement records; `pairs_from_judgements` turns them into human
pairs. A judgement:
    {"judgement_id", "annotator", "image_id", "image", "prompt", "grounding", "task", "a", "b",
     "choice": "a" | "b" | "tie" | "both_bad", "edit": str | null, "time": iso8601}
`task` is the judged pair's task ("caption" | "vqa"), which its pairs keep; records written before it read as
"caption".
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from ..images import resolve_image
from .dataset import COLUMNS, MAX_CHARS, TASKS, Rejections, _content, make_pair, validate_pair

EXTRA_COLUMNS = [c for c in COLUMNS if c not in ("prompt", "chosen", "rejected")]
# TRL reads a column named "image" as the example's (single) image and prefers it over "images", so the
# export carries our relative image path under another name.
TRL_IMAGE_PATH = "image_path"


class ImportError_(ValueError):
    """A pair file that cannot be imported at all (the message names it)."""


def _text(value, where: str) -> str:
    """Plain text of a TRL field: a string, or the text parts of conversational messages."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for msg in value:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            else:
                raise ValueError(f"{where}: message without content: {msg!r}")
        return " ".join(p.strip() for p in parts if p is not None).strip()
    raise ValueError(f"{where}: expected text or messages, got {type(value).__name__}")


def _store_image(img, root: Path) -> str:
    """Write pixels (PIL image or {'bytes': ...}) once under root/imported/<hash>.png; return the relative path."""
    from PIL import Image

    if isinstance(img, dict) and img.get("bytes"):
        try:
            img = Image.open(io.BytesIO(img["bytes"]))
        except Exception as e:  # PIL raises several types for bytes that are no image
            raise ValueError(f"image bytes are not an image ({e})") from None
    elif isinstance(img, dict) and img.get("path"):
        return img["path"]
    if not isinstance(img, Image.Image):
        raise ValueError(f"expected an image path, PIL image or {{'bytes': ...}}, got {type(img).__name__}")
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    data = buf.getvalue()
    rel = f"imported/{hashlib.sha256(data).hexdigest()[:16]}.png"
    path = root / rel
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return rel


def pair_from_row(row: dict, where: str, root: Path, *, source: str = "human", annotator: str | None = None) -> dict:
    """One imported row (ours or TRL's) -> a pair. Raises ValueError naming `where` when malformed."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not an object")
    for c in ("prompt", "chosen", "rejected"):
        if row.get(c) is None:  # absent, or an empty CSV cell / a short CSV row
            raise ValueError(f"{where}: missing column {c!r}")
    image = row.get(TRL_IMAGE_PATH) or row.get("image")
    try:
        if image is not None and not isinstance(image, str):
            image = _store_image(image, root)  # TRL's single-image column holding pixels
        if not image:
            images = row.get("images")
            if isinstance(images, (list, tuple)) and images:
                image = images[0] if isinstance(images[0], str) else _store_image(images[0], root)
            elif isinstance(images, str):
                image = images
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not image:
        raise ValueError(f"{where}: no image (column 'image' or 'images')")
    extras = {}
    for c in ("scores", "generator", "boxes"):
        v = row.get(c)
        extras[c] = json.loads(v) if isinstance(v, str) and v[:1] in "{[n" else v
    margin = row.get("margin")
    try:
        margin = float(margin) if margin not in (None, "") else None
    except (TypeError, ValueError):
        raise ValueError(f"{where}: margin {margin!r} is not a number") from None
    pair = make_pair(
        image_id=row.get("image_id") or Path(str(image)).stem, image=str(image),
        prompt=_text(row["prompt"], where + " prompt"), chosen=_text(row["chosen"], where + " chosen"),
        rejected=_text(row["rejected"], where + " rejected"),
        source=row.get("source") or source, kind=row.get("kind") or "human", grounding=row.get("grounding"),
        scores=extras["scores"], margin=margin,
        generator=extras["generator"], annotator=row.get("annotator") or annotator,
        split=row.get("split") or "train", boxes=extras["boxes"], task=row.get("task") or "caption")
    if row.get("pair_id") and row["pair_id"] != pair["pair_id"]:
        pair["pair_id"] = row["pair_id"]  # keep the exporter's id (references may be cached under it)
    return pair


def _undecodable(value) -> bool:
    """Whether text read with errors="surrogateescape" held bytes that are no UTF-8."""
    if isinstance(value, list):  # a CSV row longer than its header
        return any(_undecodable(v) for v in value)
    return isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)


def _rows(path: Path):
    """(where, row) of a JSONL, CSV, parquet file or a `datasets` folder (save_to_disk)."""
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        for i, row in enumerate(ds):
            yield f"{path}[{i}]", row
    elif path.suffix == ".jsonl":
        with path.open("rb") as f:
            for i, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield f"{path}:{i}", ValueError(f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})")
                    continue
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{i}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{path}:{i}", ValueError(f"not valid JSON ({e.msg})")
    elif path.suffix == ".csv":
        # spreadsheet exports often start with a BOM; bytes that are no UTF-8 are kept as surrogates so that only
        # their row is skipped
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            for i, row in enumerate(csv.DictReader(f), 2):
                bad = [k for k, v in row.items() if _undecodable(k) or _undecodable(v)]
                if bad:
                    yield f"{path}:{i}", ValueError(f"not UTF-8 text (column {bad[0]!r})")
                    continue
                yield f"{path}:{i}", {k: (v if v != "" else None) for k, v in row.items()}
    elif path.suffix == ".parquet":
        import datasets

        for i, row in enumerate(datasets.Dataset.from_parquet(str(path))):
            yield f"{path}[{i}]", row
    else:
        raise ImportError_(f"{path}: unknown pair file type (expected .jsonl, .csv, .parquet or a datasets folder)")


def import_pairs(path: str | Path, root: str | Path, *, source: str = "human", annotator: str | None = None,
                 rejections: Rejections | None = None, check_images: bool = True,
                 max_chars: int = MAX_CHARS) -> list[dict]:
    """Import pairs from a file; malformed rows are skipped and counted in `rejections` (nothing else is lost):
    rows that are no JSON or not UTF-8 text, NaN / infinite scores, texts over `max_chars` characters (0 = no
    limit), a pair_id already used in the file by a different pair."""
    path, root = Path(path), Path(root)
    if not path.exists():
        raise ImportError_(f"{path}: pair file not found")
    rejections = rejections if rejections is not None else Rejections()
    out, ids = [], {}
    for where, row in _rows(path):
        if isinstance(row, Exception):
            rejections.add("malformed_row", where, str(row))
            continue
        try:
            pair = pair_from_row(row, where, root, source=source, annotator=annotator)
        except ValueError as e:
            rejections.add("malformed_row", where, str(e))
            continue
        if not validate_pair(pair, where, rejections, root if check_images else None, max_chars=max_chars):
            continue
        first = ids.setdefault(pair["pair_id"], (where, _content(pair)))
        if first[0] != where and first[1] != _content(pair):
            rejections.add("pair_id_conflict", where, f"pair_id {pair['pair_id']} is already used by a different "
                                                      f"pair at {first[0]}")
            continue
        out.append(pair)
    return out


def export_trl(pairs: list[dict], root: str | Path, out_dir: str | Path):
    """Pairs -> a `datasets.Dataset` in TRL's conversational vision format (images embedded), saved to disk."""
    import datasets

    root = Path(root)
    extra = [TRL_IMAGE_PATH if c == "image" else c for c in EXTRA_COLUMNS]
    rows = {"images": [], "prompt": [], "chosen": [], "rejected": []} | {c: [] for c in extra}
    for p in pairs:
        path = resolve_image(p["image"], root)
        if path is None or not path.exists():
            raise ValueError(f"pair {p['pair_id']}: image {p['image']!r} not found under {root}")
        rows["images"].append([str(path)])
        rows["prompt"].append([{"role": "user", "content": [{"type": "image", "text": None},
                                                             {"type": "text", "text": p["prompt"]}]}])
        rows["chosen"].append([{"role": "assistant", "content": [{"type": "text", "text": p["chosen"]}]}])
        rows["rejected"].append([{"role": "assistant", "content": [{"type": "text", "text": p["rejected"]}]}])
        for c, name in zip(EXTRA_COLUMNS, extra):
            v = p.get(c)
            rows[name].append(json.dumps(v) if c in ("scores", "generator", "boxes") else v)
    msg = datasets.List({"role": datasets.Value("string"),
                         "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")})})
    features = datasets.Features({"images": datasets.List(datasets.Image()), "prompt": msg, "chosen": msg,
                                  "rejected": msg}
                                 | {c: datasets.Value("float64") if c == "margin" else datasets.Value("string")
                                    for c in extra})
    ds = datasets.Dataset.from_dict(rows, features=features)
    ds.save_to_disk(str(out_dir))
    return ds


def export_jsonl(pairs: list[dict], path: str | Path) -> Path:
    from ..records import write_jsonl_atomic

    return write_jsonl_atomic(path, pairs)


def export_csv(pairs: list[dict], path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for p in pairs:
            w.writerow({c: json.dumps(p.get(c)) if c in ("scores", "generator", "boxes") else p.get(c) for c in COLUMNS})
    tmp.replace(path)
    return path


def pairs_from_judgements(judgements: list[dict], rejections: Rejections | None = None) -> list[dict]:
    """Human pairs from annotation judgements: the picked side beats the other; an edit beats both."""
    rejections = rejections if rejections is not None else Rejections()
    out = []
    for j in judgements:
        where = f"judgement {j.get('judgement_id', '?')}"
        missing = [k for k in ("image", "prompt", "a", "b") if not isinstance(j.get(k), str)]
        if missing:  # one bad record must not sink the others
            rejections.add("malformed_judgement", where, f"missing {missing}")
            continue
        task = j.get("task") or "caption"  # judgements from before the field are of caption pairs
        if task not in TASKS:  # make_pair would raise, sinking every other record
            rejections.add("unknown_task", where, task)
            continue
        base = dict(image_id=j.get("image_id") or Path(j["image"]).stem, image=j["image"], prompt=j["prompt"],
                    grounding=j.get("grounding"), source="human", annotator=j.get("annotator"), task=task)
        if j.get("choice") in ("a", "b"):
            w, l_ = (j["a"], j["b"]) if j["choice"] == "a" else (j["b"], j["a"])
            out.append(make_pair(chosen=w, rejected=l_, kind="human", **base))
        elif j.get("choice") not in ("tie", "both_bad"):
            rejections.add("unknown_choice", where, j.get("choice"))
            continue
        edit = (j.get("edit") or "").strip()
        if edit:
            for other in (j["a"], j["b"]):
                if other.strip() != edit:
                    out.append(make_pair(chosen=edit, rejected=other, kind="human_edit", **base))
    return out
