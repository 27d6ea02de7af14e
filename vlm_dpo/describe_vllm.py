"""`describe.backend=vllm`: the describe stage's captions from vLLM's engine, on a CUDA GPU.

The same records as the default backend (describe.caption_records: fields, prompts through the model's own chat
template, one greedy caption and n samples per image at the same temperature, top_p and max_new_tokens), written
to the same resumable file in fixed batches of the full list. What differs is the randomness: vLLM's sampler
draws other random numbers than transformers' `generate`, so sampled texts differ from the hf backend's (the
backend is part of the file's settings, so the two are never mixed). Each request is seeded by its image's
position, so a resumed run samples what an uninterrupted one would.

vLLM is not a dependency: it needs an NVIDIA GPU and its own CUDA build (`pip install vllm`). It runs as one
process that owns its GPUs (not under `accelerate launch`: vLLM sets up its own workers).
"""

from __future__ import annotations

from pathlib import Path

from .describe import caption_records, describe_settings
from .ground import render_prompt
from .images import open_image
from .records import ResumableJsonl
from .shards import batches, launched


def require_vllm():
    """The vllm module, or a one-line error saying what is missing (the package, a GPU, or a single process)."""
    try:
        import vllm
    except ImportError:
        raise ValueError("describe.backend=vllm needs the vllm package, which runs on NVIDIA GPUs only: "
                         "`pip install vllm` on a CUDA machine, or use describe.backend=hf") from None
    import torch

    if not torch.cuda.is_available():
        raise ValueError("describe.backend=vllm needs a CUDA GPU and none is visible; use describe.backend=hf")
    if launched():
        raise ValueError("describe.backend=vllm runs as one process that owns its GPUs: run `vlm-dpo describe` "
                         "without accelerate launch (or use describe.backend=hf under the launcher)")
    return vllm


def describe_vllm(model_path: str, items: list[dict], cfg, out_path: str | Path, *, dtype: str = "float32",
                  progress: bool = True) -> Path:
    """Captions of `items` (see describe.describe_items) with vLLM into the resumable JSONL `out_path`."""
    vllm = require_vllm()
    from transformers import AutoProcessor

    out_path = Path(out_path)
    processor = AutoProcessor.from_pretrained(model_path)
    llm = vllm.LLM(model=model_path, dtype=dtype, seed=cfg.seed, limit_mm_per_prompt={"image": 1})
    with ResumableJsonl(out_path, key="image_id", settings=describe_settings(model_path, items, cfg)) as w:
        if w.finished:
            return out_path
        for bi, chunk in batches(items, cfg.batch_size):
            if all(str(it["image_id"]) in w.done for it in chunk):
                continue
            requests = [{"prompt": render_prompt(processor, it["prompt"]),
                         "multi_modal_data": {"image": open_image(it["path"])}} for it in chunk]
            first = bi * cfg.batch_size  # the chunk's first position in the full list

            def texts(params) -> list[list[str]]:
                outs = llm.generate(requests, params, use_tqdm=progress)
                return [[c.text.strip() for c in o.outputs] for o in outs]

            greedy = texts(vllm.SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens)) if cfg.greedy else None
            samples = (texts([vllm.SamplingParams(n=cfg.n_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                                  max_tokens=cfg.max_new_tokens,
                                                  seed=cfg.seed * 1_000_003 + first + i) for i in range(len(chunk))])
                       if cfg.n_samples > 0 else [[] for _ in chunk])
            w.write_many(caption_records(chunk, greedy, samples, cfg, model_path))
    return out_path
