"""The whole pipeline at toy sizes: complete metrics.json, a report whose images exist, CLI behaviour."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from vlm_dpo.cli import main
from vlm_dpo.config import load_config
from vlm_dpo.pipeline import run_pipeline
from vlm_dpo.records import read_jsonl
from vlm_dpo.run import RunFolder
from vlm_dpo.vqa.mine import VqaMineConfig, mine_answers


def test_metrics_json_is_complete(pipeline_run):
    _, out, result = pipeline_run
    run = RunFolder(out)
    m = json.loads(run.metrics.read_text())
    assert set(m["models"]) == {"sft", "dpo", "dpo_round1", "rft", "dpo_no_context", "dpo_mdpo"}
    for name, mm in m["models"].items():
        for k in ("chair_i", "chair_s", "recall", "pope_f1", "mean_words"):
            assert isinstance(mm[k], (int, float)), (name, k)
            lo, hi = mm["ci"][k]
            assert lo <= hi
    assert m["pairs"]["pairs"] > 0 and m["train"]["steps"] == 3
    assert m["pairs"]["by_task"]["vqa"] > 0 and m["pairs"]["by_task"]["caption"] > 0  # one mixed DPO run
    # pairs.mine_answers: the SFT VLM's sampled answers on the train split, judged against the detections, mined
    answers = list(read_jsonl(run.vqa_answers("train")))
    assert answers and all(len(r["samples"]) == 2 for r in answers)
    assert "colour" not in {r["family"] for r in answers}  # detections, not the world's truth, judged them
    mined = {p["pair_id"] for r in answers for p in mine_answers(r, VqaMineConfig())}
    kept = sum(n for k, n in m["pairs"]["by_kind"].items() if k.startswith("vqa_mined_"))
    # a mined pair equal to a synthetic VQA pair (drawn first) is merged into it
    assert kept + m["pairs"]["merged"].get("synthetic_over_mined", 0) == len(mined)
    for name, mm in m["models"].items():  # see-don't-copy metrics for every model
        assert "precision_ungrounded" in mm and "echo_rate" in mm and "recovery_rate" in mm, name
        # CHAIR_i of the same greedy captions, split by whether the context listed the hallucinated kind
        split = mm["chair_i_by_context"]
        assert split["in_context"] + split["outside_context"] == pytest.approx(mm["chair_i"]), name
    for name, mm in m["models"].items():  # the robot's questions, per family, judged (eval/vqa.py)
        vqa = mm["vqa"]
        assert set(vqa) >= {"accuracy", "pope_f1", "false_premise_rejection", "yes_ratio"}, name
        assert {"existence", "counting", "false_premise", "listing", "overall"} <= set(vqa["accuracy"]), name
        assert vqa["pope_f1"] == mm["pope_f1"] and 0 <= vqa["accuracy"]["overall"] <= 1
        # POPE asked with the grounding context (the headline) and without it
        assert set(mm["pope_by_context"]) == set(vqa["pope_f1_by_context"]) == {"grounded", "no_context"}
        assert vqa["pope_f1_by_context"]["grounded"] == mm["pope_f1"]
        contexts = [r["context"] for r in read_jsonl(run.eval / f"{name}.pope.jsonl")]
        assert contexts.count("grounded") == contexts.count("no_context") > 0
        rows = list(read_jsonl(run.eval / f"{name}.vqa.jsonl"))
        # each false-premise question asked again in its words about a kind that is there (vqa/control.py)
        fps = {r["image_id"]: r for r in rows if r["family"] == "false_premise"}
        controls = [r for r in rows if r["family"] == "premise_control"]
        assert fps and sorted(c["image_id"] for c in controls) == sorted(fps), name
        for c in controls:
            assert c["question"].replace(c["label"], "X") == fps[c["image_id"]]["question"].replace(
                fps[c["image_id"]]["label"], "X")
        refused = sum(c["answer_kind"] == "refusal" for c in controls) / len(controls)
        assert vqa["true_premise_refusal"] == pytest.approx(refused)
        assert vqa["premise_balanced_accuracy"] == pytest.approx(
            (vqa["false_premise_rejection"] + 1 - refused) / 2)
        assert vqa["questions"] == len(rows) - len(controls)  # outside the families' counts
    import vlm_dpo.pairs.dataset as ds

    assert all(p["source"] != "context" for p in ds.load_pairs(run.variant("no_context") / "pairs.parquet"))
    assert set(m["timing_s"]) >= {"world", "vlm_sft", "detector", "detect", "describe", "ask", "pairs", "dpo", "eval"}
    assert m["machine"]["threads"] >= 1 and m["machine"]["matmul_gflops_fp32"] > 0 and m["machine"]["cpu"]
    assert result["metrics"] == str(run.metrics)


def test_a_second_round_describes_and_trains_from_the_first_rounds_model(pipeline_run):
    """rounds=2: round 2 (<out>/rounds/round-2, a run folder of its own) describes the train images with round 1's
    DPO model, mines its own pairs and trains DPO from that model, which is also its reference; its model is
    evaluated as "dpo", round 1's as "dpo_round1"."""
    _, out, _ = pipeline_run
    run = RunFolder(out)
    second = RunFolder(out / "rounds" / "round-2")
    m = json.loads(run.metrics.read_text())
    first_model, second_model = str(run.dpo_model), str(second.dpo_model)
    assert m["train"]["model"] == second_model and [r["round"] for r in m["rounds"]] == [2]
    captions = list(read_jsonl(second.captions("train")))
    assert captions and {c["model"] for c in captions} == {first_model}
    assert [c["image_id"] for c in captions] == [c["image_id"] for c in read_jsonl(run.captions("train"))]
    # the judge's detections are round 1's, not detected again
    assert second.detections("train").read_text() == run.detections("train").read_text()
    settings = json.loads((second.dpo / "settings.json").read_text())
    assert (settings["model"], settings["reference_model"]) == (first_model, "")  # the reference: that model too
    assert settings["pairs"] == str(second.pairs)
    for name in ("dpo", "dpo_round1"):  # both rounds' models evaluated, each on its own
        assert (run.eval / f"{name}.captions.jsonl").exists()
    assert m["rounds"][0]["pairs"]["pairs"] == json.loads(second.pair_stats.read_text())["pairs"] > 0
    assert {"round2_describe", "round2_pairs", "round2_dpo"} <= set(m["timing_s"])


def test_report_and_its_images_exist(pipeline_run):
    _, out, _ = pipeline_run
    run = RunFolder(out)
    page = run.report_index.read_text()
    import re

    srcs = re.findall(r'src="([^"]+)"', page)
    assert srcs and any(s.startswith("gallery/") for s in srcs) and "curves.png" in srcs
    for s in srcs:
        assert (run.report / s).exists(), s
    assert "CHAIR_i" in page and "rft" in page
    # the robot's questions: one accuracy row per asked family, a column per model
    section = page[page.index('id="vqa-section"'):]
    assert "<table id=\"vqa\">" in section and "false premise refused" in section
    assert all(f"<th>{n}</th>" in section for n in ("sft", "dpo", "rft"))


def test_detector_side_job_trains_in_a_worker_process(tmp_path):
    """The pipeline's side job (detector, then the CLIPScore model) in a 1-thread worker, on an empty cache."""
    from tiny_config import TINY_OVERRIDES

    from vlm_dpo.embedded import detector_needs_training, ensure_world
    from vlm_dpo.parallel import Background
    from vlm_dpo.pipeline import _detector_then_clip, builds_side_by_side

    cfg = load_config(None, TINY_OVERRIDES + [f"cache_dir={tmp_path / 'cache'}", f"out={tmp_path / 'run'}"])
    world = ensure_world(cfg, progress=False)
    assert detector_needs_training(cfg, world)
    # side by side when both are to be built, the run may use two cores and the config allows it
    assert builds_side_by_side(replace(cfg, concurrent_stages=True), world)
    assert not builds_side_by_side(replace(cfg, concurrent_stages=True, threads=1), world)
    assert not builds_side_by_side(replace(cfg, concurrent_stages=False), world)
    with Background(_detector_then_clip, (cfg, world, True), threads=1) as job:
        pass
    det = job.result()
    assert Path(det["weights"]).exists() and not detector_needs_training(cfg, world)
    assert list((tmp_path / "cache" / "clip").glob("*/"))  # the CLIPScore model is cached for eval


def test_rerun_skips_finished_stages(pipeline_run):
    cfg, out, _ = pipeline_run
    run = RunFolder(out)
    markers = [run.dpo / ".done", out / "rounds" / "round-2" / "dpo" / ".done"]  # both DPO rounds
    before = [m.stat().st_mtime_ns for m in markers]
    model_files = sorted(run.dpo_model.iterdir())
    run_pipeline(cfg, progress=False)
    assert [m.stat().st_mtime_ns for m in markers] == before
    assert sorted(run.dpo_model.iterdir()) == model_files


def test_a_copied_run_folder_keeps_its_finished_stages(pipeline_run, tmp_path, monkeypatch):
    """Copied elsewhere (or moved), a finished run reruns without training or describing again, and its metrics
    name its own models, not the original's (keys.portable_path, <run>/.origin)."""
    import shutil
    from dataclasses import replace as replaced

    import vlm_dpo.rounds
    import vlm_dpo.train.recipe

    cfg, out, _ = pipeline_run
    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(out, copy, copy_function=shutil.copy2)  # keeps modification times
    outputs = [p.relative_to(copy) for p in (copy / "pairs" / "pairs.parquet", copy / "dpo" / "model",
                                             copy / "rounds" / "round-2" / "captions" / "train.jsonl",
                                             copy / "rounds" / "round-2" / "dpo" / "model", copy / "rft" / "model",
                                             copy / "eval" / "dpo.captions.jsonl", *copy.glob("variants/*/dpo/model"))]
    before = {p: (copy / p).stat().st_mtime_ns for p in outputs}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished DPO stage was trained again")

    monkeypatch.setattr(vlm_dpo.rounds, "train_dpo", no_training)
    monkeypatch.setattr(vlm_dpo.train.recipe, "train_dpo", no_training)
    run_pipeline(replaced(cfg, out=str(copy)), progress=False)
    assert {p: (copy / p).stat().st_mtime_ns for p in outputs} == before
    assert len(outputs) >= 8  # both rounds, RFT and the variants were there to keep
    models = json.loads((copy / "metrics.json").read_text())["models"]
    assert models["dpo"]["model"] == str(copy / "rounds" / "round-2" / "dpo" / "model")
    assert models["dpo_round1"]["model"] == str(copy / "dpo" / "model")
    original = json.loads((Path(out) / "metrics.json").read_text())["models"]
    assert {n: m["chair_i"] for n, m in models.items()} == {n: m["chair_i"] for n, m in original.items()}


def test_cli_config_error_and_help(capsys):
    assert main(["describe", "describe.n_sample=3"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "vlm_dpo", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("detect", "describe", "pairs", "train", "eval", "pipeline"):
        assert cmd in r.stdout


def test_cli_overrides_may_follow_options(tmp_path, capsys, tiny_cache):
    code = main(["detect", "--out", str(tmp_path / "o"), f"cache_dir={tiny_cache}", f"data.images={tmp_path / 'x'}",
                 "--quiet"])
    assert code == 1 and "image folder not found" in capsys.readouterr().err  # the override after --out applied
    with pytest.raises(SystemExit):
        main(["detect", "--out", str(tmp_path / "o"), "--bogus"])


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys, tiny_cache):
    code = main(["detect", f"data.images={tmp_path / 'nope'}", f"cache_dir={tiny_cache}", f"out={tmp_path / 'o'}",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "image folder not found" in err and "Traceback" not in err
    code = main(["train", f"train.model={tmp_path / 'no-model'}", f"train.pairs={tmp_path / 'p.jsonl'}",
                 f"cache_dir={tiny_cache}", f"out={tmp_path / 'o'}", "--quiet"])
    assert code == 1 and "p.jsonl: pair file not found" in capsys.readouterr().err


def test_shipped_demo_config_loads():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    assert cfg.vlm.model == "embedded" and cfg.detector.model == "embedded"
