"""The preference pair record and the one dataset type every source and consumer shares.

A pair (one JSON object / one row):
    pair_id     stable hash of (image, prompt, chosen, rejected): the dedup and reference-cache key
    image_id    the image's id; pairs are split by it, so no image leaks between train and val
    image       path of the image, relative to the data root (or absolute); never the pixels
    prompt      the user text (without chat template), grounding included when grounded
    grounding   the grounding context inside the prompt, or null
    chosen, rejected
    source      "mined" | "synthetic" | "context" | "human"
    kind        what made the rejected side worse: "mined", "add_object", "count", "swap_sides", "vague",
                "inject_false", "drop_true", "human", "human_edit", ...
    scores      {"chosen": {...judge result...}, "rejected": {...}} or {} (human pairs without a judge)
    margin      judge score of chosen minus rejected (null when not judged)
    generator   {"model": ..., "settings": {...}} for generated captions, else null
    annotator   annotator id for human pairs, else null
    split       "train" | "val"
    boxes       optional [[x1, y1, x2, y2], ...] of the detected objects (for mDPO's box-masked corruption)
    task        "caption" (describe the image) | "vqa" (answer a question about it, vlm_dpo/vqa/); files
                written before the column existed read as "caption"

The dataset is a `datasets.Dataset` saved as parquet (and JSONL for eyes), images referenced by path.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..images import resolve_image  # noqa: F401  (also re-exported: older callers import it from here)
from ..records import read_jsonl, write_jsonl_atomic

# Default longest prompt / chosen / rejected (characters) of a pair (pairs.max_chars; 0 = no limit): the world's
# captions are under 150, real captions under 1,000; a 10,000-token runaway caption would exhaust training memory.
MAX_CHARS = 4000
SOURCES = ("mined", "synthetic", "context", "human")
COLUMNS = ("pair_id", "image_id", "image", "prompt", "grounding", "chosen", "rejected", "source", "kind",
           "scores", "margin", "generator", "annotator", "split", "boxes", "task")
TASKS = ("caption", "vqa")


def pair_id(image: str, prompt: str, chosen: str, rejected: str) -> str:
    blob = json.dumps([str(image), prompt, chosen.strip(), rejected.strip()])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_pair(*, image_id: str, image: str, prompt: str, chosen: str, rejected: str, source: str, kind: str,
              grounding: str | None = None, scores: dict | None = None, margin: float | None = None,
              generator: dict | None = None, annotator: str | None = None, split: str = "train",
              boxes: list | None = None, task: str = "caption") -> dict:
    if source not in SOURCES:
        raise ValueError(f"unknown pair source {source!r}; expected one of {SOURCES}")
    if task not in TASKS:
        raise ValueError(f"unknown pair task {task!r}; expected one of {TASKS}")
    return {"pair_id": pair_id(image, prompt, chosen, rejected), "image_id": str(image_id), "image": str(image),
            "prompt": prompt, "grounding": grounding, "chosen": chosen.strip(), "rejected": rejected.strip(),
            "source": source, "kind": kind, "scores": scores or {}, "margin": margin, "generator": generator,
            "annotator": annotator, "split": split, "boxes": boxes, "task": task}


@dataclass
class Rejections:
    """Rows left out of a dataset, counted by reason, with the first few offending rows kept for the report."""
    counts: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)
    keep: int = 5

    def add(self, reason: str, where: str, row=None) -> None:
        self.counts[reason] += 1
        if len(self.examples) < self.keep:
            self.examples.append({"reason": reason, "where": where, "row": row})

    def to_dict(self) -> dict:
        return {"skipped": dict(self.counts), "first": self.examples}


def _non_finite(value) -> bool:
    """Whether a number nested anywhere in `value` is NaN or infinite."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


def finite_json(value):
    """`value` with every NaN / infinite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def validate_pair(p: dict, where: str, rejections: Rejections, root: Path | None = None,
                  max_chars: int = 0) -> bool:
    """Keep a pair or count why not: empty or identical captions, an empty prompt, a missing image, a text
    longer than `max_chars` (0 = no limit), a NaN or infinite score or margin.

    (An empty prompt or image would make `load_pairs` refuse the whole saved file.)"""
    chosen, rejected = (p.get("chosen") or "").strip(), (p.get("rejected") or "").strip()
    if not chosen or not rejected:
        rejections.add("empty_caption", where, p)
        return False
    if chosen == rejected:
        rejections.add("chosen_equals_rejected", where, p)
        return False
    if not (p.get("prompt") or "").strip():
        rejections.add("empty_prompt", where, p)
        return False
    if not p.get("image"):
        rejections.add("missing_image", where, p)
        return False
    if max_chars:
        long = [c for c in ("prompt", "chosen", "rejected") if len(p.get(c) or "") > max_chars]
        if long:
            rejections.add("too_long", where, f"{', '.join(long)} over {max_chars} characters (pairs.max_chars)")
            return False
    if _non_finite(p.get("margin")) or _non_finite(p.get("scores")):
        rejections.add("non_finite_score", where, "a score or margin is NaN or infinite")
        return False
    if root is not None:
        path = resolve_image(p["image"], root)
        if path is None:
            rejections.add("image_outside_root", where, p)
            return False
        if not path.is_file():  # the root itself or a folder is no image
            rejections.add("missing_image", where, p)
            return False
    return True


def _content(p: dict) -> str:
    return pair_id(p["image"], p["prompt"], p["chosen"], p["rejected"])


def dedupe(pairs: list[dict], rejections: Rejections | None = None, merged: Counter | None = None) -> list[dict]:
    """Drop repeats of the same pair (same pair_id and same image, prompt and captions), counted as
    "duplicate". A *different* pair under an id already taken (an import's own pair_id) is not a duplicate: it
    is left out as "pair_id_conflict", named, since the id keys the reference cache and provenance.
    The same pair from two sources (a person judged exactly what the judge mined) is one pair: a human pair wins
    over any other source, since a person's preference is the evidence the judge only estimates; otherwise the
    first is kept. The winner takes the loser's place, and each merge is counted in `merged` as
    "<kept>_over_<dropped>" (e.g. "human_over_mined"), not as a duplicate."""
    seen: dict[str, int] = {}  # pair_id -> index of the kept pair in `out`
    out = []
    for p in pairs:
        i = seen.get(p["pair_id"])
        if i is None:
            seen[p["pair_id"]] = len(out)
            out.append(p)
            continue
        first = out[i]
        if _content(first) != _content(p):
            if rejections is not None:
                rejections.add("pair_id_conflict", f"pair {p['pair_id']} ({p['source']}, image {p['image']})",
                               "another pair with other content has this pair_id")
        elif first["source"] == p["source"]:
            if rejections is not None:
                rejections.counts["duplicate"] += 1  # counted only: the kept copy is the same pair
        else:
            keep, drop = (p, first) if p["source"] == "human" else (first, p)
            out[i] = keep
            if merged is not None:
                merged[f"{keep['source']}_over_{drop['source']}"] += 1
    return out


def split_by_image(pairs: list[dict], val_fraction: float, seed: int = 0) -> list[dict]:
    """Assign split per image (never per pair), deterministic from the seed."""
    images = sorted({p["image_id"] for p in pairs})
    rng = random.Random(f"pair-split/{seed}")
    rng.shuffle(images)
    n_val = round(len(images) * val_fraction)
    val = set(images[:n_val])
    return [p | {"split": "val" if p["image_id"] in val else "train"} for p in pairs]


def statistics(pairs: list[dict]) -> dict:
    """Pairs per source/kind/split, score margins and the chosen-minus-rejected length difference."""
    def words(s):
        return len(s.split())

    margins = [p["margin"] for p in pairs if p.get("margin") is not None]
    dlen = [words(p["chosen"]) - words(p["rejected"]) for p in pairs]

    def summary(xs):
        if not xs:
            return None
        xs = sorted(xs)
        return {"mean": sum(xs) / len(xs), "min": xs[0], "median": xs[len(xs) // 2], "max": xs[-1]}

    return {
        "pairs": len(pairs), "images": len({p["image_id"] for p in pairs}),
        "by_source": dict(Counter(p["source"] for p in pairs)),
        "by_task": dict(Counter(p.get("task") or "caption" for p in pairs)),
        "by_kind": dict(Counter(p["kind"] for p in pairs)),
        "by_split": dict(Counter(p["split"] for p in pairs)),
        "margin": summary(margins),
        "length_diff_words": summary(dlen),
        "chosen_shorter_share": (sum(d < 0 for d in dlen) / len(dlen)) if dlen else None,
    }


def save_pairs(pairs: list[dict], path: str | Path) -> Path:
    """Write pairs as parquet (via `datasets`) or JSONL, by suffix; atomically."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return write_jsonl_atomic(path, pairs)
    ds = to_dataset(pairs)
    tmp = path.with_name(path.name + ".tmp")
    ds.to_parquet(str(tmp))
    tmp.replace(path)
    return path


def to_dataset(pairs: list[dict]):
    import datasets

    # Nested free-form columns (scores, generator, boxes) travel as JSON strings: parquet needs one schema.
    rows = {c: [] for c in COLUMNS}
    for p in pairs:
        for c in COLUMNS:
            v = p.get(c) if c != "task" else (p.get("task") or "caption")
            rows[c].append(json.dumps(v) if c in ("scores", "generator", "boxes") else v)
    features = datasets.Features({c: datasets.Value("float64") if c == "margin" else datasets.Value("string")
                                  for c in COLUMNS})
    return datasets.Dataset.from_dict(rows, features=features)


def load_pairs(path: str | Path) -> list[dict]:
    """Pairs from our parquet or JSONL files (the formats `save_pairs` writes)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: pair file not found")
    if path.suffix == ".jsonl":
        pairs = list(read_jsonl(path))
    else:
        import datasets

        try:
            ds = datasets.Dataset.from_parquet(str(path))
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise ValueError(f"{path}: not a readable parquet pair file ({e})") from None
        pairs = []
        for row in ds:
            for c in ("scores", "generator", "boxes"):
                if isinstance(row.get(c), str):
                    row[c] = json.loads(row[c])
            pairs.append(row)
    if not pairs:
        raise ValueError(f"{path}: no pairs in this file")
    for i, p in enumerate(pairs):
        p["task"] = p.get("task") or "caption"  # files from before the column
        missing = [c for c in ("pair_id", "image", "prompt", "chosen", "rejected") if not p.get(c)]
        if missing:
            raise ValueError(f"{path}: pair {i} ({p.get('pair_id', '?')}) lacks {missing}")
    return pairs
