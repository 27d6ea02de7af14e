#!/usr/bin/env python
"""Parts of scripts/gpu_check.sh that train through the recipe, each printing one JSON line (last stdout line) with
`"ok": true|false`:

    python scripts/gpu_families.py families --device cuda   # one bf16 DPO step per family (tests/tiny_models.py
                                                            # ALL_FAMILIES) through vlm_dpo.train.recipe.train_dpo
    python scripts/gpu_families.py autocast --device cuda   # under mixed_precision=bf16 an nn.Linear computes in
                                                            # bf16 while the parameters stay fp32
    accelerate launch --config_file scripts/accelerate/deepspeed_zero3.yaml --num_processes 1 \
        scripts/gpu_families.py engine --device cuda        # two DPO steps under that engine, consolidated save

`--device cpu` dry-runs the same code on CPU (accelerate's CPU autocast supports bf16). The device is not a
TrainConfig field: accelerate places the model on CUDA when one is visible, so `--device cpu` hides CUDA and
`--device cuda` checks that the parameters really ended up there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(device: str) -> None:
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("ACCELERATE_DISABLE_RICH", "1")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def make_pairs(root: Path, n: int = 6, size: int = 64, seed: int = 0) -> Path:
    """World scenes; chosen = the reference caption, rejected = a systematically wrong one (as the tests do)."""
    from vlm_dpo.pairs.dataset import make_pair, save_pairs
    from vlm_dpo.world.captions import CorruptionRates, corrupted_caption, reference_caption
    from vlm_dpo.world.scenes import render_scene, sample_scene

    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pairs, i = [], 0
    while len(pairs) < n:
        s = sample_scene(seed, "train", i, image_size=size)
        i += 1
        d = s.to_dict()
        good = reference_caption(d["objects"], size)
        bad, applied = corrupted_caption(d["objects"], size, rng, CorruptionRates(cooccur=1.0, count=1.0, vague=0.3))
        if not applied or bad == good:
            continue
        rel = f"images/{s.image_id}.png"
        render_scene(s).save(root / rel)
        pairs.append(make_pair(image_id=s.image_id, image=rel, prompt="Describe the objects on the table.",
                               chosen=good, rejected=bad, source="synthetic", kind=applied[0],
                               boxes=[o["box"] for o in d["objects"]]))
    save_pairs(pairs, root / "pairs.parquet")
    return root / "pairs.parquet"


def _device_of(model) -> str:
    return next(model.parameters()).device.type


def families(args, work: Path) -> dict:
    """One bf16 mixed-precision DPO step per family through train_dpo; loss finite, policy changed, on the device."""
    import torch

    from tests.tiny_models import ALL_FAMILIES
    from vlm_dpo.models import save_model
    from vlm_dpo.train import recipe as recipe_mod
    from vlm_dpo.train.recipe import TrainConfig, train_dpo

    pairs = make_pairs(work / "pairs")
    names = sorted(ALL_FAMILIES) if not args.only else args.only.split(",")
    seen_device = {}
    real_setup = recipe_mod.DPORecipe.setup

    def setup(self):  # record where accelerate put the policy (train_dpo builds the recipe itself)
        out = real_setup(self)
        seen_device["policy"] = _device_of(self.policy)
        seen_device["master_dtype"] = str(next(self.policy.parameters()).dtype)
        return out

    recipe_mod.DPORecipe.setup = setup
    results = {}
    for name in names:
        t = time.time()
        try:
            model, processor = ALL_FAMILIES[name].__wrapped__(0)
            path = save_model(model, processor, work / "models" / name)
            before = {k: v.detach().clone() for k, v in model.state_dict().items()}
            cfg = TrainConfig(model=str(path), pairs=str(pairs), image_root=str(pairs.parent),
                              output_dir=str(work / "dpo" / name), batch_size=2, max_steps=1, warmup_steps=0,
                              lr=1e-2, eval_every=0, save_every=0, reference="precomputed", mixed_precision="bf16")
            seen_device.clear()
            summary = train_dpo(cfg, progress=False)
            loss = summary["last"]["loss"]
            from transformers import AutoModelForImageTextToText

            after = AutoModelForImageTextToText.from_pretrained(summary["model"]).state_dict()
            changed = sum(1 for k in before if k in after and not torch.equal(before[k], after[k].to(before[k].dtype)))
            ok = (math.isfinite(loss) and changed > 0 and seen_device.get("policy") == args.device
                  and seen_device.get("master_dtype") == "torch.float32")
            results[name] = {"ok": ok, "loss": loss, "tensors_changed": changed, **seen_device,
                             "s": round(time.time() - t, 2)}
        except Exception as e:  # one family's failure is reported, the others still run
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:],
                             "s": round(time.time() - t, 2)}
        print(f"[gpu_families] {name}: {'ok' if results[name]['ok'] else 'FAILED'} {results[name]}",
              file=sys.stderr, flush=True)
    recipe_mod.DPORecipe.setup = real_setup
    return {"part": "families", "ok": all(r["ok"] for r in results.values()), "families": results}


def engine(args, work: Path) -> dict:
    """Two DPO steps of the tiny Idefics3 under the engine `accelerate launch` set up (DeepSpeed ZeRO-2/3, FSDP2):
    precomputed reference, a checkpoint, the consolidated model saved, loadable and changed."""
    import torch
    from transformers import AutoModelForImageTextToText

    from tests.tiny_models import ALL_FAMILIES
    from vlm_dpo.models import save_model
    from vlm_dpo.train import recipe as recipe_mod
    from vlm_dpo.train.recipe import TrainConfig

    pairs = make_pairs(work / "pairs")
    model, processor = ALL_FAMILIES["idefics3"].__wrapped__(0)
    path = save_model(model, processor, work / "model")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(model=str(path), pairs=str(pairs), image_root=str(pairs.parent), output_dir=str(work / "dpo"),
                      batch_size=2, max_steps=2, warmup_steps=0, lr=1e-2, eval_every=0, save_every=1,
                      reference="precomputed")
    recipe = recipe_mod.DPORecipe(cfg, progress=False)
    summary = recipe.run()
    kind = recipe.accelerator.distributed_type.value
    after = AutoModelForImageTextToText.from_pretrained(summary["model"]).state_dict()
    changed = sum(1 for k in before if k in after and not torch.equal(before[k], after[k].to(before[k].dtype)))
    loss = summary["last"]["loss"]
    return {"part": "engine", "ok": math.isfinite(loss) and changed > 0, "distributed_type": kind, "loss": loss,
            "tensors_changed": changed, "checkpoints": sorted(p.name for p in (work / "dpo" / "checkpoints").iterdir())}


def autocast(args, work: Path) -> dict:
    """tests/train/test_recipe.py::test_bf16_mixed_precision_really_autocasts on this device: a forward hook on
    every nn.Linear of the policy sees bf16 outputs in the training step, the master weights stay fp32."""
    import torch

    from vlm_dpo.models import TinyVLMSpec, build_tiny_idefics3, save_model
    from vlm_dpo.train.recipe import DPORecipe, TrainConfig
    from vlm_dpo.world.captions import reference_caption
    from vlm_dpo.world.scenes import sample_scene

    pairs = make_pairs(work / "pairs")
    corpus = [reference_caption(sample_scene(0, "sft", i).to_dict()["objects"], 128) for i in range(60)]
    corpus += ["Describe the objects on the table.", "some objects on a table."]
    spec = TinyVLMSpec(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2, text_width=64,
                       text_layers=2, text_heads=2, text_kv_heads=1, text_mlp=128, vocab_size=350)
    model, processor = build_tiny_idefics3(corpus, spec, seed=0)
    path = save_model(model, processor, work / "policy")
    cfg = TrainConfig(model=str(path), pairs=str(pairs), image_root=str(pairs.parent), output_dir=str(work / "dpo"),
                      batch_size=2, max_steps=1, warmup_steps=0, eval_every=0, save_every=0, reference="precomputed",
                      mixed_precision="bf16")
    recipe = DPORecipe(cfg, progress=False).setup()
    policy = recipe.policy
    seen = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(str(o.dtype)))
             for m in policy.modules() if isinstance(m, torch.nn.Linear)]
    rec = recipe.train_step(0)
    for h in hooks:
        h.remove()
    param_dtypes = sorted({str(p.dtype) for p in policy.parameters()})
    device = _device_of(policy)
    ok = (seen == {"torch.bfloat16"} and param_dtypes == ["torch.float32"] and device == args.device
          and math.isfinite(rec["loss"]))
    return {"part": "autocast", "ok": ok, "linear_output_dtypes": sorted(seen), "param_dtypes": param_dtypes,
            "policy_device": device, "loss": rec["loss"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=("families", "autocast", "engine"))
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--only", default="", help="families: comma-separated names (default: all of ALL_FAMILIES)")
    ap.add_argument("--workdir", default="", help="default: a temporary folder")
    args = ap.parse_args(argv)
    _env(args.device)
    import torch

    t = time.time()
    if args.device == "cuda" and not torch.cuda.is_available():
        out = {"part": args.part, "ok": False, "error": "no CUDA device (torch.cuda.is_available() is False)"}
    else:
        with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
            work = Path(args.workdir or tmp)
            work.mkdir(parents=True, exist_ok=True)
            try:
                out = {"families": families, "autocast": autocast, "engine": engine}[args.part](args, work)
            except Exception as e:
                out = {"part": args.part, "ok": False, "error": f"{type(e).__name__}: {e}",
                       "trace": traceback.format_exc()[-3000:]}
    out |= {"device": args.device, "torch": torch.__version__, "s": round(time.time() - t, 2),
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else None}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
