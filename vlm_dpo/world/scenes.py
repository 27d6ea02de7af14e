"""Procedural tabletop scenes with exact ground truth.

A scene is a table surface seen from above-ish with 1..N objects of eight kinds in several colours. Every
image is a pure function of (seed, split, index), so the same config always gives the same pixels and labels,
and splits never share a scene (each split draws from its own seed stream).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from ..ground import grid_position  # noqa: F401  (re-exported as vlm_dpo.world.grid_position)

KINDS = ("cup", "bottle", "ball", "block", "book", "apple", "bowl", "phone")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
# Some kinds come in a restricted palette, like the real thing (no blue apples); it also keeps them distinct.
KIND_COLORS = {
    "apple": ("red", "green", "yellow"),
}
TABLES = [(150, 110, 75), (120, 120, 125), (200, 190, 170), (90, 70, 55), (175, 160, 130), (60, 90, 80)]
SPLITS = ("train", "val", "test")
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2, "sft": 3}  # "sft": in-memory scenes for VLM SFT


@dataclass
class WorldObject:
    label: str
    color: str
    box: list[float]  # xyxy in pixels, the visible extent of the drawn shape

    def to_dict(self) -> dict:
        return {"label": self.label, "color": self.color, "box": [round(v, 1) for v in self.box]}


@dataclass
class Scene:
    image_id: str
    split: str
    width: int
    height: int
    table: tuple[int, int, int]
    objects: list[WorldObject] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "image_id": self.image_id,
            "split": self.split,
            "width": self.width,
            "height": self.height,
            "table": list(self.table),
            "objects": [o.to_dict() for o in self.objects],
        }


def scene_rng(seed: int, split: str, index: int) -> random.Random:
    # One independent stream per (seed, split, index): adding scenes never changes existing ones.
    return random.Random(f"vlm_dpo-world/{seed}/{_SPLIT_STREAM[split]}/{index}")


def _iou_overlap(a: list[float], b: list[float]) -> float:
    """Share of the smaller box covered by the intersection (a simple occlusion measure)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / small if small > 0 else 0.0


_ASPECT = {  # width / height of each kind's bounding box
    "cup": 1.15, "bottle": 0.45, "ball": 1.0, "block": 1.0,
    "book": 1.45, "apple": 0.95, "bowl": 1.7, "phone": 0.55,
}


def sample_scene(
    seed: int,
    split: str,
    index: int,
    *,
    image_size: int = 128,
    min_objects: int = 1,
    max_objects: int = 6,
    max_overlap: float = 0.25,
    repeat_prob: float = 0.35,
    kinds: tuple[str, ...] = KINDS,
) -> Scene:
    """Draw the layout (not the pixels) of one scene.

    Objects are placed by rejection sampling so that no object is covered more than `max_overlap` of its box
    (some occlusion, never hidden). With probability `repeat_prob` a new object repeats an earlier kind, so
    counts above one are common.
    """
    rng = scene_rng(seed, split, index)
    s = image_size
    n = rng.randint(min_objects, max_objects)
    table = rng.choice(TABLES)
    table = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in table)
    objects: list[WorldObject] = []
    for _ in range(n):
        if objects and rng.random() < repeat_prob:
            label = rng.choice(objects).label
        else:
            label = rng.choice(kinds)
        palette = KIND_COLORS.get(label, tuple(COLORS))
        color = rng.choice(palette)
        for _attempt in range(30):
            h = rng.uniform(0.17, 0.30) * s
            w = h * _ASPECT[label]
            if w > 0.45 * s:
                w, h = 0.45 * s, 0.45 * s / _ASPECT[label]
            x1 = rng.uniform(0.02 * s, 0.98 * s - w)
            y1 = rng.uniform(0.02 * s, 0.98 * s - h)
            box = [x1, y1, x1 + w, y1 + h]
            if all(_iou_overlap(box, o.box) <= max_overlap for o in objects):
                objects.append(WorldObject(label, color, box))
                break
    return Scene(f"{split}-{seed}-{index:06d}", split, s, s, table, objects)


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(max(0, min(255, int(c * f))) for c in rgb)


def _draw_object(d: ImageDraw.ImageDraw, o: WorldObject) -> None:
    x1, y1, x2, y2 = o.box
    w, h = x2 - x1, y2 - y1
    c = COLORS[o.color]
    dark = _shade(c, 0.55)
    outline = (20, 20, 20)
    if o.label == "cup":  # body plus a handle on the right
        bw = w * 0.78
        d.rounded_rectangle([x1, y1 + h * 0.08, x1 + bw, y2], radius=w * 0.08, fill=c, outline=outline)
        d.ellipse([x1, y1, x1 + bw, y1 + h * 0.2], fill=dark, outline=outline)
        d.arc([x1 + bw - w * 0.12, y1 + h * 0.3, x2, y1 + h * 0.75], -90, 90, fill=outline, width=max(2, int(w * 0.08)))
    elif o.label == "bottle":  # body, shoulder, neck, white cap
        d.rounded_rectangle([x1, y1 + h * 0.35, x2, y2], radius=w * 0.2, fill=c, outline=outline)
        d.polygon([(x1, y1 + h * 0.38), (x1 + w * 0.3, y1 + h * 0.18), (x2 - w * 0.3, y1 + h * 0.18), (x2, y1 + h * 0.38)], fill=c, outline=outline)
        d.rectangle([x1 + w * 0.3, y1 + h * 0.06, x2 - w * 0.3, y1 + h * 0.2], fill=c, outline=outline)
        d.rectangle([x1 + w * 0.26, y1, x2 - w * 0.26, y1 + h * 0.07], fill=(240, 240, 240), outline=outline)
        d.rectangle([x1, y1 + h * 0.55, x2, y1 + h * 0.72], fill=(235, 235, 235))
    elif o.label == "ball":  # circle with a white equator stripe
        d.ellipse([x1, y1, x2, y2], fill=c, outline=outline)
        d.arc([x1 + w * 0.05, y1 + h * 0.3, x2 - w * 0.05, y2 - h * 0.3], 0, 180, fill=(245, 245, 245), width=max(2, int(h * 0.07)))
        d.arc([x1 + w * 0.05, y1 + h * 0.3, x2 - w * 0.05, y2 - h * 0.3], 180, 360, fill=(245, 245, 245), width=max(2, int(h * 0.07)))
    elif o.label == "block":  # a cube: front face, lighter top, darker side
        f = 0.25
        d.rectangle([x1, y1 + h * f, x2 - w * f, y2], fill=c, outline=outline)
        d.polygon([(x1, y1 + h * f), (x1 + w * f, y1), (x2, y1), (x2 - w * f, y1 + h * f)], fill=_shade(c, 1.3), outline=outline)
        d.polygon([(x2 - w * f, y1 + h * f), (x2, y1), (x2, y2 - h * f), (x2 - w * f, y2)], fill=dark, outline=outline)
    elif o.label == "book":  # cover with a dark spine and white page edges
        d.rectangle([x1, y1, x2, y2], fill=c, outline=outline)
        d.rectangle([x1, y1, x1 + w * 0.14, y2], fill=dark, outline=outline)
        d.rectangle([x1 + w * 0.2, y2 - h * 0.12, x2 - w * 0.04, y2 - h * 0.03], fill=(245, 245, 235))
    elif o.label == "apple":  # round body, brown stem, green leaf
        d.ellipse([x1, y1 + h * 0.15, x2, y2], fill=c, outline=outline)
        d.line([(x1 + w * 0.5, y1 + h * 0.22), (x1 + w * 0.55, y1)], fill=(100, 60, 20), width=max(2, int(w * 0.07)))
        d.ellipse([x1 + w * 0.56, y1 + h * 0.02, x1 + w * 0.9, y1 + h * 0.16], fill=(30, 140, 40), outline=outline)
    elif o.label == "bowl":  # lower half-ellipse with a dark rim opening
        d.chord([x1, y1 - h * 0.6, x2, y2], 0, 180, fill=c, outline=outline)
        d.ellipse([x1, y1, x2, y1 + h * 0.45], fill=dark, outline=outline)
    elif o.label == "phone":  # rounded slab with a dark screen
        d.rounded_rectangle([x1, y1, x2, y2], radius=w * 0.18, fill=c, outline=outline)
        d.rectangle([x1 + w * 0.12, y1 + h * 0.1, x2 - w * 0.12, y2 - h * 0.14], fill=(25, 25, 35))
        d.ellipse([x1 + w * 0.42, y2 - h * 0.11, x2 - w * 0.42, y2 - h * 0.04], fill=(200, 200, 200))
    else:  # pragma: no cover - kinds are validated upstream
        raise ValueError(f"unknown kind {o.label!r}")


def render_scene(scene: Scene) -> Image.Image:
    """Pixels of a scene. Objects are drawn in list order, so later ones occlude earlier ones."""
    img = Image.new("RGB", (scene.width, scene.height), scene.table)
    d = ImageDraw.Draw(img)
    # Wood-grain-like stripes so the background is not flat (cheap texture the detector must ignore).
    rng = random.Random(scene.image_id)
    for _ in range(6):
        y = rng.uniform(0, scene.height)
        d.line([(0, y), (scene.width, y + rng.uniform(-8, 8))], fill=_shade(scene.table, rng.uniform(0.85, 1.12)), width=2)
    for o in scene.objects:
        _draw_object(d, o)
    return img
