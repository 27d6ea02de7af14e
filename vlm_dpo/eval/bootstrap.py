"""Percentile bootstrap intervals that resample images (a group = one image's captions, probes or counts), so
that several samples of one image move together."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence


def percentile_ci(groups: Sequence, statistic: Callable[[list], float | None], n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> tuple[float, float] | None:
    """(lo, hi) of `statistic` over `n_boot` resamples of `groups` with replacement; None if it never exists."""
    return percentile_cis(groups, lambda pick: {"v": statistic(pick)}, ("v",), n_boot, seed, alpha)["v"]


def percentile_cis(groups: Sequence, statistics: Callable[[list], Mapping[str, float | None]], keys: Sequence[str],
                   n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, tuple[float, float] | None]:
    """percentile_ci of each of `keys` of one dict-valued `statistics`, computed once per resample: the same
    resamples (one seeded stream) and so the same intervals as one percentile_ci per key, at one pass's cost
    (an `aggregate` of all caption metrics costs what one of them does)."""
    rng = random.Random(seed)
    values: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n_boot):
        stats = statistics([groups[rng.randrange(len(groups))] for _ in groups])
        for k in keys:
            if stats[k] is not None:
                values[k].append(stats[k])
    return {k: _interval(v, alpha) for k, v in values.items()}


def _interval(values: list[float], alpha: float) -> tuple[float, float] | None:
    if not values:
        return None
    values.sort()
    return (values[int(alpha / 2 * (len(values) - 1))], values[int((1 - alpha / 2) * (len(values) - 1))])
