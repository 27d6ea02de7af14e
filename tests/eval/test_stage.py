"""The eval stage: the parts of every model's evaluation spread over a pool give what one process gives."""

import json
from dataclasses import replace

import pytest

from vlm_dpo.embedded import ensure_world
from vlm_dpo.eval import stage
from vlm_dpo.pairs.dataset import load_pairs
from vlm_dpo.run import RunFolder


def test_parts_in_a_pool_give_the_results_of_one_process(pipeline_run, tmp_path):
    """The pipeline evaluated its models in a pool of two workers, a part (captions, POPE, VQA) and the held-out
    pair log-probs of each model per job (eval.workers=2). Evaluated again one model after the other in this
    process, every metric and every written row is the same."""
    cfg, out, _ = pipeline_run
    assert cfg.eval.workers == 2
    run = RunFolder(out)
    written = json.loads(run.metrics.read_text())["models"]
    models = {name: written[name]["model"] for name in ("sft", "dpo_round1", "dpo")}
    items, scenes = stage.eval_items(cfg, run)
    val_pairs = [p for p in load_pairs(run.pairs) if p["split"] == "val"]
    assert val_pairs
    one = replace(cfg, eval=replace(cfg.eval, workers=1))
    again = stage.evaluate_models(one, run, models, items, scenes, tmp_path, val_pairs, ensure_world(cfg), progress=False)
    for name in models:
        before = json.loads((run.eval / f"{name}.metrics.json").read_text())
        assert json.loads((tmp_path / f"{name}.metrics.json").read_text()) == before
        for kind in ("captions.jsonl", "pope.jsonl", "vqa.jsonl", "robustness.jsonl", "per_image.jsonl"):
            assert (tmp_path / f"{name}.{kind}").read_text() == (run.eval / f"{name}.{kind}").read_text(), kind
        # log-probs from a 1-thread worker against this process's threads: the same up to float order
        assert again[name]["pref_accuracy"] == pytest.approx(written[name]["pref_accuracy"], abs=1e-6)
        assert again[name]["reward_margin"] == pytest.approx(written[name]["reward_margin"], abs=1e-4)
    families = {json.loads(line)["family"] for line in (tmp_path / "dpo.vqa.jsonl").read_text().splitlines()}
    assert {"existence", "counting", "false_premise"} <= families  # every part was there to compare
