"""The run folder names every path of the documented layout, from a path alone."""

from pathlib import Path

from vlm_dpo.run import RunFolder, Stage


def test_run_folder_layout_is_the_documented_one(tmp_path):
    run = RunFolder(tmp_path)
    rel = lambda p: p.relative_to(tmp_path).as_posix()  # noqa: E731
    assert rel(run.config) == "config.yaml"
    assert rel(run.detections("test")) == "detections/test.jsonl" and rel(run.captions("train")) == "captions/train.jsonl"
    assert [rel(p) for p in (run.pairs, run.pairs_jsonl, run.pair_stats)] == [
        "pairs/pairs.parquet", "pairs/pairs.jsonl", "pairs/stats.json"]
    assert [rel(p) for p in (run.dpo_metrics, run.dpo_model, run.dpo_summary)] == [
        "dpo/metrics.jsonl", "dpo/model", "dpo/summary.json"]
    assert rel(run.rft_model) == "rft/model" and rel(run.variant("mdpo")) == "variants/mdpo"
    assert rel(run.eval_captions("sft")) == "eval/sft.captions.jsonl" and rel(run.metrics) == "metrics.json"
    assert rel(run.report_index) == "report/index.html" and rel(run.curves) == "report/curves.png"
    assert rel(run.judgements_db) == "annotate/judgements.sqlite" and rel(run.judgements) == "annotate/judgements.jsonl"
    assert not any(tmp_path.iterdir())  # naming paths creates nothing
    assert RunFolder(".").judgements_db == Path("annotate/judgements.sqlite")


def test_stage_marker_skips_same_key_and_clears_stale_outputs(tmp_path):
    run = RunFolder(tmp_path)
    stage = run.stage(run.dpo, "k1").reset_if_stale()
    assert not stage.done
    run.dpo_model.mkdir(parents=True)
    stage.finish()
    assert Stage(run.dpo, "k1").done
    Stage(run.dpo, "k1").reset_if_stale()
    assert run.dpo_model.exists()  # same key: kept
    Stage(run.dpo, "k2").reset_if_stale()
    assert not run.dpo.exists()  # finished under another key: removed
    run.dpo_model.mkdir(parents=True)  # unmarked (interrupted) outputs are kept, so they resume
    Stage(run.dpo, "k3").reset_if_stale()
    assert run.dpo_model.exists()
