"""The eval stage: the evaluation images and their truth, the see-don't-copy inputs, and every model's
metrics (the parts of the models' evaluations side by side in worker processes on CPU). Writes
<run>/eval/<model>.* and metrics.json.

A model's results in <run>/eval/ are reused only for the same model *content* (its path and file
fingerprints, keys.model_fingerprint), evaluation settings and images: `<model>.metrics.json.settings.json`
records them, so `eval.models={sft: <another model>}` or a model retrained at the same path is evaluated anew.
`vlm-dpo eval` on a run that already has metrics.json (a finished pipeline) merges its models' results into it,
keeping the other models, the training curves and the pair statistics; when the existing results are on other
evaluation images or settings it refuses, naming what changed, rather than mixing the two.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..ground import PromptConfig, context_detections, grounding_text, prompt_text
from ..images import DataError
from ..judge import resolve_vocabulary
from ..judge.vocabulary import VOCABULARY_FILE_SUFFIXES
from ..keys import file_fingerprint, key, model_fingerprint
from ..records import (drop_if_other_settings, read_jsonl, record_settings, setting_changes,
                       write_text_atomic)
from ..run import RunFolder
from ..shards import is_main, launched, main_first, wait_for_everyone


def eval_items(cfg, run: RunFolder) -> tuple[list[dict], list[dict]]:
    """(items with grounded prompts, ground-truth scenes) of the evaluation images: a world split, or the
    user's annotated images (eval.annotations + data.images)."""
    from .. import detect
    from ..describe import describe_items

    split = cfg.eval.split
    det_path = detect.run(cfg, run, split, progress=False)  # reused when its images and detector are unchanged
    items, _ = describe_items(cfg, split, det_path)
    if cfg.eval.annotations:
        truth = {str(r["image_id"]): r for r in read_jsonl(cfg.eval.annotations)}
        items = [it for it in items if it["image_id"] in truth]
        if not items:
            raise DataError(f"{cfg.eval.annotations}: no annotated image_id matches the images in {cfg.data.images}")
    else:
        from ..embedded import ensure_world
        from ..world.export import load_annotations

        truth = {s["image_id"]: s for s in load_annotations(ensure_world(cfg), split)}
    if cfg.eval.limit:
        items = items[: cfg.eval.limit]
    return items, [truth[it["image_id"]] for it in items]


def robustness_inputs(cfg, run: RunFolder, items: list[dict], scenes: list[dict]) -> dict:
    """Prompts for the see-don't-copy metrics: noisy contexts (deterministic, reported), the detector's own
    contexts with their natural errors, and prompts without context."""
    from .grounding import context_errors, noisy_contexts

    records = list(read_jsonl(run.detections(cfg.eval.split)))
    vocab = resolve_vocabulary(cfg.eval.vocabulary, records)
    noisy = noisy_contexts(scenes, list(vocab.classes), cfg.eval.noise_drop, cfg.eval.noise_add, cfg.eval.seed)
    noisy_items = []
    for it, sc, nz in zip(items, scenes, noisy):
        g = grounding_text(nz["detections"], sc.get("width", 128), sc.get("height", 128), cfg.ground)
        noisy_items.append(it | {"grounding": g, "prompt": prompt_text(g, PromptConfig(cfg.prompt.instruction))})
    dets = {r["image_id"]: r["detections"] for r in records}
    return {
        "noisy_items": noisy_items,
        "noisy_errors": [{"injected": n["injected"], "dropped": n["dropped"]} for n in noisy],
        "natural_errors": [context_errors(context_detections(dets.get(it["image_id"], []), cfg.ground),
                                          sc["objects"], vocab) for it, sc in zip(items, scenes)],
        "ungrounded_items": [it | {"prompt": prompt_text(None, PromptConfig(cfg.prompt.instruction, grounded=False))}
                             for it in items],
    }


def eval_settings(cfg, items: list[dict], scenes: list[dict]) -> dict:
    """What every model's results depend on besides the model: the evaluation settings (not which models, nor
    how many processes), the images with their prompts, and their ground truth."""
    from dataclasses import asdict

    ev = {k: v for k, v in asdict(cfg.eval).items() if k not in ("models", "workers")}
    if str(cfg.eval.vocabulary).lower().endswith(VOCABULARY_FILE_SUFFIXES):  # an edited file judges differently
        ev["vocabulary_file"] = file_fingerprint(cfg.eval.vocabulary)
    return json.loads(json.dumps({"eval": ev, "images": len(items), "truth": key(scenes),
                                  "items": key([(it["image_id"], it.get("file"), it["prompt"]) for it in items])},
                                 default=str))


def _model_results(out_dir: Path, name: str) -> list[Path]:
    return [out_dir / f"{name}.{kind}" for kind in ("captions.jsonl", "pope.jsonl", "robustness.jsonl",
                                                     "per_image.jsonl")]


def _eval_job(cfg, kind: str, path: str, name: str, items, scenes, out_dir: Path, rob, val_pairs,
              image_root) -> tuple:
    """One pool job: a part of a model's evaluation (eval.run.MODEL_PARTS) or, kind "preference", the model's
    log-probs of the held-out pairs."""
    from ..embedded import ensure_clip
    from .preference import pair_logps_table
    from .run import evaluate_part

    if kind == "preference":
        return pair_logps_table(path, val_pairs, image_root)
    clip = ensure_clip(cfg, progress=False) if kind == "captions" else None
    return evaluate_part(path, name, kind, items, scenes, cfg.eval, device=cfg.vlm.device, clip=clip, robustness=rob)


def evaluate_models(cfg, run: RunFolder, models: dict[str, str], items: list[dict], scenes: list[dict],
                    out_dir: Path, val_pairs: list[dict], image_root: Path, progress: bool = True) -> dict:
    """Every metric for every model; preference metrics use the first model as the reference."""
    from ..embedded import clip_model_name, ensure_clip
    from ..parallel import auto_workers, run_parallel
    from .preference import pair_logps_table, preference_metrics
    from .run import assemble, cached_result, evaluate_model, model_parts

    rob = robustness_inputs(cfg, run, items, scenes) if cfg.eval.robustness else None
    # Cached results count only for the same model content, settings and images (never by the model's name).
    common = eval_settings(cfg, items, scenes) | {"device": cfg.vlm.device,
                                                  "robustness": key(rob) if rob is not None else None}
    settings = {name: common | {"model": model_fingerprint(path)} for name, path in models.items()}
    if is_main():  # under a launcher the main process alone removes and writes results; the others wait
        for name in models:
            drop_if_other_settings(out_dir / f"{name}.metrics.json", settings[name],
                                   also=_model_results(out_dir, name))
    wait_for_everyone()
    results = {name: cached_result(out_dir, name, path) for name, path in models.items()}
    todo = [name for name in models if results[name] is None]
    parts = model_parts(cfg.eval)
    # Under a launcher the launched processes share each model's generation (eval.run.generate_all), one model
    # after the other; otherwise the parts of every model (and their held-out pair log-probs) side by side in a
    # pool of 1-thread processes.
    jobs = [(kind, name) for name in todo for kind in parts] + [("preference", n) for n in models if val_pairs]
    workers = 1 if launched() else auto_workers(cfg.eval.workers, cfg.vlm.device, jobs=len(jobs), cores=cfg.threads)
    tables = {}
    if workers > 1:
        if todo:
            clip_model_name(cfg, progress)  # trained once here (cached) before the workers load it
        done = run_parallel(_eval_job, [(cfg, kind, models[name], name, items, scenes, out_dir, rob, val_pairs,
                                         image_root) for kind, name in jobs],
                            workers=workers, threads=1, desc="evaluate models" if progress else None)
        by_job = dict(zip(jobs, done))
        for name in todo:
            results[name] = assemble(models[name], name, {kind: by_job[(kind, name)] for kind in parts}, cfg.eval,
                                     out_dir)
        tables = {name: by_job[("preference", name)] for name in models if val_pairs}
    else:
        if todo:
            with main_first():  # the main process trains (or finds) the embedded CLIP, the others then reuse it
                clip = ensure_clip(cfg, progress)
        for name in todo:
            results[name] = evaluate_model(models[name], name, items, scenes, cfg.eval, out_dir, progress=progress,
                                           device=cfg.vlm.device, clip=clip, robustness=rob)
        if val_pairs:
            tables = {name: pair_logps_table(path, val_pairs, image_root) for name, path in models.items()}
    if is_main():
        for name in models:
            record_settings(out_dir / f"{name}.metrics.json", settings[name])
    if val_pairs:
        ref = tables[next(iter(models))]
        for name in models:
            pm = preference_metrics(tables[name], ref, cfg.train.loss.beta)
            results[name]["pref_accuracy"] = pm["pref_accuracy"]
            results[name]["reward_margin"] = pm.get("reward_margin")
    return results


def run(cfg, run: RunFolder, *, progress: bool = True) -> dict:
    """`vlm-dpo eval`: any models (eval.models, default the embedded SFT model) on annotated images -> report."""
    from .. import report
    from ..embedded import ensure_vlm

    with main_first():  # the main process builds (or finds) the embedded VLM, the others then reuse it
        models = dict(cfg.eval.models) or {"sft": ensure_vlm(cfg, progress)["model"]}
    items, scenes = eval_items(cfg, run)
    summary = merged_summary(run, eval_settings(cfg, items, scenes), {})  # refuses before any work
    results = evaluate_models(cfg, run, models, items, scenes, run.eval, [], Path("."), progress)
    summary = merged_summary(run, eval_settings(cfg, items, scenes), results)
    if is_main():  # under a launcher every process has the results; the main one writes metrics and report
        write_text_atomic(run.metrics, json.dumps(summary, indent=1, default=str))
        report.run(cfg, run, summary, items=items, scenes=scenes, pair_stats=summary.get("pairs"),
                   curves_from=report.training_curves(summary))  # a finished pipeline's rounds, if any
    return {"metrics": str(run.metrics), "report": str(run.report_index),
            "chair_i": {n: r["chair_i"] for n, r in results.items()}}


def change_dpo_vs_sft(results: dict) -> dict | None:
    """Relative change of the headline metrics from the SFT model to the DPO model (None without both)."""
    if "sft" not in results or "dpo" not in results:
        return None
    sft_m, dpo_m = results["sft"], results["dpo"]
    rel = lambda a, b: (a - b) / b if b else None  # noqa: E731
    return {"chair_i_relative": rel(dpo_m["chair_i"], sft_m["chair_i"]),
            "recall_relative": rel(dpo_m["recall"], sft_m["recall"]),
            "mean_words_relative": rel(dpo_m["mean_words"], sft_m["mean_words"])}


def merged_summary(run: RunFolder, settings: dict, results: dict) -> dict:
    """metrics.json with `results` merged in: other models' results, curves and pair statistics of an earlier
    evaluation (a finished pipeline) are kept when they were made on the same images and settings; results on
    other images or settings are never mixed in (ValueError naming what changed)."""
    old = {}
    if run.metrics.exists():
        try:
            old = json.loads(run.metrics.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}  # a damaged file holds nothing worth keeping
    if old.get("models"):
        before = old.get("eval_settings")
        if before is None:  # written before settings were recorded: only the image count can be compared
            changed = ([] if old.get("held_out_images") == settings["images"]
                       else [f"images: {old.get('held_out_images')} -> {settings['images']}"])
        else:
            changed = setting_changes(before, settings)
        if changed:
            raise ValueError(f"{run.metrics} holds results of another evaluation ({'; '.join(changed[:6])}); "
                             "evaluate into another folder (--out) to keep both")
    models = dict(old.get("models") or {}) | results
    summary = old | {"models": models, "held_out_images": settings["images"], "eval_settings": settings}
    change = change_dpo_vs_sft(models)
    if change is not None:
        summary["change_dpo_vs_sft"] = change
    return summary
