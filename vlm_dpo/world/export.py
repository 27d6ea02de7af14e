"""Write the embedded world to disk: images, annotations JSONL, an Ultralytics dataset, a `datasets.Dataset`.

Layout under the world root:
    world.json                   the generating config (a rerun with another config refuses to mix)
    annotations.jsonl            one scene per line: image_id, split, file, width, height, objects[...]
    images/<split>/<id>.png
    labels/<split>/<id>.txt      YOLO labels (class cx cy w h, normalised); Ultralytics maps images->labels
    data.yaml                    the Ultralytics dataset file
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..records import read_jsonl, write_jsonl_atomic, write_text_atomic
from .scenes import KINDS, SPLITS, render_scene, sample_scene


@dataclass
class WorldSpec:
    seed: int = 0
    n_train: int = 1000
    n_val: int = 100
    n_test: int = 200
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 6
    max_overlap: float = 0.25

    def counts(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


def build_world(root: str | Path, spec: WorldSpec, progress: bool = True) -> Path:
    """Generate (or reuse) the world at `root`; returns the annotations path. Idempotent and resumable:
    images already on disk are kept, annotations are written last and atomically."""
    root = Path(root)
    meta_path = root / "world.json"
    ann_path = root / "annotations.jsonl"
    meta = {"spec": asdict(spec), "kinds": list(KINDS)}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != meta:
            raise ValueError(
                f"{root}: holds a world built with another spec ({old['spec']}); use another folder or delete it"
            )
        if ann_path.exists():
            return ann_path
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(meta_path, json.dumps(meta, indent=1))
    records = []
    total = sum(spec.counts().values())
    bar = tqdm(total=total, desc="world", disable=not progress)
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(spec.counts()[split]):
            scene = sample_scene(
                spec.seed, split, i, image_size=spec.image_size, min_objects=spec.min_objects,
                max_objects=spec.max_objects, max_overlap=spec.max_overlap,
            )
            rel = f"images/{split}/{scene.image_id}.png"
            img_path = root / rel
            if not img_path.exists():
                tmp = img_path.with_suffix(".tmp.png")
                render_scene(scene).save(tmp)
                tmp.replace(img_path)
            rec = scene.to_dict() | {"file": rel}
            write_text_atomic(root / "labels" / split / f"{scene.image_id}.txt", yolo_label_text(rec))
            records.append(rec)
            bar.update()
    bar.close()
    names = "\n".join(f"  {i}: {k}" for i, k in enumerate(KINDS))
    write_text_atomic(
        root / "data.yaml",
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n{names}\n",
    )
    write_jsonl_atomic(ann_path, records)
    return ann_path


def yolo_label_text(rec: dict) -> str:
    w, h = rec["width"], rec["height"]
    lines = []
    for o in rec["objects"]:
        x1, y1, x2, y2 = o["box"]
        cls = KINDS.index(o["label"])
        lines.append(f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def load_annotations(root: str | Path, split: str | None = None) -> list[dict]:
    """Scenes of the world at `root` (optionally one split), with absolute image paths in `path`."""
    root = Path(root)
    recs = []
    for r in read_jsonl(root / "annotations.jsonl"):
        if split is None or r["split"] == split:
            recs.append(r | {"path": str(root / r["file"])})
    return recs


def world_dataset(root: str | Path, split: str | None = None):
    """The world as a Hugging Face `datasets.Dataset` with an `image` column (decoded lazily) and objects."""
    import datasets

    recs = load_annotations(root, split)
    features = datasets.Features({
        "image_id": datasets.Value("string"),
        "split": datasets.Value("string"),
        "image": datasets.Image(),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "objects": datasets.List({
            "label": datasets.Value("string"),
            "color": datasets.Value("string"),
            "box": datasets.List(datasets.Value("float32"), length=4),
        }),
    })
    rows = {
        "image_id": [r["image_id"] for r in recs],
        "split": [r["split"] for r in recs],
        "image": [r["path"] for r in recs],
        "width": [r["width"] for r in recs],
        "height": [r["height"] for r in recs],
        "objects": [r["objects"] for r in recs],
    }
    return datasets.Dataset.from_dict(rows, features=features)
