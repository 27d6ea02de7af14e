"""Fixtures of the annotation tests: a few rendered world scenes under a temporary data root, with a captions
JSONL (two distinct captions per image) and a detections JSONL (the scenes' ground truth as boxes); a question
pair (task "vqa") on one of them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from vlm_dpo.ground import PromptConfig, grounding_text, prompt_text
from vlm_dpo.pairs.dataset import make_pair
from vlm_dpo.vqa.questions import number_word
from vlm_dpo.world.captions import reference_caption
from vlm_dpo.world.scenes import render_scene, sample_scene

N_IMAGES = 6
QUESTION = "How many objects are on the table?"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def make_data(tmp_path: Path, n: int = N_IMAGES) -> SimpleNamespace:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    captions, detections, scenes = [], [], []
    for i in range(n):
        scene = sample_scene(0, "train", i)
        render_scene(scene).save(root / "images" / f"{scene.image_id}.png")
        objects = [o.to_dict() for o in scene.objects]
        truth = reference_caption(objects, scene.width)
        labels = ", ".join(o["label"] for o in objects)
        captions.append({"image_id": scene.image_id, "file": f"images/{scene.image_id}.png",
                         "prompt": f"Detected objects: {labels}.\nDescribe the image.",
                         "grounding": f"Detected objects: {labels}.", "greedy": truth,
                         "samples": [truth, f"{truth} There is also a purple phone.", "  " + truth]})
        detections.append({"image_id": scene.image_id, "file": f"images/{scene.image_id}.png",
                           "width": scene.width, "height": scene.height,
                           "detections": [{"label": o["label"], "score": 0.9, "box": o["box"]} for o in objects]})
        scenes.append(scene)
    return SimpleNamespace(root=root, captions=write_jsonl(tmp_path / "captions.jsonl", captions),
                           detections=write_jsonl(tmp_path / "detections.jsonl", detections),
                           caption_records=captions, detection_records=detections, scenes=scenes)


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path)


def vqa_pair(data: SimpleNamespace, i: int = 0) -> dict:
    """A counting question pair on image i, its prompt built as vqa/pairs.py builds it (question, then grounding)."""
    rec = data.detection_records[i]
    grounding = grounding_text(rec["detections"], rec["width"], rec["height"])
    n = len(rec["detections"])
    return make_pair(image_id=rec["image_id"], image=rec["file"], prompt=prompt_text(grounding, PromptConfig(QUESTION)),
                     grounding=grounding, chosen=f"{number_word(n)}.", rejected=f"{number_word(n + 1)}.",
                     source="synthetic", kind="vqa_count", task="vqa")
