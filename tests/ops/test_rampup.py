"""Schedule-aware start of the unsupervised loss (ops/rampup.py): hand-computed values."""

from __future__ import annotations

import math

import pytest

from semiseg_lit.ops.rampup import auto_unsup_start, resolve_start_steps, sigmoid_rampup, unsup_weight


def test_sigmoid_rampup_is_exp_minus_5_one_minus_t_squared():
    assert sigmoid_rampup(0.0) == pytest.approx(0.006737947)  # exp(-5)
    assert sigmoid_rampup(0.5) == pytest.approx(0.286504797)  # exp(-1.25)
    assert sigmoid_rampup(0.75) == pytest.approx(0.731615629)  # exp(-0.3125)
    assert sigmoid_rampup(1.0) == 1.0
    assert sigmoid_rampup(-3.0) == sigmoid_rampup(0.0) and sigmoid_rampup(7.0) == 1.0  # clipped to [0, 1]


def test_weight_is_zero_during_warmup_then_ramps_to_one():
    w = [unsup_weight(s, warmup_steps=10, rampup_steps=20) for s in (0, 9, 10, 20, 25, 29, 30, 10_000)]
    assert w[:2] == [0.0, 0.0]
    assert w[2] == pytest.approx(math.exp(-5))            # first ramp step: t = 0
    assert w[3] == pytest.approx(math.exp(-5 * 0.25))     # t = 10/20
    assert w[4] == pytest.approx(math.exp(-5 * 0.0625))   # t = 15/20
    assert w[5] == pytest.approx(math.exp(-5 * 0.05 ** 2))  # t = 19/20
    assert w[6:] == [1.0, 1.0]
    assert all(a <= b for a, b in zip(w, w[1:]))


def test_linear_ramp_and_switches():
    assert [unsup_weight(s, 10, 20, "linear") for s in (9, 10, 20, 25, 30)] == [0.0, 0.0, 0.5, 0.75, 1.0]
    assert [unsup_weight(s, 10, 0) for s in (0, 9, 10, 11)] == [0.0, 0.0, 1.0, 1.0]  # warm-up only: a step
    assert unsup_weight(0, 0, 0) == 1.0  # the reference: full weight from step 0
    with pytest.raises(ValueError, match="method.unsup_rampup_shape='cosine'"):
        unsup_weight(0, 0, 0, "cosine")


def test_auto_is_none_for_reference_length_schedules_and_scaled_below():
    assert auto_unsup_start(400) == (50, 100)
    assert auto_unsup_start(800) == (100, 200)
    assert auto_unsup_start(15_999) == (1999, 3999)
    for reference_steps in (16_000, 18_600, 34_800, 52_480, 133_000):
        assert auto_unsup_start(reference_steps) == (0, 0)


def test_resolve_start_steps_accepts_auto_and_ints_and_names_the_key_otherwise():
    assert resolve_start_steps("auto", "auto", 400) == (50, 100)
    assert resolve_start_steps(0, "auto", 800) == (0, 200)
    assert resolve_start_steps(7, 0, 400) == (7, 0)
    with pytest.raises(ValueError, match=r"method.unsup_warmup_steps=-1: expected 'auto' or a number of steps"):
        resolve_start_steps(-1, 0, 400)
    with pytest.raises(ValueError, match=r"method.unsup_rampup_steps=2.5"):
        resolve_start_steps(0, 2.5, 400)
    with pytest.raises(ValueError, match=r"method.unsup_rampup_steps='soon'"):
        resolve_start_steps(0, "soon", 400)
    with pytest.raises(ValueError, match=r"method.unsup_warmup_steps=True"):
        resolve_start_steps(True, 0, 400)
    with pytest.raises(ValueError, match=r"method.unsup_warmup_steps=auto .* trainer.max_steps=-1"):
        resolve_start_steps("auto", 0, -1)
