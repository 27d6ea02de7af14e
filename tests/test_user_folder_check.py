"""scripts/user_folder_check.sh: a finished run's SFT and DPO models on another world seed's test scenes, given as a
folder of images with their annotations (issue #16's check on seeds no project file names)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from vlm_dpo.records import read_jsonl

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "user_folder_check.sh"


def _check(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"VLM_DPO": f"{sys.executable} -m vlm_dpo", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=900)


def test_the_runs_models_are_scored_on_the_new_seeds_images(pipeline_run):
    _, out, _ = pipeline_run
    res = _check(str(out), "5", "eval.workers=1")
    assert res.returncode == 0, res.stderr[-2000:]
    line = res.stdout.strip().splitlines()[-1]
    assert line.startswith("world seed 5, 10 images, SFT -> DPO: CHAIR_i ") and "recall" in line, line
    check = Path(f"{out}-user-seed5")
    truth = list(read_jsonl(check / "annotations.jsonl"))
    assert len(truth) == 10 and all(r["image_id"].startswith("test-5-") for r in truth)
    metrics = json.loads((check / "metrics.json").read_text())
    run_models = json.loads((Path(out) / "metrics.json").read_text())["models"]
    assert metrics["held_out_images"] == 10
    assert {n: m["model"] for n, m in metrics["models"].items()} == {n: run_models[n]["model"] for n in ("sft", "dpo")}
    # the captions are of the new seed's images, from prompts grounded by the run's detector
    captions = list(read_jsonl(check / "eval" / "dpo.captions.jsonl"))
    assert {c["image_id"] for c in captions} == {r["image_id"] for r in truth}
    assert f"{metrics['models']['dpo']['chair_i']:.3f}" in line


def test_a_folder_that_is_not_a_finished_run_is_one_line(tmp_path):
    res = _check(str(tmp_path), "5")
    assert res.returncode == 2 and res.stderr.strip() == f"{tmp_path}: no metrics.json (not a finished run)"
    assert _check().returncode == 2


def test_a_run_without_a_dpo_model_says_so(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"models": {"sft": {"model": "x"}}}))
    assert _check(str(tmp_path), "5").stderr.strip() == f"{tmp_path}: no config.yaml"
    (tmp_path / "config.yaml").write_text("out: x\n")
    res = _check(str(tmp_path), "5")
    assert res.returncode != 0 and f"{tmp_path}/metrics.json: needs an sft and a dpo model, has ['sft']" in res.stderr
