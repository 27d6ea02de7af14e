"""Describe: batched caption sampling from any image-text-to-text model.

Per image: one greedy caption (optional) and N sampled ones (num_return_sequences, so the prompt and image
are encoded once for all N). Reproducible: batches are fixed chunks of the full image list and each is seeded
by its index, so a resumed run regenerates exactly what an uninterrupted one would.

Record written per image:
    {"image_id", "file", "prompt", "grounding", "greedy", "samples": [...], "generation": {...}, "model"}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checks import FieldValueError, at_least, fraction, positive
from .ground import PromptConfig, context_detections, grounding_text, prompt_text, render_prompt
from .images import DataError, image_items, open_image
from .keys import images_fingerprint, key, model_fingerprint
from .records import ResumableJsonl, read_jsonl, write_text_atomic
from .run import RunFolder, apply_threads
from .shards import batches, is_main, launched, local_device, main_first, write_sharded

BACKENDS = ("hf", "vllm")


@dataclass
class DescribeConfig:
    n_samples: int = 4  # sampled captions per image (num_return_sequences)
    greedy: bool = True  # also one greedy caption per image
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24
    batch_size: int = 32  # images per generate call
    seed: int = 0
    limit: int = 0  # 0 = every image of the split
    # Generation processes (1 torch thread each; small-model generation is per-op overhead, so two 1-thread
    # processes beat one 2-thread one). 0 = auto: one per CPU core up to 4 on CPU, 1 on an accelerator.
    workers: int = 0
    # hf: transformers' generate (any device). vllm: vLLM's engine on a CUDA GPU (`pip install vllm`), the same
    # records with other random draws (vlm_dpo.describe_vllm).
    backend: str = "hf"

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "max_new_tokens")
        at_least(self, 0, "n_samples", "limit", "workers")
        positive(self, "temperature")
        fraction(self, "top_p")
        if self.backend not in BACKENDS:
            raise FieldValueError("backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")


def generate_captions(model, processor, images, texts, *, max_new_tokens: int, do_sample: bool, n: int = 1,
                      temperature: float = 1.0, top_p: float = 1.0) -> list[list[str]]:
    """n captions per (image, user text), from one batched `generate` (num_return_sequences shares the
    prompt's encoding across the n samples). Used by describe and by evaluation alike."""
    prompts = [render_prompt(processor, t) for t in texts]
    tok = processor.tokenizer
    tok.padding_side = "left"  # the generated token must follow each prompt's last real token
    enc = processor(text=prompts, images=[[im] for im in images], padding=True, return_tensors="pt")
    enc = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in enc.items()}
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=n,
                  pad_token_id=tok.pad_token_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs)
    texts_out = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    texts_out = [t.strip() for t in texts_out]
    return [texts_out[i * n:(i + 1) * n] for i in range(len(images))]


def describe(model, processor, items: list[dict], cfg) -> list[dict]:
    """Captions for `items` (dicts with image_id, path, prompt, grounding); `cfg` is a DescribeConfig."""
    images = [open_image(it["path"]) for it in items]
    texts = [it["prompt"] for it in items]
    settings = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    greedy = (generate_captions(model, processor, images, texts, do_sample=False, n=1, **settings)
              if cfg.greedy else None)
    samples = (generate_captions(model, processor, images, texts, do_sample=True, n=cfg.n_samples, **settings)
               if cfg.n_samples > 0 else [[] for _ in items])
    return caption_records(items, greedy, samples, cfg, _model_id(model))


def caption_records(items: list[dict], greedy: list[list[str]] | None, samples: list[list[str]], cfg,
                    model_id: str) -> list[dict]:
    """The captions file's records (whichever backend generated the texts): greedy[i][0] and samples[i] of
    items[i]; greedy None when cfg.greedy is off."""
    gen = {k: v for k, v in asdict(cfg).items() if k in ("n_samples", "temperature", "top_p", "max_new_tokens", "seed")}
    return [{
        "image_id": it["image_id"], "file": it.get("file", str(it["path"])), "prompt": it["prompt"],
        "grounding": it.get("grounding"), "greedy": greedy[i][0] if greedy else None, "samples": samples[i],
        "generation": gen, "model": str(model_id),
    } for i, it in enumerate(items)]


def describe_settings(model_id: str, items: list[dict], cfg) -> dict:
    """What shapes a captions file: the model (by content), the images and prompts, and the generation settings
    (not `workers`: n processes write what one does). The backend counts only when it is not the default, so
    files written before the setting existed keep their settings."""
    gen = {k: v for k, v in asdict(cfg).items() if k != "workers" and not (k == "backend" and v == "hf")}
    return {"model": model_fingerprint(model_id), "generation": gen,
            "items": key([(str(it["image_id"]), str(it.get("file", "")), it["prompt"], it.get("grounding"))
                          for it in items]),
            "images": images_fingerprint(items)}


def _model_id(model) -> str:
    return str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))


def describe_to_jsonl(model, processor, items: list[dict], cfg, out_path: str | Path, progress: bool = True,
                      shard: tuple[int, int] = (0, 1), settings: dict | None = None) -> Path:
    """`describe` over all items into a resumable JSONL; finished batches are skipped on rerun.

    shard=(k, n) does only the batches whose index is k modulo n; every batch keeps the seed of its index in
    the full list, so n shards together write what one process would (vlm_dpo.shards).
    """
    out_path = Path(out_path)
    settings = settings or describe_settings(_model_id(model), items, cfg)
    with ResumableJsonl(out_path, key="image_id", settings=settings) as w:
        if w.finished:
            return out_path
        for bi, chunk in tqdm(batches(items, cfg.batch_size, shard), desc="describe", disable=not progress):
            if all(str(it["image_id"]) in w.done for it in chunk):
                continue
            torch.manual_seed(cfg.seed * 1_000_003 + bi)
            w.write_many(describe(model, processor, chunk, cfg))
    return out_path


def _describe_shard(model_path: str, items: list[dict], cfg, dtype: str, device: str, settings: dict | None,
                    out_path: Path, shard: tuple[int, int], progress: bool) -> str:
    """One shard in this process (a pool worker or a launched process): load the model, describe its batches."""
    from .models import load_model_and_processor

    model, processor = load_model_and_processor(model_path, dtype=dtype, device=local_device(device))
    model.eval()
    return str(describe_to_jsonl(model, processor, items, cfg, out_path, progress=progress, shard=shard,
                                 settings=settings))


def describe_parallel(model_path: str, items: list[dict], cfg, out_path: str | Path, *, workers: int,
                      dtype: str = "float32", device: str = "cpu", progress: bool = True) -> Path:
    """describe_to_jsonl split over `workers` 1-thread pool processes, or over the processes of a launcher
    (`accelerate launch`), then merged in item order by the main process (vlm_dpo.shards.write_sharded).

    Each shard is its own resumable file next to `out_path`, so an interrupted run redoes only unfinished
    batches; the merged file appears atomically once every shard is complete.
    """
    settings = describe_settings(model_path, items, cfg)
    return write_sharded(out_path, _describe_shard, (model_path, items, cfg, dtype, device, settings),
                         settings=settings, ids=[str(it["image_id"]) for it in items], batch_size=cfg.batch_size,
                         workers=workers, progress=progress)


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
        if not context_detections(rec["detections"], cfg.ground):
            counts["no_detections"] += 1  # documented: described with the "nothing detected" context
        g = grounding_text(rec["detections"], rec["width"], rec["height"], cfg.ground)
        path = paths.get(rec["image_id"]) or str((root or Path(".")) / rec["file"])
        items.append({"image_id": rec["image_id"], "file": rec["file"], "path": path, "grounding": g,
                      "prompt": prompt_text(g, PromptConfig(cfg.prompt.instruction, grounded=grounded))})
    if cfg.describe.limit:
        items = items[: cfg.describe.limit]
    return items, counts


def sampling_workers(cfg) -> int:
    """Processes that sample captions with the hf backend: under a launcher its processes are the workers (1 here);
    otherwise a pool of 1-thread processes (describe.workers, 0 = one per core of the run's budget)."""
    from .parallel import auto_workers

    return 1 if launched() else auto_workers(cfg.describe.workers, cfg.vlm.device, cores=cfg.threads)


def run(cfg, run: RunFolder, split: str | None = None, *, progress: bool = True, out_name: str | None = None,
        grounded: bool | None = None, model=None, processor=None) -> Path:
    """The describe stage: captions JSONL of one split (default data.split) from its detections (detected
    here first when missing). `model`/`processor` describe with an already loaded model in this process."""
    from . import detect
    from .embedded import ensure_vlm

    apply_threads(cfg)
    if cfg.describe.backend == "vllm":
        from .describe_vllm import require_vllm

        require_vllm()  # before any detection work: a missing package or GPU is one line, at once
    split = split or cfg.data.split
    # Always through the detect stage: it reuses its file only when the images and detector are unchanged.
    det_path = detect.run(cfg, run, split, progress=progress)
    items, counts = describe_items(cfg, split, det_path, grounded)
    if not items:
        raise DataError(f"{det_path}: no usable images to describe ({counts})")
    out_path = run.captions_dir / out_name if out_name else run.captions(split)
    if cfg.describe.backend == "vllm":
        from .describe_vllm import describe_vllm

        with main_first():
            model_path = ensure_vlm(cfg, progress)["model"]
        path = describe_vllm(model_path, items, cfg.describe, out_path, dtype=cfg.vlm.dtype, progress=progress)
    elif model is None:
        with main_first():  # the main process builds (or finds) the embedded VLM, the others then reuse it
            model_path = ensure_vlm(cfg, progress)["model"]
        path = describe_parallel(model_path, items, cfg.describe, out_path, workers=sampling_workers(cfg),
                                 dtype=cfg.vlm.dtype, device=cfg.vlm.device, progress=progress)
    else:
        model.eval()
        path = describe_to_jsonl(model, processor, items, cfg.describe, out_path, progress=progress)
    if is_main():
        write_text_atomic(path.with_suffix(".counts.json"), json.dumps(counts, indent=1))
    return path
