"""Candidate items for annotation, and the one place that decides whether an image path may be served.

An item is two candidate captions of one image for one prompt:
    {"item_id", "image_id", "image", "prompt", "grounding", "c1", "c2", "source", "boxes", "task"}
c1/c2 are the two captions in a canonical (sorted) order, so the same two captions make the same item whatever
file they came from and whichever was "chosen" there; the page shows them as A/B in a per-annotator random
order. `item_id` hashes (image, prompt, c1, c2). `task` is the pair's task (pairs/dataset.py): "caption", or
"vqa" when the prompt is a robot's question and c1/c2 are two short answers; sources without it (older pair
files, captions records) give captions.

Sources: a pair file (each pair's chosen/rejected, not revealed as such) and a captions JSONL (greedy + samples:
`per_image` distinct pairs per record, drawn with the seed). Items whose image path is absolute, climbs out of
the image root, escapes it through a symlink, or is missing are skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import random
from itertools import combinations
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..ground import GroundingConfig
from ..pairs.dataset import TASKS, Rejections
from ..records import read_jsonl

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".bmp": "image/bmp", ".gif": "image/gif"}


def item_id_of(image: str, prompt: str, c1: str, c2: str) -> str:
    blob = json.dumps(["annotate-item", str(image), prompt, *sorted((c1.strip(), c2.strip()))])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def image_path_problem(image: str) -> str | None:
    """Why a stored image reference is refused before touching the disk, or None."""
    if not isinstance(image, str) or not image.strip():
        return "missing_image"
    if "\x00" in image:
        return "bad_image_path"
    if PurePosixPath(image).is_absolute() or PureWindowsPath(image).is_absolute() or PureWindowsPath(image).drive:
        return "absolute_image_path"
    if ".." in PurePosixPath(image.replace("\\", "/")).parts:
        return "image_outside_root"
    return None


def safe_image_path(image: str, root: str | Path) -> Path | None:
    """The file under `root` that `image` names, or None: absolute paths, `..`, symlinks resolving outside the
    root, folders, missing files and non-image suffixes are all refused."""
    if image_path_problem(image):
        return None
    root = Path(root).resolve()
    try:
        path = (root / image).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    if not path.is_relative_to(root) or path.suffix.lower() not in IMAGE_TYPES or not path.is_file():
        return None
    return path


def split_question(prompt: str, grounding: str | None) -> tuple[str, str | None]:
    """(question, grounding context) of a VQA prompt, so the page can show the robot's question on its own: the
    prompt without the item's grounding, else the part before a tail starting with the default "Detected:" prefix
    (imported rows may lack the grounding column; the tail is then the context), else the whole prompt."""
    if grounding and grounding in prompt:
        return prompt.replace(grounding, " ").strip() or prompt, grounding
    head, prefix, tail = prompt.partition(GroundingConfig.prefix)
    if prefix and head.strip():
        return head.strip(), (prefix + tail).strip()
    return prompt, grounding


def make_item(*, image_id: str, image: str, prompt: str, grounding: str | None, c1: str, c2: str, source: str,
              boxes: list | None = None, task: str = "caption") -> dict:
    c1, c2 = sorted((c1.strip(), c2.strip()))
    return {"item_id": item_id_of(image, prompt, c1, c2), "image_id": str(image_id), "image": str(image),
            "prompt": prompt, "grounding": grounding, "c1": c1, "c2": c2, "source": source, "boxes": boxes,
            "task": task}


def _check(item: dict, root: Path | None, where: str, rejections: Rejections) -> bool:
    if not item["c1"] or not item["c2"]:
        rejections.add("empty_caption", where)
        return False
    if item["c1"] == item["c2"]:
        rejections.add("identical_captions", where)
        return False
    if not (item["prompt"] or "").strip():
        rejections.add("empty_prompt", where)
        return False
    if item["task"] not in TASKS:  # make_pair would refuse the judgement's pairs at export: refuse the item now
        rejections.add("unknown_task", where, item["task"])
        return False
    problem = image_path_problem(item["image"])
    if problem:
        rejections.add(problem, where, item["image"])
        return False
    if root is not None and safe_image_path(item["image"], root) is None:
        inside = (Path(root).resolve() / item["image"]).resolve().is_relative_to(Path(root).resolve())
        rejections.add("missing_image" if inside else "image_outside_root", where, item["image"])
        return False
    return True


def items_from_pairs(pairs: list[dict], root: Path | None, rejections: Rejections, where: str = "pairs") -> list[dict]:
    out = []
    for i, p in enumerate(pairs):
        if not all(isinstance(p.get(k), str) for k in ("image", "prompt", "chosen", "rejected")):
            rejections.add("malformed_pair", f"{where}[{i}]")
            continue
        boxes = p.get("boxes")
        item = make_item(image_id=p.get("image_id") or Path(p["image"]).stem, image=p["image"], prompt=p["prompt"],
                         grounding=p.get("grounding"), c1=p["chosen"], c2=p["rejected"], source="pairs",
                         boxes=[{"label": "", "score": None, "box": b} for b in boxes] if boxes else None,
                         task=p.get("task") or "caption")
        if _check(item, root, f"{where}[{i}]", rejections):
            out.append(item)
    return out


def items_from_captions(records: list[dict], root: Path | None, rejections: Rejections, *, per_image: int = 1,
                        seed: int = 0, where: str = "captions") -> list[dict]:
    out = []
    for i, rec in enumerate(records):
        w = f"{where}:{rec.get('image_id', i)}"
        image, prompt = rec.get("file"), rec.get("prompt")
        if not isinstance(image, str) or not isinstance(prompt, str):
            rejections.add("malformed_captions", w)
            continue
        texts = [rec.get("greedy"), *(rec.get("samples") or [])]
        distinct = list(dict.fromkeys(t.strip() for t in texts if isinstance(t, str) and t.strip()))
        if len(distinct) < 2:
            rejections.add("fewer_than_two_captions", w)
            continue
        combos = list(combinations(distinct, 2))
        random.Random(f"annotate-captions/{seed}/{rec.get('image_id', image)}").shuffle(combos)
        for c1, c2 in combos[:max(1, per_image)]:
            item = make_item(image_id=rec.get("image_id") or Path(image).stem, image=image, prompt=prompt,
                             grounding=rec.get("grounding"), c1=c1, c2=c2, source="captions",
                             task=rec.get("task") or "caption")
            if _check(item, root, w, rejections):
                out.append(item)
    return out


def load_detections(path: str | Path) -> dict[str, dict]:
    """image_id -> {"width", "height", "detections": [{label, score, box}]} (records with an error are left out)."""
    out = {}
    for r in read_jsonl(path):
        if r.get("error") or "image_id" not in r:
            continue
        dets = []
        for d in r.get("detections") or []:
            box = d.get("box") if isinstance(d, dict) else None
            if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
                score = d.get("score")
                dets.append({"label": str(d.get("label", "")), "box": [float(v) for v in box],
                             "score": float(score) if isinstance(score, (int, float)) else None})
        out[str(r["image_id"])] = {"width": r.get("width") or None, "height": r.get("height") or None,
                                   "detections": dets}
    return out


def load_items(*, pairs: str = "", captions: str = "", image_root: str | Path | None = None, per_image: int = 1,
               seed: int = 0, limit: int = 0) -> tuple[list[dict], Rejections]:
    """Candidate items of the configured sources, deduplicated by item id, at most `limit` (0 = all)."""
    rejections = Rejections()
    root = Path(image_root) if image_root else None
    items: list[dict] = []
    if pairs:
        from ..pairs.dataset import load_pairs

        items += items_from_pairs(load_pairs(pairs), root, rejections, where=str(pairs))
    if captions:
        items += items_from_captions(list(read_jsonl(captions)), root, rejections, per_image=per_image, seed=seed,
                                     where=str(captions))
    seen, unique = set(), []
    for it in items:
        if it["item_id"] in seen:
            rejections.add("duplicate", it["item_id"])
            continue
        seen.add(it["item_id"])
        unique.append(it)
    if limit and len(unique) > limit:
        unique = unique[:limit]
    return unique, rejections
