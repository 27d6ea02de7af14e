"""The one learning-rate schedule, with hand-worked values."""

import math

import pytest

from vlm_dpo.schedule import lr_factor, lr_lambda


def test_warmup_then_cosine_to_zero():
    f = lr_lambda(total=12, warmup=2)
    assert [f(0), f(1)] == [0.5, 1.0]  # (step + 1) / warmup
    assert f(2) == 1.0  # t = 0
    assert f(7) == pytest.approx(0.5)  # t = 0.5: half way down
    assert f(12) == pytest.approx(0.0, abs=1e-12) and f(50) == f(12)  # t clamps at 1


def test_floor_linear_constant():
    assert lr_factor(7, total=12, warmup=2, floor=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(12, total=12, warmup=2, floor=0.05) == pytest.approx(0.05)
    assert lr_factor(7, total=12, warmup=2, schedule="linear") == pytest.approx(0.5)
    assert lr_factor(9, total=12, warmup=0, schedule="constant") == 1.0
    # cosine at t = 0.25
    assert lr_factor(3, total=4, warmup=0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'cosin'"):
        lr_lambda(total=10, warmup=0, schedule="cosin")
