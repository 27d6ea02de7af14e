import json

import pytest

from vlm_dpo.records import read_jsonl
from vlm_dpo.world import WorldSpec, build_world, load_annotations, world_dataset
from vlm_dpo.world.scenes import KINDS


def test_world_files_yolo_labels_and_dataset(tmp_path):
    spec = WorldSpec(seed=5, n_train=6, n_val=2, n_test=3, image_size=64)
    ann = build_world(tmp_path / "w", spec, progress=False)
    recs = list(read_jsonl(ann))
    assert [r["split"] for r in recs].count("test") == 3 and len(recs) == 11
    assert len({r["image_id"] for r in recs}) == 11
    r = recs[0]
    assert (tmp_path / "w" / r["file"]).exists()
    label = (tmp_path / "w" / "labels" / r["split"] / f"{r['image_id']}.txt").read_text().split("\n")
    first = label[0].split()
    o = r["objects"][0]
    assert int(first[0]) == KINDS.index(o["label"])
    assert float(first[1]) == pytest.approx((o["box"][0] + o["box"][2]) / 2 / 64, abs=1e-4)
    data_yaml = (tmp_path / "w" / "data.yaml").read_text()
    assert "train: images/train" in data_yaml and "7: phone" in data_yaml
    ds = world_dataset(tmp_path / "w", "val")
    assert len(ds) == 2 and ds[0]["image"].size == (64, 64)
    assert ds[0]["objects"][0]["label"] in KINDS
    assert len(load_annotations(tmp_path / "w", "train")) == 6


def test_world_rerun_reuses_and_refuses_other_spec(tmp_path):
    spec = WorldSpec(n_train=2, n_val=1, n_test=1, image_size=64)
    ann = build_world(tmp_path / "w", spec, progress=False)
    mtime = ann.stat().st_mtime_ns
    build_world(tmp_path / "w", spec, progress=False)
    assert ann.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="another spec"):
        build_world(tmp_path / "w", WorldSpec(n_train=3, n_val=1, n_test=1, image_size=64), progress=False)


def test_interrupted_world_build_resumes(tmp_path):
    spec = WorldSpec(n_train=3, n_val=1, n_test=1, image_size=64)
    build_world(tmp_path / "w", spec, progress=False)
    (tmp_path / "w" / "annotations.jsonl").unlink()  # as if killed before the last, atomic write
    img = next((tmp_path / "w" / "images" / "train").glob("*.png"))
    img.unlink()
    build_world(tmp_path / "w", spec, progress=False)
    assert img.exists() and len(list(read_jsonl(tmp_path / "w" / "annotations.jsonl"))) == 5
    assert json.loads((tmp_path / "w" / "world.json").read_text())["spec"]["n_train"] == 3
