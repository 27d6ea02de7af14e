"""The one learning-rate schedule: linear warmup, then cosine / linear decay to a floor, or constant.

    factor(step) = (step + 1) / warmup                                    for step < warmup
                 = floor + (1 - floor) * 0.5 * (1 + cos(pi * t))          cosine
                 = floor + (1 - floor) * (1 - t)                          linear
                 = 1                                                      constant
    with t = min(1, (step - warmup) / max(1, total - warmup)).

Written here rather than taken from `transformers.get_scheduler` because its warmup starts at 0 (step / warmup)
and its cosine decays to 0, while the embedded assets were trained with (step + 1) / warmup and a floor (SFT 0.1,
vision pretraining 0.05): changing either would change every cached asset and measured result.
"""

from __future__ import annotations

import math
from functools import partial

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, *, total: int, warmup: int, schedule: str = "cosine", floor: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 1.0 - t if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * t))
    return floor + (1.0 - floor) * decay


def lr_lambda(*, total: int, warmup: int, schedule: str = "cosine", floor: float = 0.0):
    """`lr_factor` as the function `torch.optim.lr_scheduler.LambdaLR` takes."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    return partial(lr_factor, total=total, warmup=warmup, schedule=schedule, floor=floor)
