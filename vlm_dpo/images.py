"""Where a run's images come from and how they are opened: the one module that reads image files.

    DataConfig        data.images (a folder of the user's images) or the embedded world
    open_image        a file -> RGB PIL image, or ImageError naming the file
    resolve_image     a pair's relative image path -> its path under the data root (never outside it)
    image_items       the images a stage works on: the user's folder, or one split of the embedded world
    data_root         the root relative image paths are read from
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class DataConfig:
    # A folder of the user's images (png/jpg/jpeg/webp, searched recursively); empty = the embedded world.
    images: str = ""
    split: str = "train"  # world split the single-stage commands (detect, describe) work on
    skip_bad_images: bool = False  # False: a missing/corrupt image stops with its name; True: skip and count it


class DataError(ValueError):
    """The input data as a whole is unusable (no image folder, no images, no matching annotations)."""


class ImageError(ValueError):
    """An input image is missing or unreadable; the message names the file."""


def open_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, or raise ImageError naming the file and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None
    except ImportError:
        # Ultralytics patches Image.open to retry unknown formats as HEIF, importing an optional plugin.
        raise ImageError(f"{path}: not a readable image (unrecognised format)") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB of any image. 16- and 32-bit grey images (mode I;16 / I from 16-bit PNG and TIFF) are scaled to 8 bit:
    PIL's own convert clips them, turning nearly every pixel white."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F" or a.max(initial=0) > 65535 or a.min(initial=0) < 0:
            lo, hi = float(a.min(initial=0)), float(a.max(initial=0))  # other ranges: stretch to 0-255
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        else:
            a = a / 257.0  # 0-65535 -> 0-255
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def resolve_image(image: str, root: Path) -> Path | None:
    """The image's path under the data root, or None if it would escape it (no path traversal)."""
    root = Path(root).resolve()
    path = (root / image).resolve()
    return path if path.is_relative_to(root) else None


def folder_items(folder: str | Path) -> list[dict]:
    """Every image under `folder` (recursively, sorted) as {image_id, file, path}; image_id is the path
    relative to the folder without its suffix."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    # rglob stays under root, but a symlink could point outside it: refuse those (no escaping the data root).
    files = [p for p in found if p.resolve().is_relative_to(root)]
    outside = [p for p in found if p not in files]
    if outside:
        import warnings

        warnings.warn(f"{root}: {len(outside)} image(s) refused: symlinks pointing outside the data root, e.g. "
                      f"{outside[0].relative_to(root)} -> {outside[0].resolve()}", stacklevel=2)
    if not files:
        why = (f" ({len(outside)} symlinked image(s) refused because they point outside the folder, e.g. "
               f"{outside[0].relative_to(root)} -> {outside[0].resolve()})" if outside else "")
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder{why}")
    return [{"image_id": str(p.relative_to(root).with_suffix("")), "file": str(p.relative_to(root)),
             "path": str(p)} for p in files]


def image_items(cfg, split: str) -> list[dict]:
    """The images a stage works on: the user's folder (all of it) or one split of the embedded world."""
    if cfg.data.images:
        return folder_items(cfg.data.images)
    from .embedded import ensure_world
    from .world.export import load_annotations

    return load_annotations(ensure_world(cfg), split)


def data_root(cfg) -> Path:
    """Where relative image paths live: the user's folder or the embedded world."""
    if cfg.data.images:
        return Path(cfg.data.images).resolve()
    from .embedded import ensure_world

    return ensure_world(cfg, progress=False)
