"""Reliability (issue 18): no stale reuse, no torn state, no silent corruption, a clear error for bad input."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_dpo.cli import main as cli_main
from vlm_dpo.config import ConfigError, load_config


# ---- bad numbers and bad YAML are one clear config error --------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("train.batch_size=-4", "train.batch_size"), ("train.batch_size=0", "train.batch_size"),
    ("describe.batch_size=-1", "describe.batch_size"), ("train.max_steps=-5", "train.max_steps"),
    ("train.lr=0", "train.lr"), ("describe.n_samples=-1", "describe.n_samples"),
    ("describe.temperature=-0.5", "describe.temperature"), ("pairs.val_fraction=1.5", "pairs.val_fraction"),
    ("eval.temperature=-1", "eval.temperature"), ("eval.noise_drop=2", "eval.noise_drop"),
    ("vlm.sft.batch_size=0", "vlm.sft.batch_size"), ("vlm.hallucination.count=-0.1", "vlm.hallucination.count"),
    ("detector.conf=1.2", "detector.conf"), ("rft.steps=-1", "rft.steps"), ("pairs.mine.min_margin=-1",
                                                                          "pairs.mine.min_margin"),
    ("world.n_train=-3", "world.n_train"), ("ground.min_score=3", "ground.min_score"),
    ("train.loss.beta=-1", "train.loss"),
])
def test_out_of_range_numbers_are_refused_at_load_with_the_full_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_number_is_one_line_from_the_cli(capsys):
    assert cli_main(["describe", "describe.batch_size=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config error" in err[0] and "describe.batch_size" in err[0]


@pytest.mark.parametrize("text, match", [("describe:\n  n_samples: [1,\n", "not valid YAML.*line"),
                                         ("- 1\n- 2\n", "top level must be a mapping")])
def test_broken_yaml_files_are_a_clean_config_error(tmp_path, capsys, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)
    assert cli_main(["describe", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlm-dpo: config error:") and "bad.yaml" in err[0]


def test_broken_yaml_override_is_a_clean_config_error(capsys):
    with pytest.raises(ConfigError, match="override.*not valid YAML"):
        load_config(None, ["eval.models={sft: [1,"])
    assert cli_main(["eval", "describe.n_samples=[1,"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlm-dpo: config error:")


def test_defaults_and_shipped_configs_still_load():
    for path in sorted(Path("configs").glob("*.yaml")):
        load_config(path)


# ---- pair imports: no silent drop, no NaN, no abort on one bad byte, a length limit ----------------------

def _import_root(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), (10, 20, 30)).save(root / "images" / "a.png")
    return root


def _build_from_imports(tmp_path, rows: list[bytes], **cfg):
    from vlm_dpo.pairs.stage import PairsConfig, build_pairs

    root = _import_root(tmp_path)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(r + b"\n" for r in rows))
    out = tmp_path / "pairs"
    stats = build_pairs(PairsConfig(captions="", detections="", image_root=str(root), imports=[str(path)],
                                    val_fraction=0.0, **cfg), out, progress=False)
    return stats, out, path


ROW = {"image": "images/a.png", "prompt": "Describe.", "chosen": "a cup.", "rejected": "a ball."}


def test_two_different_pairs_with_one_pair_id_are_not_a_silent_duplicate(tmp_path):
    rows = [json.dumps(ROW | {"pair_id": "same"}).encode(),
            json.dumps(ROW | {"pair_id": "same", "chosen": "two cups."}).encode(),
            json.dumps(ROW | {"pair_id": "same"}).encode()]  # a true duplicate of the first
    stats, out, path = _build_from_imports(tmp_path, rows)
    skipped = stats["rejections"]["skipped"]
    assert skipped.get("pair_id_conflict") == 1 and skipped.get("duplicate", 0) == 1
    first = [e for e in stats["rejections"]["first"] if e["reason"] == "pair_id_conflict"][0]
    assert first["where"] == f"{path}:2" and "already used" in first["row"]


def test_nan_and_infinite_scores_are_rejected_and_stats_stay_valid_json(tmp_path):
    rows = [json.dumps(ROW).encode(),
            json.dumps(ROW | {"chosen": "two cups.", "margin": float("nan")}).encode(),
            json.dumps(ROW | {"chosen": "three cups.", "scores": {"chosen": {"score": float("inf")}}}).encode(),
            (json.dumps(ROW | {"chosen": "four cups."})[:-1] + ', "margin": Infinity}').encode()]
    stats, out, path = _build_from_imports(tmp_path, rows)
    assert stats["pairs"] == 1 and stats["rejections"]["skipped"] == {"non_finite_score": 3}
    assert [e["where"] for e in stats["rejections"]["first"]] == [f"{path}:{i}" for i in (2, 3, 4)]
    json.loads((out / "stats.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in stats.json"))


def test_a_non_utf8_byte_skips_and_counts_its_row(tmp_path):
    bad = json.dumps(ROW | {"chosen": "two cups."}).encode().replace(b"two", b"tw\xff")
    stats, out, path = _build_from_imports(tmp_path, [json.dumps(ROW).encode(), bad])
    assert stats["pairs"] == 1 and stats["rejections"]["skipped"] == {"malformed_row": 1}
    (e,) = stats["rejections"]["first"]
    assert e["where"] == f"{path}:2" and "not UTF-8" in e["row"]


def test_a_non_utf8_byte_in_a_csv_skips_its_row(tmp_path):
    from vlm_dpo.pairs.dataset import Rejections
    from vlm_dpo.pairs.io import import_pairs

    root = _import_root(tmp_path)
    path = tmp_path / "in.csv"
    path.write_bytes(b"image,prompt,chosen,rejected\nimages/a.png,Describe.,a cup.,a ball.\n"
                     b"images/a.png,Describe.,tw\xff cups.,a ball.\n")
    rej = Rejections()
    assert len(import_pairs(path, root, rejections=rej)) == 1
    assert rej.counts == {"malformed_row": 1} and rej.examples[0]["where"] == f"{path}:3"


def test_a_runaway_caption_is_rejected_at_import_by_default(tmp_path):
    from vlm_dpo.pairs.dataset import MAX_CHARS

    huge = " ".join(["cup"] * 10_000)
    stats, _, path = _build_from_imports(tmp_path, [json.dumps(ROW).encode(),
                                                    json.dumps(ROW | {"chosen": huge}).encode()])
    assert stats["pairs"] == 1 and stats["rejections"]["skipped"] == {"too_long": 1}
    assert stats["rejections"]["first"][0]["where"] == f"{path}:2"
    assert load_config(None, []).pairs.max_chars == MAX_CHARS
    stats, _, _ = _build_from_imports(tmp_path / "nolimit", [json.dumps(ROW | {"chosen": huge}).encode()], max_chars=0)
    assert stats["pairs"] == 1


# ---- images ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_grey_png_is_scaled_not_clipped_to_white(tmp_path, mode):
    from vlm_dpo.images import open_image

    ramp = (np.arange(64, dtype=np.uint16)[None, :].repeat(8, 0) * 1040)  # 0 .. 65520
    im = Image.fromarray(ramp)  # mode I;16 (a 16-bit PNG); mode I as TIFF (PNG cannot hold it)
    path = tmp_path / ("grey16.png" if mode == "I;16" else "grey32.tiff")
    (im if mode == "I;16" else im.convert("I")).save(path)
    rgb = np.asarray(open_image(path))
    assert rgb.shape == (8, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and abs(int(rgb[0, 32, 0]) - round(32 * 1040 / 257)) <= 1
    assert (rgb[..., 0] == 255).mean() < 0.05  # not all white


def test_a_folder_whose_only_image_is_an_outward_symlink_says_why(tmp_path):
    from vlm_dpo.images import DataError, folder_items

    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cam.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(DataError, match="no images.*symlinked image.*outside the folder.*cam.png"), \
            pytest.warns(UserWarning, match="refused"):
        folder_items(tmp_path / "photos")
