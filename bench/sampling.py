#!/usr/bin/env python
"""Caption sampling throughput: N samples per image in one batched `generate` (num_return_sequences=N, the path
`vlm_dpo.describe` takes) vs one `generate` call per sample.

    python bench/sampling.py --size small --images 4 --n 8 --max-new-tokens 24
    python bench/sampling.py --size tiny --images 2 --n 3 --max-new-tokens 8 --repeats 1   # the smoke test

Both arms call `vlm_dpo.describe.generate_captions` (processor, left padding, sampling at temperature/top_p) on the same
random-weight SmolVLM-architecture model as bench/dpo_step.py, with `min_new_tokens = max_new_tokens` so every
sample has the same length whatever the random weights emit. Warm-up once per arm, then `--repeats` alternations
A B A B; the median time per arm is reported. A forward hook on the vision tower counts the images it encodes:
transformers 5's `generate` encodes each image once (`mm_encoder_outputs`) and repeats the image embeddings for the
N sequences, so the batched arm shares the processor call and the vision pass; the text prefill over the prompt
still runs once per sequence (input ids are repeated, not a shared KV prefix).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("tiny", "small", "256m"), default="small")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--images", type=int, default=4, help="images (prompts) per batch")
    ap.add_argument("--n", type=int, default=8, help="samples per image")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=3, help="timed A B alternations")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all CPUs of this process)")
    args = ap.parse_args(argv)
    if args.threads <= 0:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import dpo_step as common

    common._setup_env(args.threads)
    import torch

    common._quiet()
    torch.set_num_threads(args.threads)

    from vlm_dpo.describe import generate_captions
    from vlm_dpo.world.scenes import render_scene, sample_scene

    model, processor, spec = common.build_model(args.size)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = model.to(device=args.device, dtype=dtype).eval()
    processor.tokenizer.padding_side = "left"
    model.generation_config.min_new_tokens = args.max_new_tokens  # equal work per sample in both arms
    scenes = [sample_scene(5, "test", i, image_size=spec.image_size, min_objects=2) for i in range(args.images)]
    images = [render_scene(s) for s in scenes]
    texts = ["Describe the objects on the table."] * args.images
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)

    encoded = {"n": 0}

    def count(_module, inputs, kwargs):
        pv = kwargs.get("pixel_values", inputs[0] if inputs else None)
        encoded["n"] += int(pv.shape[0]) if pv is not None else 0

    model.model.vision_model.register_forward_pre_hook(count, with_kwargs=True)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def batched():
        return generate_captions(model, processor, images, texts, do_sample=True, n=args.n, **gen)

    def one_at_a_time():
        return [[generate_captions(model, processor, [im], [t], do_sample=True, n=1, **gen)[0][0] for _ in range(args.n)]
                for im, t in zip(images, texts)]

    arms = {"batched": batched, "sequential": one_at_a_time}
    times = {k: [] for k in arms}
    vision = {}
    torch.manual_seed(0)
    for name, fn in arms.items():  # warm-up
        encoded["n"] = 0
        out = fn()
        vision[name] = encoded["n"]
        assert len(out) == args.images and all(len(o) == args.n for o in out), name
    for _ in range(args.repeats):
        for name, fn in arms.items():  # A B A B
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])

    samples = args.images * args.n
    b, s = samples / median(times["batched"]), samples / median(times["sequential"])
    out = {
        "batched_samples_per_s": round(b, 3), "sequential_samples_per_s": round(s, 3), "ratio": round(b / s, 3),
        "images": args.images, "n": args.n, "samples": samples, "max_new_tokens": args.max_new_tokens,
        "batched_s_all": [round(x, 4) for x in times["batched"]],
        "sequential_s_all": [round(x, 4) for x in times["sequential"]],
        "vision_images_encoded": vision,  # per run of each arm
        "image_tokens_per_image": spec.image_seq_len, "size": args.size, "device": args.device, "dtype": args.dtype,
        "params": sum(p.numel() for p in model.parameters()), "threads": args.threads,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
