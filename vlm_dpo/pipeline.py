"""The whole pipeline: the stages (one module each) chained over one run folder (vlm_dpo.run.RunFolder).

    world -> detector -> detect -> VLM SFT -> describe -> pairs -> DPO (x `rounds`, vlm_dpo/rounds.py)
          (+ RFT baseline, variants) -> eval -> report

Each stage folder carries a done-marker keyed by everything upstream (vlm_dpo.keys): a rerun skips finished
stages, a changed config or input reruns that stage and everything after it. Assets of the embedded world
(world, detector, tiny VLM) live in the cache (see embedded.py).
"""

from __future__ import annotations

import json
import time

from . import detect, report, rft
from .eval import stage as eval_stage
from .keys import key as stage_key
from .machine import machine_info
from .records import write_text_atomic
from .rounds import dpo_round, later_rounds
from .run import RunFolder
from .train import stage as train_stage
from .variants import train_variants


def _detector_then_clip(cfg, world_root, side_job: bool) -> dict:
    """The detector; as the pipeline's side job (a 1-thread process), also the CLIPScore model that the
    evaluation stage will load from the cache."""
    from .embedded import clip_model_name, ensure_detector

    detector = ensure_detector(cfg, world_root)
    if side_job:
        clip_model_name(cfg, progress=False)
    return detector


class Laps:
    """Wall seconds per stage, in the order the stages ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.t = time.time()

    def __call__(self, name: str) -> None:
        self.seconds[name] = round(time.time() - self.t, 1)
        self.t = time.time()


def builds_side_by_side(cfg, world_root) -> bool:
    """Does the detector (then the CLIPScore model) train in its own 1-thread process while this one builds the
    VLM? When both are to be built and the run may use more than one core; otherwise each runs here when needed."""
    from .embedded import detector_needs_training, vlm_is_cached

    return (cfg.concurrent_stages and cfg.threads != 1 and detector_needs_training(cfg, world_root)
            and not vlm_is_cached(cfg))


def _import_model_loaders() -> None:
    # What models.load_model_and_processor imports: transformers' auto classes take seconds on a small CPU.
    from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401


def _warm_workers(cfg) -> None:
    """Start the worker processes of the describe and eval stages (one pool for all of them, parallel.shared_pools)
    and import transformers there, while this process waits for the detector. Nothing under a launcher, whose
    processes share the work themselves (describe.sampling_workers is then 1)."""
    from .describe import sampling_workers
    from .parallel import warm_up

    warm_up(sampling_workers(cfg), 1, _import_model_loaders)


def run_pipeline(cfg, progress: bool = True) -> dict:
    """world -> detector -> detect -> VLM SFT -> describe -> pairs -> DPO (+ RFT baseline) -> eval -> report."""
    from .parallel import shared_pools

    with shared_pools():  # the stages' worker processes are started once, not per stage
        return _run_stages(cfg, progress)


def _run_stages(cfg, progress: bool) -> dict:
    from .embedded import ensure_vlm, ensure_world
    from .pairs.dataset import load_pairs
    from .parallel import Background

    run = RunFolder.setup(cfg)
    lap = Laps()
    world_root = ensure_world(cfg, progress)
    lap("world")
    both = builds_side_by_side(cfg, world_root)
    # Each builds with one thread either way (embedded.BUILD_THREADS), so the results do not depend on this.
    with Background(_detector_then_clip, (cfg, world_root, both), threads=1, enabled=both) as det_job:
        vlm = ensure_vlm(cfg, progress)
        lap("vlm_sft")
        _warm_workers(cfg)
        detector = det_job.result()
    lap("detector")  # what was left of it after the VLM: its wait

    key = stage_key(cfg.world, cfg.detector, cfg.data)
    stage = run.stage(run.detections_dir, key).reset_if_stale()
    detect.run(cfg, run, "train", progress=progress)
    detect.run(cfg, run, cfg.eval.split, progress=progress)
    stage.finish()
    lap("detect")
    train_summary, pair_stats, key = dpo_round(cfg, run, vlm["model"], key, progress=progress, lap=lap)
    models = {"sft": vlm["model"], "dpo": train_summary["model"]}
    later = later_rounds(cfg, run, train_summary["model"], key, progress=progress, lap=lap)
    if later:  # the last round's model is "dpo"; the first round's is evaluated beside it
        models |= {"dpo_round1": train_summary["model"], "dpo": later[-1]["model"]}
        train_summary = later[-1]["train"]

    if cfg.rft.enabled:
        stage = run.stage(run.rft, stage_key(key, cfg.rft)).reset_if_stale()
        if not stage.done:
            rft.run(cfg, run, vlm["model"], progress=progress)
            stage.finish()
        models["rft"] = str(run.rft_model)
    lap("rft")
    tcfg = train_stage.train_config(cfg, run, vlm["model"])  # the first round's: variants repeat it, its val pairs
    models |= train_variants(cfg, run, tcfg, key, progress)
    lap("variants")

    # Held-out evaluation: the pipeline's own grounded prompts from the detector on test scenes, truth from
    # the world's annotations (not from the detector that judged the training pairs).
    eval_key = stage_key(key, cfg.rft, cfg.eval, cfg.variants, *([later[-1]["key"]] if later else []))
    stage = run.stage(run.eval, eval_key).reset_if_stale()
    items, scenes = eval_stage.eval_items(cfg, run)
    val_pairs = [p for p in load_pairs(tcfg.pairs) if p["split"] == "val"]
    results = eval_stage.evaluate_models(cfg, run, models, items, scenes, run.eval, val_pairs, world_root, progress)
    stage.finish()
    lap("eval")

    sft_m, dpo_m = results["sft"], results["dpo"]
    rel = lambda a, b: (a - b) / b if b else None  # noqa: E731
    summary = {
        "models": results,
        "change_dpo_vs_sft": {
            "chair_i_relative": rel(dpo_m["chair_i"], sft_m["chair_i"]),
            "recall_relative": rel(dpo_m["recall"], sft_m["recall"]),
            "mean_words_relative": rel(dpo_m["mean_words"], sft_m["mean_words"]),
        },
        "detector": detector, "vlm": vlm, "pairs": {k: v for k, v in pair_stats.items() if k != "key"},
        "train": train_summary, "rounds": [{k: r[k] for k in ("round", "model", "pairs")} for r in later],
        "timing_s": lap.seconds, "held_out_images": len(items),
        # where the timings were measured (vlm_dpo/machine.py: its matmul rate labels the machine, it does not
        # predict the stages' seconds)
        "machine": machine_info(cfg.threads),
        # what a later `vlm-dpo eval` into this folder must match to merge its results (eval/stage.py)
        "eval_settings": eval_stage.eval_settings(cfg, items, scenes),
    }
    report.run(cfg, run, summary, items=items, scenes=scenes, pair_stats=summary["pairs"],
               curves_from=report.training_curves(summary))  # every round's
    lap("report")
    summary["timing_s"] = lap.seconds
    write_text_atomic(run.metrics, json.dumps(summary, indent=1, default=str))
    return {"metrics": str(run.metrics), "report": str(run.report_index),
            "chair_i": {n: round(r["chair_i"], 4) for n, r in results.items()},
            "recall": {n: round(r["recall"], 4) for n, r in results.items()},
            "mean_words": {n: round(r["mean_words"], 3) for n, r in results.items()},
            "timing_s": lap.seconds}
