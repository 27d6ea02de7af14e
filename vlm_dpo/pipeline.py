"""The stages as library functions over one run folder, and the pipeline that chains them.

Run folder layout (`cfg.out`):
    config.yaml                       the resolved config of the last command
    detections/<split>.jsonl          detect: per image {image_id, file, width, height, detections[...]}
    captions/<split>.jsonl            describe: per image {prompt, grounding, greedy, samples[...], ...}
    summary.json                      pipeline: what was built and measured
Assets of the embedded world (world, detector, tiny VLM) live in the cache (see embedded.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import to_yaml
from .detect import detect_to_jsonl
from .ground import PromptConfig, grounding_text, prompt_text
from .records import read_jsonl, write_text_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DataError(ValueError):
    pass


def setup_run(cfg) -> Path:
    from .offline import configure_offline

    configure_offline(cfg.cache_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "config.yaml", to_yaml(cfg))
    return out


def image_items(cfg, split: str) -> list[dict]:
    """The images a stage works on: the user's folder (all of it) or one split of the embedded world."""
    if cfg.data.images:
        root = Path(cfg.data.images).resolve()
        if not root.is_dir():
            raise DataError(f"{root}: image folder not found")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        # rglob stays under root, but a symlink could point outside it: refuse those (no escaping the data root).
        files = [p for p in files if p.resolve().is_relative_to(root)]
        if not files:
            raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return [{"image_id": str(p.relative_to(root).with_suffix("")), "file": str(p.relative_to(root)),
                 "path": str(p)} for p in files]
    from .embedded import ensure_world
    from .world.export import load_annotations

    return load_annotations(ensure_world(cfg), split)


def detector_weights(cfg) -> str:
    if cfg.detector.model != "embedded":
        return cfg.detector.model
    from .embedded import ensure_detector, ensure_world

    return ensure_detector(cfg, ensure_world(cfg))["weights"]


def run_detect(cfg, split: str, progress: bool = True) -> Path:
    """Detections JSONL for one split (or the user's folder)."""
    out = setup_run(cfg)
    items = image_items(cfg, split)
    d = cfg.detector
    return detect_to_jsonl(items, detector_weights(cfg), out / "detections" / f"{split}.jsonl", progress=progress,
                           conf=d.conf, iou=d.iou, device=d.device, batch_size=d.batch_size, imgsz=d.imgsz,
                           skip_bad_images=cfg.data.skip_bad_images)


def vlm_path(cfg, progress: bool = True) -> str:
    from .embedded import ensure_vlm

    return ensure_vlm(cfg, progress=progress)["model"]


def describe_items(cfg, split: str, detections_path: Path, grounded: bool | None = None) -> tuple[list[dict], dict]:
    """Describe inputs from detection records: grounding text + prompt per image. Returns (items, counts)."""
    root = Path(cfg.data.images).resolve() if cfg.data.images else None
    paths = {it["image_id"]: it["path"] for it in image_items(cfg, split)}
    grounded = cfg.prompt.grounded if grounded is None else grounded
    items, counts = [], {"images": 0, "skipped_bad_image": 0, "no_detections": 0}
    for rec in read_jsonl(detections_path):
        counts["images"] += 1
        if rec.get("error"):
            counts["skipped_bad_image"] += 1
            continue
        if not [d for d in rec["detections"] if d["score"] >= cfg.ground.min_score]:
            counts["no_detections"] += 1  # documented: described with the "nothing detected" context
        g = grounding_text(rec["detections"], rec["width"], rec["height"], cfg.ground)
        path = paths.get(rec["image_id"]) or str((root or Path(".")) / rec["file"])
        items.append({"image_id": rec["image_id"], "file": rec["file"], "path": path, "grounding": g,
                      "prompt": prompt_text(g, PromptConfig(cfg.prompt.instruction, grounded=grounded))})
    if cfg.describe.limit:
        items = items[: cfg.describe.limit]
    return items, counts


def run_describe(cfg, split: str, progress: bool = True, out_name: str | None = None,
                 grounded: bool | None = None, model=None, processor=None) -> Path:
    """Captions JSONL for one split, from its detections (run_detect first, or it runs here)."""
    from .describe import describe_parallel, describe_to_jsonl
    from .models import load_model_and_processor
    from .parallel import auto_workers

    out = setup_run(cfg)
    det_path = out / "detections" / f"{split}.jsonl"
    if not det_path.exists():
        run_detect(cfg, split, progress=progress)
    items, counts = describe_items(cfg, split, det_path, grounded)
    if not items:
        raise DataError(f"{det_path}: no usable images to describe ({counts})")
    out_path = out / "captions" / (out_name or f"{split}.jsonl")
    workers = auto_workers(cfg.describe.workers, cfg.vlm.device)
    if model is None and workers > 1:
        path = describe_parallel(vlm_path(cfg, progress), items, cfg.describe, out_path, workers=workers,
                                 dtype=cfg.vlm.dtype, device=cfg.vlm.device, progress=progress)
    else:
        if model is None:
            model, processor = load_model_and_processor(vlm_path(cfg, progress), dtype=cfg.vlm.dtype,
                                                        device=cfg.vlm.device)
        model.eval()
        path = describe_to_jsonl(model, processor, items, cfg.describe, out_path, progress=progress)
    write_text_atomic(path.with_suffix(".counts.json"), json.dumps(counts, indent=1))
    return path


# ----------------------------------------------------------------------------------------------------------
# The whole pipeline
# ----------------------------------------------------------------------------------------------------------


class Stage:
    """A pipeline stage folder with a done-marker keyed by everything upstream: a rerun with the same key
    skips the stage, a changed key (config or inputs changed) reruns it and everything after it."""

    def __init__(self, out: Path, name: str, key: str):
        self.dir = out / name
        self.key = key
        self.marker = self.dir / ".done"

    @property
    def done(self) -> bool:
        return self.marker.exists() and self.marker.read_text() == self.key

    def reset_if_stale(self) -> "Stage":
        """Remove outputs finished under another key; keep unmarked (interrupted) ones so they resume."""
        if self.marker.exists() and self.marker.read_text() != self.key:
            import shutil

            shutil.rmtree(self.dir)
        return self

    def finish(self) -> None:
        write_text_atomic(self.marker, self.key)


def _key(*parts) -> str:
    import hashlib
    from dataclasses import asdict, is_dataclass

    norm = [asdict(p) if is_dataclass(p) else p for p in parts]
    return hashlib.sha256(json.dumps(norm, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rft_baseline(cfg, base_model: str, pairs_path: Path, image_root: Path, out_dir: Path, progress: bool) -> str:
    """Rejection-sampling fine-tuning: SFT of the base model on the training pairs' chosen captions."""
    import random as _random

    from .detect import open_image
    from .models import load_model_and_processor, save_model
    from .pairs.dataset import load_pairs, resolve_image
    from .records import write_jsonl_atomic
    from .sft import SFTExample, run_sft

    pairs = [p for p in load_pairs(pairs_path) if p["split"] == "train"]
    seen, examples = set(), []
    for p in pairs:
        k = (p["image"], p["prompt"], p["chosen"])
        if k not in seen:
            seen.add(k)
            examples.append(p)
    steps = cfg.rft.steps or cfg.train.max_steps
    bs = cfg.rft.batch_size or cfg.train.batch_size
    lr = cfg.rft.lr or cfg.train.lr
    model, processor = load_model_and_processor(base_model)
    rng = _random.Random(cfg.train.seed)
    order = []

    def batch(step: int):
        while len(order) < (step + 1) * bs:
            perm = list(range(len(examples)))
            rng.shuffle(perm)
            order.extend(perm)
        rows = [examples[i] for i in order[step * bs:(step + 1) * bs]]
        return [SFTExample(open_image(resolve_image(r["image"], image_root)), r["prompt"], r["chosen"]) for r in rows]

    history = run_sft(model, processor, batch, steps=steps, lr=lr, warmup_steps=cfg.train.warmup_steps,
                      seed=cfg.train.seed, progress=progress)
    save_model(model, processor, out_dir / "model")
    write_jsonl_atomic(out_dir / "sft_log.jsonl", history)
    return str(out_dir / "model")


def data_root(cfg) -> Path:
    """Where relative image paths live: the user's folder or the embedded world."""
    if cfg.data.images:
        return Path(cfg.data.images).resolve()
    from .embedded import ensure_world

    return ensure_world(cfg, progress=False)


def pairs_config(cfg, out: Path):
    """cfg.pairs with the run folder's defaults filled in (captions/detections of the train split)."""
    import copy

    pcfg = copy.deepcopy(cfg.pairs)
    pcfg.captions = pcfg.captions or str(out / "captions" / f"{cfg.data.split}.jsonl")
    pcfg.detections = pcfg.detections or str(out / "detections" / f"{cfg.data.split}.jsonl")
    pcfg.image_root = pcfg.image_root or str(data_root(cfg))
    return pcfg


def train_config(cfg, out: Path, base_model: str):
    """cfg.train with the run folder's defaults filled in."""
    import copy

    tcfg = copy.deepcopy(cfg.train)
    tcfg.model = tcfg.model or base_model
    tcfg.pairs = tcfg.pairs or str(out / "pairs" / "pairs.parquet")
    tcfg.image_root = tcfg.image_root or str(data_root(cfg))
    tcfg.output_dir = tcfg.output_dir or str(out / "dpo")
    return tcfg


def run_pairs(cfg, progress: bool = True) -> dict:
    """`vlm-dpo pairs`: mine + synthesise + import pairs into <out>/pairs."""
    from .pairs.stage import build_pairs

    out = setup_run(cfg)
    pcfg = pairs_config(cfg, out)
    if pcfg.captions and not Path(pcfg.captions).exists():
        run_describe(cfg, cfg.data.split, progress)
    return build_pairs(pcfg, out / "pairs", ground=cfg.ground, prompt=cfg.prompt, progress=progress)


def run_train(cfg, progress: bool = True) -> dict:
    """`vlm-dpo train`: DPO on the pairs (default <out>/pairs/pairs.parquet) from the base model."""
    from .train.loop import train_dpo

    out = setup_run(cfg)
    base = cfg.train.model or vlm_path(cfg, progress)
    return train_dpo(train_config(cfg, out, base), progress=progress)


def eval_items(cfg, out: Path) -> tuple[list[dict], list[dict]]:
    """(items with grounded prompts, ground-truth scenes) of the evaluation images: a world split, or the
    user's annotated images (eval.annotations + data.images)."""
    split = cfg.eval.split
    det_path = out / "detections" / f"{split}.jsonl"
    if not det_path.exists():
        run_detect(cfg, split, progress=False)
    items, _ = describe_items(cfg, split, det_path)
    if cfg.eval.annotations:
        truth = {str(r["image_id"]): r for r in read_jsonl(cfg.eval.annotations)}
        items = [it for it in items if it["image_id"] in truth]
        if not items:
            raise DataError(f"{cfg.eval.annotations}: no annotated image_id matches the images in {cfg.data.images}")
    else:
        from .embedded import ensure_world
        from .world.export import load_annotations

        truth = {s["image_id"]: s for s in load_annotations(ensure_world(cfg), split)}
    if cfg.eval.limit:
        items = items[: cfg.eval.limit]
    return items, [truth[it["image_id"]] for it in items]


def robustness_inputs(cfg, items: list[dict], scenes: list[dict]) -> dict:
    """Prompts for the see-don't-copy metrics: noisy contexts (deterministic, reported), the detector's own
    contexts with their natural errors, and prompts without context."""
    from .eval.grounding import context_errors, noisy_contexts
    from .judge import Vocabulary

    vocab = Vocabulary.world() if cfg.eval.vocabulary == "world" else Vocabulary.coco()
    noisy = noisy_contexts(scenes, list(vocab.classes), cfg.eval.noise_drop, cfg.eval.noise_add, cfg.eval.seed)
    noisy_items = []
    for it, sc, nz in zip(items, scenes, noisy):
        g = grounding_text(nz["detections"], sc.get("width", 128), sc.get("height", 128), cfg.ground)
        noisy_items.append(it | {"grounding": g, "prompt": prompt_text(g, PromptConfig(cfg.prompt.instruction))})
    dets = {r["image_id"]: r["detections"] for r in read_jsonl(Path(cfg.out) / "detections" / f"{cfg.eval.split}.jsonl")}
    return {
        "noisy_items": noisy_items,
        "noisy_errors": [{"injected": n["injected"], "dropped": n["dropped"]} for n in noisy],
        "natural_errors": [context_errors(dets.get(it["image_id"], []), sc["objects"], cfg.ground.min_score)
                           for it, sc in zip(items, scenes)],
        "ungrounded_items": [it | {"prompt": prompt_text(None, PromptConfig(cfg.prompt.instruction, grounded=False))}
                             for it in items],
    }


def _evaluate_in_worker(cfg, path: str, name: str, items, scenes, out_dir: Path, rob) -> dict:
    from .embedded import ensure_clip
    from .eval.run import evaluate_model

    return evaluate_model(path, name, items, scenes, cfg.eval, out_dir, progress=False, device=cfg.vlm.device,
                          clip=ensure_clip(cfg, progress=False), robustness=rob)


def evaluate_models(cfg, models: dict[str, str], items: list[dict], scenes: list[dict], out_dir: Path,
                    val_pairs: list[dict], image_root: Path, progress: bool = True) -> dict:
    """Every metric for every model; preference metrics use the first model as the reference."""
    from .eval.preference import pair_logps_table, preference_metrics
    from .eval.run import evaluate_model

    from .embedded import clip_model_name, ensure_clip
    from .parallel import auto_workers, run_parallel

    rob = robustness_inputs(cfg, items, scenes) if cfg.eval.robustness else None
    workers = auto_workers(cfg.eval.workers, cfg.vlm.device, jobs=len(models))
    if workers > 1:
        clip_model_name(cfg, progress)  # trained once here (cached) before the workers load it
        jobs = [(cfg, path, name, items, scenes, out_dir, rob) for name, path in models.items()]
        done = run_parallel(_evaluate_in_worker, jobs, workers=workers, threads=1,
                            desc="evaluate models" if progress else None)
        results = dict(zip(models, done))
    else:
        clip = ensure_clip(cfg, progress)
        results = {name: evaluate_model(path, name, items, scenes, cfg.eval, out_dir, progress=progress,
                                        device=cfg.vlm.device, clip=clip, robustness=rob)
                   for name, path in models.items()}
    if val_pairs:
        tables = {name: pair_logps_table(path, val_pairs, image_root) for name, path in models.items()}
        ref = tables[next(iter(models))]
        for name in models:
            pm = preference_metrics(tables[name], ref, cfg.train.loss.beta)
            results[name]["pref_accuracy"] = pm["pref_accuracy"]
            results[name]["reward_margin"] = pm.get("reward_margin")
    return results


def run_eval(cfg, progress: bool = True) -> dict:
    """`vlm-dpo eval`: any models (eval.models, default the embedded SFT model) on annotated images -> report."""
    from .report import write_report

    out = setup_run(cfg)
    models = dict(cfg.eval.models) or {"sft": vlm_path(cfg, progress)}
    items, scenes = eval_items(cfg, out)
    results = evaluate_models(cfg, models, items, scenes, out / "eval", [], Path("."), progress)
    summary = {"models": results, "held_out_images": len(items)}
    write_text_atomic(out / "metrics.json", json.dumps(summary, indent=1, default=str))
    captions = {name: {r["image_id"]: r["greedy"] for r in read_jsonl(out / "eval" / f"{name}.captions.jsonl")}
                for name in models}
    from .judge import Vocabulary

    vocab = Vocabulary.world() if cfg.eval.vocabulary == "world" else Vocabulary.coco()
    write_report(out, summary, scenes=scenes, captions=captions, items=items, pair_stats=None, curves=None,
                 vocab=vocab)
    return {"metrics": str(out / "metrics.json"), "report": str(out / "report" / "index.html"),
            "chair_i": {n: r["chair_i"] for n, r in results.items()}}


def _variant_no_context(pairs: list[dict], tcfg):
    """DPO without the context-robustness pairs (only mined + synthetic + human)."""
    return [p for p in pairs if p["source"] != "context"], tcfg


def _variant_mdpo(pairs: list[dict], tcfg):
    """The same pairs plus mDPO's image-conditional term (box-masked corruption) and its anchor."""
    tcfg.loss.weights = dict(tcfg.loss.loss_config().weights) | {"mdpo_image": 1.0, "mdpo_anchor": 1.0}
    tcfg.loss.mixture = ""
    return pairs, tcfg


# DPO variants the pipeline can train beside the main run (pipeline.variants), each evaluated as dpo_<name>.
VARIANTS = {"no_context": _variant_no_context, "mdpo": _variant_mdpo}


def train_variants(cfg, out: Path, tcfg, key: str, progress: bool) -> dict[str, str]:
    """Train each configured variant into <out>/variants/<name>/; returns name -> model path."""
    import copy

    from .pairs.dataset import load_pairs, save_pairs
    from .train.loop import train_dpo

    models = {}
    for name in cfg.variants:
        if name not in VARIANTS:
            raise ValueError(f"unknown pipeline variant {name!r}; known: {sorted(VARIANTS)}")
        vdir = out / "variants" / name
        stage = Stage(out / "variants", name, _key(key, name)).reset_if_stale()
        if not stage.done:
            pairs, vcfg = VARIANTS[name](load_pairs(tcfg.pairs), copy.deepcopy(tcfg))
            vdir.mkdir(parents=True, exist_ok=True)
            vcfg.pairs = str(save_pairs(pairs, vdir / "pairs.parquet"))
            vcfg.output_dir = str(vdir / "dpo")
            train_dpo(vcfg, progress=progress)
            stage.finish()
        models[f"dpo_{name}"] = str(vdir / "dpo" / "model")
    return models


def _detector_then_clip(cfg, world_root: Path, side_job: bool) -> dict:
    """The detector; as the pipeline's side job (a 1-thread process), also the CLIPScore model that the
    evaluation stage will load from the cache."""
    from .embedded import clip_model_name, ensure_detector

    detector = ensure_detector(cfg, world_root)
    if side_job:
        clip_model_name(cfg, progress=False)
    return detector


def run_pipeline(cfg, progress: bool = True) -> dict:
    """world -> detector -> detect -> VLM SFT -> describe -> pairs -> DPO (+ RFT baseline) -> eval -> report."""
    import time

    from .embedded import detector_needs_training, ensure_vlm, ensure_world, vlm_is_cached
    from .pairs.dataset import load_pairs
    from .parallel import Background
    from .pairs.stage import build_pairs
    from .report import plot_curves, write_report
    from .train.loop import train_dpo

    out = setup_run(cfg)
    timing: dict[str, float] = {}
    t = time.time()

    def lap(name: str) -> None:
        nonlocal t
        timing[name] = round(time.time() - t, 1)
        t = time.time()

    world_root = ensure_world(cfg, progress)
    lap("world")
    # The detector (then the CLIPScore model) trains in its own 1-thread process while this one builds the VLM,
    # when both are to be built; otherwise each runs here when needed.
    both = cfg.concurrent_stages and detector_needs_training(cfg, world_root) and not vlm_is_cached(cfg)
    # Each builds with one thread either way (embedded.BUILD_THREADS), so the results do not depend on this.
    with Background(_detector_then_clip, (cfg, world_root, both), threads=1, enabled=both) as det_job:
        vlm = ensure_vlm(cfg, progress)
        lap("vlm_sft")
        detector = det_job.result()
    lap("detector")  # what was left of it after the VLM: its wait
    key = _key(cfg.world, cfg.detector, cfg.data)
    detect_stage = Stage(out, "detections", key).reset_if_stale()
    run_detect(cfg, "train", progress)
    run_detect(cfg, cfg.eval.split, progress)
    detect_stage.finish()
    lap("detect")
    key = _key(key, cfg.ground, cfg.prompt, cfg.vlm, cfg.describe)
    describe_stage = Stage(out, "captions", key).reset_if_stale()
    run_describe(cfg, "train", progress)
    describe_stage.finish()
    lap("describe")

    pair_stats = build_pairs(pairs_config(cfg, out), out / "pairs", ground=cfg.ground, prompt=cfg.prompt,
                             progress=progress)
    lap("pairs")

    tcfg = train_config(cfg, out, vlm["model"])
    key = _key(key, pair_stats["key"], tcfg)
    dpo_stage = Stage(out, "dpo", key).reset_if_stale()  # unmarked = interrupted: train_dpo resumes
    if dpo_stage.done:
        train_summary = json.loads((dpo_stage.dir / "summary.json").read_text())
    else:
        train_summary = train_dpo(tcfg, progress=progress)
        dpo_stage.finish()
    lap("dpo")

    models = {"sft": vlm["model"], "dpo": train_summary["model"]}
    if cfg.rft.enabled:
        rft_stage = Stage(out, "rft", _key(key, cfg.rft)).reset_if_stale()
        if not rft_stage.done:
            _rft_baseline(cfg, vlm["model"], Path(tcfg.pairs), world_root, rft_stage.dir, progress)
            rft_stage.finish()
        models["rft"] = str(rft_stage.dir / "model")
    lap("rft")
    models |= train_variants(cfg, out, tcfg, key, progress)
    lap("variants")

    # Held-out evaluation: the pipeline's own grounded prompts from the detector on test scenes, truth from
    # the world's annotations (not from the detector that judged the training pairs).
    eval_stage = Stage(out, "eval", _key(key, cfg.rft, cfg.eval, cfg.variants)).reset_if_stale()
    items, scenes = eval_items(cfg, out)
    val_pairs = [p for p in load_pairs(tcfg.pairs) if p["split"] == "val"]
    results = evaluate_models(cfg, models, items, scenes, eval_stage.dir, val_pairs, world_root, progress)
    eval_stage.finish()
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
        "train": train_summary, "timing_s": timing, "held_out_images": len(items),
    }
    curves = plot_curves(Path(tcfg.output_dir) / "metrics.jsonl", out / "report" / "curves.png")
    captions = {}
    from .records import read_jsonl as _read

    for name in models:
        captions[name] = {r["image_id"]: r["greedy"] for r in _read(eval_stage.dir / f"{name}.captions.jsonl")}
    write_report(out, summary, scenes=scenes, captions=captions, items=items, pair_stats=summary["pairs"],
                 curves=curves)
    lap("report")
    summary["timing_s"] = timing
    write_text_atomic(out / "metrics.json", json.dumps(summary, indent=1, default=str))
    return {"metrics": str(out / "metrics.json"), "report": str(out / "report" / "index.html"),
            "chair_i": {n: round(r["chair_i"], 4) for n, r in results.items()},
            "recall": {n: round(r["recall"], 4) for n, r in results.items()},
            "mean_words": {n: round(r["mean_words"], 3) for n, r in results.items()},
            "timing_s": timing}
