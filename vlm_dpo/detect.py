"""Detect: images -> per-image detections with Ultralytics YOLO.

`detect()` is a thin wrapper: any Ultralytics checkpoint path or name (`yolo11n.pt` for real users, the
locally trained embedded detector by default), batched, with conf/IoU thresholds and device. Each result is
    {"image_id", "file", "width", "height", "detections": [{"label", "score", "box": [x1, y1, x2, y2]}]}
with boxes in pixels of the original image.

`train_embedded_detector()` trains YOLO11n from its yaml (random init: nothing is downloaded) on the world and
caches the checkpoint under a key of everything that shaped it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .checks import at_least, fraction
from .images import ImageError, image_items, open_image
from .keys import WORLD_CODE, code_fingerprint, images_fingerprint, key, model_fingerprint
from .offline import configure_offline, disable_ultralytics_sync
from .records import ResumableJsonl, write_text_atomic
from .run import RunFolder, apply_threads
from .shards import batches, local_device, main_first, write_sharded

__all__ = ["DetectorConfig", "ImageError", "detect", "detect_to_jsonl", "load_yolo", "open_image", "run",
           "train_embedded_detector"]


@dataclass
class DetectorConfig:
    # "embedded" trains (once, cached) YOLO11n from its yaml on the world; otherwise any Ultralytics checkpoint
    # path or name, e.g. "yolo11n.pt" (already on disk: nothing is downloaded).
    model: str = "embedded"
    arch: str = "yolo11n.yaml"
    epochs: int = 30
    imgsz: int = 128
    batch: int = 32
    workers: int = 0
    conf: float = 0.25
    iou: float = 0.7
    device: str = "cpu"
    batch_size: int = 32  # inference batch

    def __post_init__(self) -> None:
        at_least(self, 1, "epochs", "imgsz", "batch", "batch_size")
        at_least(self, 0, "workers")
        fraction(self, "conf", "iou")


def load_yolo(model: str | Path):
    """An Ultralytics YOLO model from a checkpoint path, a name already on disk, or a model yaml."""
    configure_offline()
    from ultralytics import YOLO

    disable_ultralytics_sync()
    name = str(model)
    if name.endswith(".pt") and not Path(name).exists():
        # Ultralytics would try to download a missing .pt; fail clearly instead (we are offline).
        raise FileNotFoundError(
            f"YOLO checkpoint {name!r} not found on disk; pass a local path (no downloads are attempted)"
        )
    return YOLO(name)


def detect(images: list[dict], model, *, conf: float = 0.25, iou: float = 0.7, device: str = "cpu",
           batch_size: int = 32, imgsz: int | None = None, skip_bad_images: bool = False) -> list[dict]:
    """Run the detector on `images` (dicts with `image_id` and `path`); returns one record per image.

    `model` is a loaded YOLO or anything `load_yolo` accepts. An unreadable image raises ImageError naming the
    file, or with `skip_bad_images` yields a record with an `error` field and no detections (later stages skip
    and count such records).
    """
    if not hasattr(model, "predict"):
        model = load_yolo(model)
    names = model.names
    out = []
    for start in range(0, len(images), batch_size):
        chunk, pils = [], []
        for r in images[start:start + batch_size]:
            try:
                pils.append(open_image(r["path"]))
                chunk.append(r)
            except ImageError as e:
                if not skip_bad_images:
                    raise
                out.append({"image_id": r["image_id"], "file": r.get("file", str(r["path"])), "width": 0,
                            "height": 0, "detections": [], "error": str(e)})
        if not chunk:
            continue
        kwargs = dict(conf=conf, iou=iou, device=device, verbose=False)
        if imgsz:
            kwargs["imgsz"] = imgsz
        results = model.predict(pils, **kwargs)
        for rec, pil, res in zip(chunk, pils, results):
            boxes = res.boxes
            dets = []
            for xyxy, score, cls in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist()):
                dets.append({"label": names[int(cls)], "score": round(float(score), 4),
                             "box": [round(float(v), 1) for v in xyxy]})
            out.append({"image_id": rec["image_id"], "file": rec.get("file", str(rec["path"])),
                        "width": pil.width, "height": pil.height, "detections": dets})
    return out


def detection_settings(images: list[dict], model, *, conf: float = 0.25, iou: float = 0.7, imgsz: int | None = None,
                       skip_bad_images: bool = False, **_) -> dict:
    """What shapes a detections file: the images (by content), the detector (by content) and its thresholds."""
    return {"images": images_fingerprint(images), "detector": model_fingerprint(model) if isinstance(model, (str, Path))
            else type(model).__name__, "conf": conf, "iou": iou, "imgsz": imgsz, "skip_bad_images": skip_bad_images}


def detect_to_jsonl(images: list[dict], model, out_path: str | Path, *, progress: bool = True,
                    shard: tuple[int, int] = (0, 1), **kwargs) -> Path:
    """`detect` over many images into a resumable JSONL (finished images are skipped on rerun). A file made from
    other images or by another detector or thresholds is redone (see records.ResumableJsonl).

    shard=(k, n) detects only the batches (fixed chunks of `images`) whose index is k modulo n; the shard files
    merged in batch order are what one process writes (vlm_dpo.shards)."""
    out_path = Path(out_path)
    with ResumableJsonl(out_path, key="image_id", settings=detection_settings(images, model, **kwargs)) as w:
        if w.finished:
            return out_path
        step = kwargs.get("batch_size", 32)
        mine = [r for _, chunk in batches(images, step, shard) for r in chunk]  # all of them for (0, 1)
        todo = [r for r in mine if str(r["image_id"]) not in w.done]
        if todo and not hasattr(model, "predict"):
            model = load_yolo(model)
        for start in tqdm(range(0, len(todo), step), desc="detect", disable=not progress):
            w.write_many(detect(todo[start:start + step], model, **kwargs))
    return out_path


def _detect_shard(images: list[dict], model, kwargs: dict, out_path: Path, shard: tuple[int, int],
                  progress: bool) -> str:
    """One shard in this process (a launched process): detect_to_jsonl on its batches, on its own device."""
    kwargs = kwargs | {"device": local_device(kwargs.get("device", "cpu"))}
    return str(detect_to_jsonl(images, model, out_path, progress=progress, shard=shard, **kwargs))


def detector_weights(cfg) -> str:
    """The checkpoint to detect with: the user's, or the embedded one (trained on first use)."""
    if cfg.detector.model != "embedded":
        return cfg.detector.model
    from .embedded import ensure_detector, ensure_world

    return ensure_detector(cfg, ensure_world(cfg))["weights"]


def run(cfg, run: RunFolder, split: str | None = None, *, progress: bool = True) -> Path:
    """The detect stage: detections JSONL of one split (default data.split), or of the user's folder."""
    apply_threads(cfg)
    split = split or cfg.data.split
    with main_first():  # the main process builds (or finds) the embedded world and detector, the others reuse them
        items = image_items(cfg, split)
        weights = detector_weights(cfg)
    d = cfg.detector
    kwargs = dict(conf=d.conf, iou=d.iou, device=d.device, batch_size=d.batch_size, imgsz=d.imgsz,
                  skip_bad_images=cfg.data.skip_bad_images)
    # Without a launcher: one process, as always. Under one: a shard per process, merged by the main process.
    return write_sharded(run.detections(split), _detect_shard, (items, weights, kwargs),
                         settings=detection_settings(items, weights, **kwargs),
                         ids=[str(r["image_id"]) for r in items], batch_size=d.batch_size, progress=progress)


def _detector_key(world_spec, det_cfg) -> str:
    """The embedded detector's cache key: the world, the training settings, and the code of both."""
    keep = {k: v for k, v in asdict(det_cfg).items() if k in ("arch", "epochs", "imgsz", "batch")}
    return key(world_spec, keep, code_fingerprint(*WORLD_CODE, __name__))


def embedded_detector_cached(world_spec, det_cfg, cache_dir: str | Path) -> bool:
    cache = Path(cache_dir) / "detector" / _detector_key(world_spec, det_cfg)
    return (cache / "metrics.json").exists() and (cache / "best.pt").exists()


def train_embedded_detector(world_root: str | Path, world_spec, det_cfg, cache_dir: str | Path,
                            *, threads: int = 0) -> dict:
    """Train YOLO (from its yaml) on the world, cache `best.pt` and its metrics; reuse the cache when present.

    Returns {"weights": path, "map50": held-out test mAP50, "map50_95": ..., "minutes": training time}.
    """
    from .parallel import torch_threads

    cache = Path(cache_dir) / "detector" / _detector_key(world_spec, det_cfg)
    if embedded_detector_cached(world_spec, det_cfg, cache_dir):
        return json.loads((cache / "metrics.json").read_text())
    configure_offline(cache_dir)
    with torch_threads(threads):
        return _train(world_root, det_cfg, cache)


def _train(world_root, det_cfg, cache: Path) -> dict:
    import time

    model = load_yolo(det_cfg.arch)
    run_dir = cache / "run"
    t0 = time.time()
    model.train(
        data=str(Path(world_root) / "data.yaml"), epochs=det_cfg.epochs, imgsz=det_cfg.imgsz,
        batch=det_cfg.batch, device=det_cfg.device, workers=det_cfg.workers, pretrained=False, amp=False,
        plots=False, project=str(cache), name="run", exist_ok=True, verbose=False, seed=0, deterministic=True,
        close_mosaic=max(1, det_cfg.epochs // 5),
    )
    minutes = (time.time() - t0) / 60
    best = run_dir / "weights" / "best.pt"
    trained = load_yolo(best)
    res = trained.val(data=str(Path(world_root) / "data.yaml"), split="test", imgsz=det_cfg.imgsz,
                      batch=det_cfg.batch, device=det_cfg.device, plots=False, verbose=False,
                      project=str(cache), name="val", exist_ok=True)
    shutil.copy(best, cache / "best.pt.tmp")
    (cache / "best.pt.tmp").replace(cache / "best.pt")
    metrics = {"weights": str(cache / "best.pt"), "map50": float(res.box.map50), "map50_95": float(res.box.map),
               "minutes": round(minutes, 2), "epochs": det_cfg.epochs, "imgsz": det_cfg.imgsz}
    write_text_atomic(cache / "metrics.json", json.dumps(metrics, indent=1))
    return metrics
