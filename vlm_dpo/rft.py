"""The rejection-sampling fine-tuning (RFT) baseline: SFT of the base model on the training pairs' chosen
captions, the same steps, batch and learning rate as DPO unless set. Writes <run>/rft/model, sft_log.jsonl."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .checks import at_least
from .images import open_image, resolve_image
from .run import RunFolder


@dataclass
class RFTConfig:
    """The rejection-sampling fine-tuning baseline: SFT of the base model on the chosen captions."""
    enabled: bool = True
    steps: int = 0  # 0 = as many as DPO (train.max_steps)
    lr: float = 0.0  # 0 = DPO's learning rate
    batch_size: int = 0  # 0 = DPO's batch size (pairs -> chosen examples)

    def __post_init__(self) -> None:
        at_least(self, 0, "steps", "lr", "batch_size")


def rft_baseline(cfg, base_model: str, pairs_path: Path, image_root: Path, out_dir: Path, progress: bool) -> str:
    """SFT of `base_model` on the chosen captions of the train split of `pairs_path`; returns the model path."""
    from .models import load_model_and_processor, save_model
    from .pairs.dataset import load_pairs
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
    rng = random.Random(cfg.train.seed)
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


def run(cfg, run: RunFolder, base_model: str, *, progress: bool = True) -> str:
    """The RFT stage on the run's pairs (as DPO reads them) into <run>/rft; returns the model path."""
    from .train.stage import train_config

    tcfg = train_config(cfg, run, base_model)
    return rft_baseline(cfg, base_model, Path(tcfg.pairs), Path(tcfg.image_root), run.rft, progress)
