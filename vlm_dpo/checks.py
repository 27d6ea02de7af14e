"""Range checks for the config dataclasses: each stage's config validates itself in `__post_init__`, so an
obviously wrong number (a batch of -4 images, a learning rate of 0, a fraction of 1.5) is refused when the
config is loaded, not after an hour of work or, worse, silently.

    class DescribeConfig:
        def __post_init__(self):
            at_least(self, 1, "batch_size")
            fraction(self, "top_p")

`FieldValueError` names the field; `config.load_config` turns it into a ConfigError with the full key
(`describe.batch_size must be >= 1, got -1`).
"""

from __future__ import annotations

import math


class FieldValueError(ValueError):
    """A config field holds a value outside its range; `field` is its name within its dataclass."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field = field
        self.detail = message


def _value(obj, name: str):
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        raise FieldValueError(name, f"must be a number, got {v!r}")
    return v


def at_least(obj, low: float, *names: str) -> None:
    for name in names:
        v = _value(obj, name)
        if v < low:
            raise FieldValueError(name, f"must be >= {low}, got {v!r}")


def positive(obj, *names: str) -> None:
    for name in names:
        v = _value(obj, name)
        if not v > 0 or math.isinf(v):
            raise FieldValueError(name, f"must be a positive finite number, got {v!r}")


def fraction(obj, *names: str) -> None:
    for name in names:
        v = _value(obj, name)
        if not 0.0 <= v <= 1.0:
            raise FieldValueError(name, f"must lie in [0, 1], got {v!r}")


def one_of(obj, name: str, allowed: tuple) -> None:
    v = getattr(obj, name)
    if v not in allowed:
        raise FieldValueError(name, f"must be one of {list(allowed)}, got {v!r}")
