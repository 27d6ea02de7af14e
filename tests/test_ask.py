"""The ask stage (vlm_dpo/ask.py) on the tiny world: questions from detections or from the world's truth, answers
by the embedded VLM, every record judged, metrics written; resumed runs reuse the file; bad settings are errors."""

from __future__ import annotations

import json

import pytest

from vlm_dpo import ask
from vlm_dpo.config import ConfigError, load_config
from vlm_dpo.records import read_jsonl
from vlm_dpo.run import RunFolder
from vlm_dpo.vqa.answers import VERDICTS
from vlm_dpo.vqa.questions import FAMILIES


def test_ask_on_the_world_truth(tiny_cfg):
    tiny_cfg.ask.truth = "world"
    out = ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "test", progress=False)
    rows = list(read_jsonl(out["answers"]))
    images = {r["image_id"] for r in rows}
    assert len(images) == tiny_cfg.world.n_test
    assert {r["family"] for r in rows} <= set(FAMILIES) and "listing" in {r["family"] for r in rows}
    assert all(r["verdict"] in VERDICTS and isinstance(r["answer"], str) for r in rows)
    assert all(r["prompt"].startswith(r["question"]) for r in rows)
    assert any(r["grounding"] and r["grounding"] in r["prompt"] for r in rows)  # grounded by default
    metrics = json.loads(open(out["metrics"]).read())
    assert metrics["questions"] == len(rows) and 0 <= metrics["accuracy"]["overall"] <= 1
    # rerun: the finished file is reused (same content, not regenerated)
    before = open(out["answers"]).read()
    assert ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "test", progress=False)["answers"] == out["answers"]
    assert open(out["answers"]).read() == before


def test_ask_against_detections_skips_colour_and_can_drop_the_context(tiny_cfg):
    tiny_cfg.ask.grounded = False
    out = ask.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False)
    rows = list(read_jsonl(out["answers"]))
    assert rows and "colour" not in {r["family"] for r in rows}  # a detector gives no colours
    assert all(r["prompt"] == r["question"] for r in rows)


def test_ask_config_errors():
    with pytest.raises(ConfigError, match="ask.truth"):
        load_config(None, ["ask.truth=oracle"])
    with pytest.raises(ConfigError, match="ask.families"):
        load_config(None, ["ask.families=[existence,weather]"])
