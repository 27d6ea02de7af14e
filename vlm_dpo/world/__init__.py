"""The embedded tabletop world: procedural scenes with ground truth, the default that runs with no downloads."""

from .captions import reference_caption
from .export import WorldSpec, build_world, load_annotations, world_dataset
from .scenes import COLORS, KINDS, grid_position, render_scene, sample_scene

__all__ = [
    "COLORS", "KINDS", "WorldSpec", "build_world", "grid_position", "load_annotations", "reference_caption",
    "render_scene", "sample_scene", "world_dataset",
]
