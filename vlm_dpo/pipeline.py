"""The stages as library functions over one run folder, and the pipeline that chains them.

Run folder layout (`cfg.out`):
    config.yaml                       the resolved config of the last command
    detections/<split>.jsonl          detect: per image {image_id, file, width, height, detections[...]}
    captions/<split>.jsonl            describe: per image {prompt, grounding, greedy, samples[...], ...}
    summary.json                      pipeline: what was built and measured
Assets of the embedded world (world, detector, tiny VLM) live in the cache (see embedded.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import to_yaml
from .detect import detect_to_jsonl
from .ground import PromptConfig, grounding_text, prompt_text
from .records import read_jsonl, write_text_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DataError(ValueError):
    pass


def setup_run(cfg) -> Path:
    from .offline import configure_offline

    configure_offline(cfg.cache_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", to_yaml(cfg))
    return out


def image_items(cfg, split: str) -> list[dict]:
    """The images a stage works on: the user's folder (all of it) or one split of the embedded world."""
    if cfg.data.images:
        root = Path(cfg.data.images).resolve()
        if not root.is_dir():
            raise DataError(f"{root}: image folder not found")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        # rglob stays under root, but a symlink could point outside it: refuse those (no escaping the data root).
        files = [p for p in files if p.resolve().is_relative_to(root)]
        if not files:
            raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return [{"image_id": str(p.relative_to(root).with_suffix("")), "file": str(p.relative_to(root)),
                 "path": str(p)} for p in files]
    from .embedded import ensure_world
    from .world.export import load_annotations

    return load_annotations(ensure_world(cfg), split)


def detector_weights(cfg) -> str:
    if cfg.detector.model != "embedded":
        return cfg.detector.model
    from .embedded import ensure_detector, ensure_world

    return ensure_detector(cfg, ensure_world(cfg))["weights"]


def run_detect(cfg, split: str, progress: bool = True) -> Path:
    """Detections JSONL for one split (or the user's folder)."""
    out = setup_run(cfg)
    items = image_items(cfg, split)
    d = cfg.detector
    return detect_to_jsonl(items, detector_weights(cfg), out / "detections" / f"{split}.jsonl", progress=progress,
                           conf=d.conf, iou=d.iou, device=d.device, batch_size=d.batch_size, imgsz=d.imgsz,
                           skip_bad_images=cfg.data.skip_bad_images)


def vlm_path(cfg, progress: bool = True) -> str:
    from .embedded import ensure_vlm

    return ensure_vlm(cfg, progress=progress)["model"]


def describe_items(cfg, split: str, detections_path: Path, grounded: bool | None = None) -> tuple[list[dict], dict]:
    """Describe inputs from detection records: grounding text + prompt per image. Returns (items, counts)."""
    root = Path(cfg.data.images).resolve() if cfg.data.images else None
    paths = {it["image_id"]: it["path"] for it in image_items(cfg, split)}
    grounded = cfg.prompt.grounded if grounded is None else grounded
    items, counts = [], {"images": 0, "skipped_bad_image": 0, "no_detections": 0}
    for rec in read_jsonl(detections_path):
        counts["images"] += 1
        if rec.get("error"):
            counts["skipped_bad_image"] += 1
            continue
        if not [d for d in rec["detections"] if d["score"] >= cfg.ground.min_score]:
            counts["no_detections"] += 1  # documented: described with the "nothing detected" context
        g = grounding_text(rec["detections"], rec["width"], rec["height"], cfg.ground)
        path = paths.get(rec["image_id"]) or str((root or Path(".")) / rec["file"])
        items.append({"image_id": rec["image_id"], "file": rec["file"], "path": path, "grounding": g,
                      "prompt": prompt_text(g, PromptConfig(cfg.prompt.instruction, grounded=grounded))})
    if cfg.describe.limit:
        items = items[: cfg.describe.limit]
    return items, counts


def run_describe(cfg, split: str, progress: bool = True, out_name: str | None = None,
                 grounded: bool | None = None, model=None, processor=None) -> Path:
    """Captions JSONL for one split, from its detections (run_detect first, or it runs here)."""
    from .describe import describe_to_jsonl
    from .models import load_model_and_processor

    out = setup_run(cfg)
    det_path = out / "detections" / f"{split}.jsonl"
    if not det_path.exists():
        run_detect(cfg, split, progress=progress)
    items, counts = describe_items(cfg, split, det_path, grounded)
    if not items:
        raise DataError(f"{det_path}: no usable images to describe ({counts})")
    if model is None:
        model, processor = load_model_and_processor(vlm_path(cfg, progress), dtype=cfg.vlm.dtype, device=cfg.vlm.device)
    model.eval()
    path = describe_to_jsonl(model, processor, items, cfg.describe,
                             out / "captions" / (out_name or f"{split}.jsonl"), progress=progress)
    write_text_atomic(path.with_suffix(".counts.json"), json.dumps(counts, indent=1))
    return path
