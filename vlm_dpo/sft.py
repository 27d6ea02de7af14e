"""Supervised fine-tuning of an image-text-to-text model on (image, prompt, target) examples.

Used to teach the embedded VLM the world and, in evaluation, for the rejection-sampling fine-tuning baseline
(SFT on chosen captions). A plain loop on purpose: a few hundred small steps where Trainer's machinery would
cost more than it saves. The loss is the mean negative log-likelihood of the completion tokens, computed as DPO
computes log-probs (train/logps.py: the LM head only at completion positions, never [batch, seq, vocab]
logits), on the model's device.

    loss = -(sum over completion tokens t of log p(y_t | image, prompt, y_<t)) / (number of completion tokens)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .schedule import lr_lambda
from .train.collate import encode
from .train.logps import completion_logps


@dataclass
class SFTExample:
    image: object  # PIL image
    prompt: str  # user text (the chat template is applied in encode)
    target: str


def run_sft(model, processor, batches: Callable[[int], list[SFTExample]], *, steps: int, lr: float,
            warmup_steps: int = 0, weight_decay: float = 0.0, max_grad_norm: float = 1.0, seed: int = 0,
            progress: bool = True, log: Callable[[dict], None] | None = None) -> list[dict]:
    """Train `model` in place for `steps` steps; `batches(step)` returns that step's examples.

    Returns the per-step log (loss, lr, seconds), also passed to `log` as it goes.
    """
    torch.manual_seed(seed)
    random.seed(seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    # warmup, then cosine decay to 0.1 of the peak
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total=steps, warmup=warmup_steps, floor=0.1))
    history = []
    bar = tqdm(range(steps), desc="sft", disable=not progress)
    model_type = getattr(model.config, "model_type", "")
    for step in bar:
        t0 = time.time()
        ex = batches(step)
        enc = encode(processor, [e.image for e in ex], [e.prompt for e in ex], [e.target for e in ex],
                     model_type=model_type)
        inputs = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in enc.inputs.items()}
        lp = completion_logps(model, inputs, enc.labels.to(model.device))
        loss = -lp.sum.sum() / lp.n_tokens.sum().clamp(min=1)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SFT step {step}: loss is {loss.item()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        rec = {"step": step, "loss": round(loss.item(), 5), "lr": sched.get_last_lr()[0], "sec": round(time.time() - t0, 3)}
        history.append(rec)
        if log:
            log(rec)
        bar.set_postfix(loss=f"{rec['loss']:.3f}")
    model.eval()
    return history
