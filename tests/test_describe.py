import json

from PIL import Image

from vlm_dpo.config import load_config
from vlm_dpo.describe import describe_items


def _detections(tmp_path, scores: dict[str, list[float]]):
    """A user folder of blank images and a detections file giving each image cups of the given scores."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for name, image_scores in scores.items():
        Image.new("RGB", (32, 32)).save(images / f"{name}.png")
        rows.append({"image_id": name, "file": f"{name}.png", "width": 32, "height": 32,
                     "detections": [{"label": "cup", "score": s, "box": [0, 0, 8, 8]} for s in image_scores]})
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return images, path


def test_describe_items_state_the_fallback_guess_and_count_only_empty_contexts(tmp_path):
    images, dets = _detections(tmp_path, {"sure": [0.9], "guess": [0.35, 0.42], "none": [0.1]})
    base = [f"data.images={images}", "ground.min_score=0.5", "ground.positions=false"]
    items, counts = describe_items(load_config(None, base), "val", dets)
    assert [it["grounding"] for it in items] == ["Detected: 1 cup.", "Detected: nothing.", "Detected: nothing."]
    assert counts["no_detections"] == 2
    items, counts = describe_items(load_config(None, base + ["ground.fallback_score=0.3"]), "val", dets)
    # the one best guess (one cup, not two) on the image with nothing confident; the empty context stays empty
    assert [it["grounding"] for it in items] == ["Detected: 1 cup.", "Detected: 1 cup.", "Detected: nothing."]
    assert items[1]["prompt"].endswith("Detected: 1 cup.")
    assert counts["no_detections"] == 1
