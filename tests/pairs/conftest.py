"""Fixtures of the pair tests: a few rendered world scenes under a temporary image root, and a private
`datasets` cache (parquet reads build an arrow cache; it must not pile up in the user's home)."""

from __future__ import annotations

import pytest

from vlm_dpo.world import render_scene, sample_scene

IMAGE_SIZE = 64


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path_factory, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf_datasets")
    yield


def scene_detections(scene, score: float = 1.0) -> list[dict]:
    """A scene's ground truth as detections (with colours, as the world's judge sees them)."""
    return [{"label": o.label, "color": o.color, "box": [round(v, 1) for v in o.box], "score": score}
            for o in scene.objects]


@pytest.fixture
def image_root(tmp_path):
    """tmp root with images/<id>.png of train scenes 0..3 (64 px); returns (root, scenes)."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    scenes = [sample_scene(0, "train", i, image_size=IMAGE_SIZE) for i in range(4)]
    for s in scenes:
        render_scene(s).save(root / "images" / f"{s.image_id}.png")
    return root, scenes
