"""Exponential moving average of network weights (mean teacher).

``θ_t ← d·θ_t + (1-d)·θ_s`` with the warm-up rule ``d = min(1 - 1/(step+1), d_max)`` of the
U2PL/AEL code (ael.md §2 "Teacher / student"): ``d = 0`` at step 0 (teacher := student), then
0.5, 0.667, … capped at ``d_max`` (0.99 for AEL; ELN uses a constant 0.995, eln.md §1).
"""

from __future__ import annotations

import torch
from torch import nn


def decay_for_schedule(max_steps: int, fraction: float, reference_decay: float) -> float:
    """An EMA decay whose time constant follows the schedule, capped at the reference's (issue 16).

    ``T = clip(max_steps * fraction, 1, 1 / (1 - reference_decay))`` steps and ``d = 1 - 1/T``. Serves the
    EMA teacher (:func:`ema_decay_for_schedule`) and AEL's confidence bank
    (``ops/confidence.bank_momentum_for_schedule``).
    """
    if max_steps <= 0:
        raise ValueError(f"trainer.max_steps={max_steps}: an automatic EMA decay needs a finite schedule")
    if not 0.0 <= reference_decay < 1.0:
        raise ValueError(f"reference_decay={reference_decay}: expected a value in [0, 1)")
    reference_time_constant = 1.0 / (1.0 - reference_decay)
    time_constant = min(max(max_steps * fraction, 1.0), reference_time_constant)
    return 1.0 - 1.0 / time_constant


def resolve_schedule_decay(value: object, max_steps: int, key: str, fraction: float, reference_decay: float,
                           what: str) -> float:
    """``key`` (``auto`` or a number in [0, 1)) as a float for a run of ``max_steps`` steps (``auto``:
    :func:`decay_for_schedule`); ``ValueError`` naming the key and the reference value otherwise.
    ``what`` names the averaged quantity in the message (e.g. "the EMA teacher")."""
    if isinstance(value, str) and value == "auto":
        if max_steps <= 0:
            raise ValueError(
                f"{key}=auto sizes {what}'s time constant to trainer.max_steps, but "
                f"trainer.max_steps={max_steps} (no limit): set trainer.max_steps, or a number, e.g. "
                f"{key}={reference_decay:g} (the reference)")
        return decay_for_schedule(max_steps, fraction, reference_decay)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= float(value) < 1.0:
        return float(value)
    raise ValueError(f"{key}={value!r}: expected 'auto' (time constant max_steps / {1 / fraction:g}, at most the "
                     f"reference's {reference_decay:g}) or a number in [0, 1), e.g. {reference_decay:g} (the reference)")


# `ema_decay: auto` (issue 16): the teacher's time constant T = 1 / (1 - d) follows the schedule,
# T = clip(max_steps / 40, 1, T_reference): 400 steps -> T = 10 (0.9); the reference time constant
# (AEL 0.99 -> 100 steps, ELN 0.995 -> 200, UniMatch V2 0.996 -> 250) from 4000 / 8000 / 10000 steps on,
# so every reference schedule gets its official decay (and the reference experiments set it explicitly)
EMA_TIME_CONSTANT_FRACTION = 1.0 / 40.0


def ema_decay_for_schedule(max_steps: int, reference_decay: float) -> float:
    """``ema_decay=auto``: the EMA cap whose time constant is 1/40 of the schedule, at most the reference's.

    ``T = clip(max_steps / 40, 1, 1 / (1 - reference_decay))`` and ``d = 1 - 1/T``. Why: with the
    reference 0.99 (T = 100) and the warm-up rule, a 400-step run from random weights evaluates and
    pseudo-labels with a teacher that averages the student over a quarter of the run (at step 200, 37 %
    of its weight is still the uniform average of steps 0-99), while the student gains ~7 mIoU per 100
    steps: the AEL teacher was 4-5 mIoU behind a supervised student at step 200, and AEL 6.7 mIoU behind
    the supervised row at the end; with T = 10 it is 3 mIoU ahead (BENCHMARKS.md, issue 16, seed 0).
    Examples (reference 0.99): 400 steps -> 0.9, 800 -> 0.95, >= 4000 -> 0.99.
    """
    return decay_for_schedule(max_steps, EMA_TIME_CONSTANT_FRACTION, reference_decay)


def resolve_ema_decay(value: object, max_steps: int, key: str, reference_decay: float) -> float:
    """``key`` (``auto`` or a decay in [0, 1)) as a float for a run of ``max_steps`` steps."""
    return resolve_schedule_decay(value, max_steps, key, EMA_TIME_CONSTANT_FRACTION, reference_decay,
                                  "the EMA teacher")


def ema_decay(step: int, max_decay: float, warmup: bool = True) -> float:
    """``min(1 - 1/(step+1), max_decay)`` with warm-up, else the constant ``max_decay``."""
    if not warmup:
        return float(max_decay)
    return float(min(1.0 - 1.0 / (step + 1), max_decay))


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float, average_buffers: bool = False) -> None:
    """In-place EMA of the parameters (one fused ``_foreach_lerp_`` over all tensors).

    ``average_buffers``: also average floating-point buffers (BN running stats) and copy integer
    ones; ``False`` reproduces the reference, where the teacher's BN statistics come only from
    its own train-mode forward passes.
    """
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    if t_params:
        torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
    if average_buffers:
        t_buf = [b for b in teacher.buffers()]
        s_buf = [b for b in student.buffers()]
        floats = [(t, s) for t, s in zip(t_buf, s_buf) if t.is_floating_point()]
        if floats:
            torch._foreach_lerp_([t for t, _ in floats], [s for _, s in floats], 1.0 - decay)
        for t, s in zip(t_buf, s_buf):
            if not t.is_floating_point():
                t.copy_(s)
