import socket

import pytest
from PIL import Image

from vlm_dpo.detect import detect, detect_to_jsonl, load_yolo
from vlm_dpo.images import ImageError
from vlm_dpo.records import read_jsonl


@pytest.fixture(scope="module")
def yolo_from_yaml():
    # Random weights from the architecture yaml: the wrapper's plumbing, not detection quality.
    return load_yolo("yolo11n.yaml")


def _images(tmp_path, n=3, size=(96, 80)):
    items = []
    for i in range(n):
        p = tmp_path / f"im{i}.png"
        Image.new("RGB", size, (120 + 20 * i, 90, 60)).save(p)
        items.append({"image_id": f"im{i}", "path": str(p), "file": p.name})
    return items


def test_detect_records_shape(tmp_path, yolo_from_yaml):
    items = _images(tmp_path)
    recs = detect(items, yolo_from_yaml, conf=0.0, batch_size=2, imgsz=64)
    assert [r["image_id"] for r in recs] == ["im0", "im1", "im2"]
    for r in recs:
        assert (r["width"], r["height"]) == (96, 80)
        for d in r["detections"]:
            assert d["label"] in yolo_from_yaml.names.values()
            assert 0.0 <= d["score"] <= 1.0 and len(d["box"]) == 4


def test_bad_images_error_or_skip(tmp_path, yolo_from_yaml):
    items = _images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    items.append({"image_id": "broken", "path": str(tmp_path / "broken.png")})
    items.append({"image_id": "gone", "path": str(tmp_path / "gone.png")})
    with pytest.raises(ImageError, match="broken.png: not a readable image"):
        detect(items, yolo_from_yaml, imgsz=64)
    recs = detect(items, yolo_from_yaml, imgsz=64, skip_bad_images=True)
    errors = {r["image_id"]: r["error"] for r in recs if "error" in r}
    assert set(errors) == {"broken", "gone"} and "image file not found" in errors["gone"]


def test_missing_checkpoint_is_not_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="no downloads"):
        load_yolo(str(tmp_path / "yolo11n.pt"))


def test_detect_to_jsonl_resumes(tmp_path, yolo_from_yaml):
    items = _images(tmp_path, 4)
    out = tmp_path / "det.jsonl"
    partial = tmp_path / "det.jsonl.partial"
    first = detect(items[:2], yolo_from_yaml, imgsz=64)
    partial.write_text("".join(__import__("json").dumps(r) + "\n" for r in first))
    calls = []
    real_predict = yolo_from_yaml.predict

    def counting_predict(images, **kw):
        calls.append(len(images))
        return real_predict(images, **kw)

    yolo_from_yaml.predict = counting_predict
    try:
        detect_to_jsonl(items, yolo_from_yaml, out, progress=False, imgsz=64)
    finally:
        yolo_from_yaml.predict = real_predict
    assert calls == [2]  # only the two unfinished images were detected
    assert [r["image_id"] for r in read_jsonl(out)] == ["im0", "im1", "im2", "im3"]


def test_network_is_blocked_in_tests():
    with pytest.raises(RuntimeError, match="network"):
        socket.create_connection(("example.com", 80), timeout=1)
