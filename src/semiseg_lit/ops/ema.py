"""Exponential moving average of network weights (mean teacher).

``θ_t ← d·θ_t + (1-d)·θ_s`` with the warm-up rule ``d = min(1 - 1/(step+1), d_max)`` of the
U2PL/AEL code (ael.md §2 "Teacher / student"): ``d = 0`` at step 0 (teacher := student), then
0.5, 0.667, … capped at ``d_max`` (0.99 for AEL; ELN uses a constant 0.995, eln.md §1).
"""

from __future__ import annotations

import torch
from torch import nn


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
