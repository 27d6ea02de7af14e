"""The foundation stages on a tiny world: detect -> ground -> describe, with resume and bad input."""

import json

import pytest
from PIL import Image

from vlm_dpo import describe as describe_mod
from vlm_dpo import detect
from vlm_dpo.run import RunFolder
from vlm_dpo.records import read_jsonl


def test_detect_then_describe_on_the_tiny_world(tiny_cfg):
    det = detect.run(tiny_cfg, RunFolder.setup(tiny_cfg), "test", progress=False)
    recs = list(read_jsonl(det))
    assert len(recs) == tiny_cfg.world.n_test
    assert all(r["width"] == tiny_cfg.world.image_size for r in recs)
    cap = describe_mod.run(tiny_cfg, RunFolder.setup(tiny_cfg), "test", progress=False)
    caps = list(read_jsonl(cap))
    assert [c["image_id"] for c in caps] == [r["image_id"] for r in recs]
    c = caps[0]
    assert c["prompt"].startswith("Describe the objects on the table. Detected:")
    assert c["grounding"] in c["prompt"]
    assert isinstance(c["greedy"], str) and len(c["samples"]) == tiny_cfg.describe.n_samples
    assert c["generation"]["max_new_tokens"] == tiny_cfg.describe.max_new_tokens
    assert c["model"]
    counts = json.loads(cap.with_suffix(".counts.json").read_text())
    assert counts["images"] == tiny_cfg.world.n_test


def test_describe_resumes_to_the_same_captions(tiny_cfg, tmp_path, monkeypatch):
    full = list(read_jsonl(describe_mod.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False, out_name="full.jsonl")))
    real = describe_mod.describe
    calls = []

    def dying(*args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed during the second batch
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(describe_mod, "describe", dying)
    with pytest.raises(KeyboardInterrupt):
        describe_mod.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False, out_name="resumed.jsonl")
    partial = RunFolder(tiny_cfg.out).captions_dir / "resumed.jsonl.partial"
    assert len(list(read_jsonl(partial))) == tiny_cfg.describe.batch_size
    monkeypatch.setattr(describe_mod, "describe", real)
    resumed = list(read_jsonl(describe_mod.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False, out_name="resumed.jsonl")))
    assert resumed == full


def test_user_folder_with_corrupt_and_blank_images(tiny_cfg, tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.new("RGB", (96, 96), (200, 200, 200)).save(photos / "blank.png")  # nothing to detect
    Image.new("RGB", (96, 96), (90, 60, 30)).save(photos / "sub" / "table.jpg")
    (photos / "corrupt.png").write_bytes(b"\x89PNG broken")
    tiny_cfg.data.images = str(photos)
    tiny_cfg.data.skip_bad_images = True
    det = list(read_jsonl(detect.run(tiny_cfg, RunFolder.setup(tiny_cfg), "mine", progress=False)))
    assert {r["image_id"] for r in det} == {"blank", "corrupt", "sub/table"}
    assert [r["image_id"] for r in det if r.get("error")] == ["corrupt"]
    cap = describe_mod.run(tiny_cfg, RunFolder.setup(tiny_cfg), "mine", progress=False)
    counts = json.loads(cap.with_suffix(".counts.json").read_text())
    assert counts["skipped_bad_image"] == 1 and counts["images"] == 3
    assert len(list(read_jsonl(cap))) == 2
