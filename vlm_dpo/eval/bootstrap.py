"""Percentile bootstrap intervals that resample images (a group = one image's captions, probes or counts), so
that several samples of one image move together."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence


def percentile_ci(groups: Sequence, statistic: Callable[[list], float | None], n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> tuple[float, float] | None:
    """(lo, hi) of `statistic` over `n_boot` resamples of `groups` with replacement; None if it never exists."""
    rng = random.Random(seed)
    values = []
    for _ in range(n_boot):
        v = statistic([groups[rng.randrange(len(groups))] for _ in groups])
        if v is not None:
            values.append(v)
    if not values:
        return None
    values.sort()
    return (values[int(alpha / 2 * (len(values) - 1))], values[int((1 - alpha / 2) * (len(values) - 1))])
