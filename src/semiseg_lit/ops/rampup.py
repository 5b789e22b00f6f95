"""Schedule-aware start of the unsupervised loss: a supervised warm-up, then a ramp of its weight.

Teacher-student methods pseudo-label with a teacher that, at step 0 of a from-scratch run, is a
random network. At full weight from step 0 the student learns those random targets first; in short
schedules it never recovers (classes collapse, issue 16). The classic remedy of Temporal Ensembling
(Laine & Aila, ICLR 2017, §3.1 and appendix A) and Mean Teacher (Tarvainen & Valpola, NeurIPS 2017,
appendix B.1) multiplies the unsupervised loss by

    w(step) = 0                            for step < W                       (supervised warm-up)
    w(step) = ramp((step - W) / R)         for W <= step < W + R
    w(step) = 1                            after

with the "sigmoid-shaped" ramp ``ramp(t) = exp(-5 (1 - t)^2)`` (t in [0, 1); it starts at
``exp(-5) = 0.0067``, reaches 0.29 at mid-ramp and 1 at the end) or the linear ramp ``ramp(t) = t``.
``R = 0`` switches the ramp off (a step from 0 to 1 at ``W``); ``W = R = 0`` is the reference (no
schedule). ``step`` counts from the first step at which the method has an unsupervised term
(AEL: 0; ELN: the start of stage 3, after its own supervised stages).

``auto`` (the method configs' default) sizes the start to the schedule: schedules at least as long
as the reference ones (``max_steps >= REFERENCE_MIN_STEPS`` = 16000; the AEL / ELN reference
experiments run 18600 to 133000 steps) get none, exactly as the reference; shorter ones (the
embedded synthscapes experiments, a first run on one's own data) get ``W = max_steps // 8`` and
``R = max_steps // 4``.

Everything here is plain Python on the step counter: the weight is a float, no tensor and no host sync.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["REFERENCE_MIN_STEPS", "RAMP_SHAPES", "auto_unsup_start", "resolve_start_steps", "sigmoid_rampup",
           "unsup_weight"]

# schedules at least this long are "reference-length": no warm-up / ramp under `auto`, and the AEL
# confidence bank keeps the official momentum 0.999 (ops/confidence.bank_momentum_for_schedule)
REFERENCE_MIN_STEPS = 16000
RAMP_SHAPES = ("sigmoid", "linear")


def sigmoid_rampup(t: float) -> float:
    """``exp(-5 (1 - t)^2)`` for ``t`` clipped to [0, 1] (Laine & Aila 2017; Tarvainen & Valpola 2017)."""
    t = min(max(float(t), 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def unsup_weight(step: int, warmup_steps: int, rampup_steps: int, shape: str = "sigmoid") -> float:
    """Weight of the unsupervised loss at ``step`` (counted from the method's unsupervised start):
    0 during the warm-up, then the ramp, then 1 (module docstring)."""
    if shape not in RAMP_SHAPES:
        raise ValueError(f"method.unsup_rampup_shape={shape!r}: expected one of {', '.join(RAMP_SHAPES)}")
    if step < warmup_steps:
        return 0.0
    if rampup_steps <= 0:
        return 1.0
    t = (step - warmup_steps) / rampup_steps
    if t >= 1.0:
        return 1.0
    return sigmoid_rampup(t) if shape == "sigmoid" else float(t)


def auto_unsup_start(max_steps: int) -> tuple[int, int]:
    """``(warm-up, ramp)`` steps of ``auto``: ``(max_steps // 8, max_steps // 4)`` below
    ``REFERENCE_MIN_STEPS``, ``(0, 0)`` (the reference) from there on."""
    if max_steps >= REFERENCE_MIN_STEPS:
        return 0, 0
    return max_steps // 8, max_steps // 4


def resolve_start_steps(warmup: Any, rampup: Any, max_steps: int) -> tuple[int, int]:
    """``method.unsup_warmup_steps`` / ``method.unsup_rampup_steps`` (each ``auto`` or an int >= 0) as
    step counts, for a run of ``max_steps`` steps. Raises ``ValueError`` naming the key on bad values."""
    resolved = []
    for key, value in (("unsup_warmup_steps", warmup), ("unsup_rampup_steps", rampup)):
        if isinstance(value, str) and value == "auto":
            if max_steps <= 0:
                raise ValueError(
                    f"method.{key}=auto sizes the supervised warm-up / ramp to trainer.max_steps, but "
                    f"trainer.max_steps={max_steps} (no limit): set trainer.max_steps, or a number of steps, "
                    f"e.g. method.{key}=0")
            resolved.append(auto_unsup_start(max_steps)[len(resolved)])
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            resolved.append(int(value))
        else:
            raise ValueError(f"method.{key}={value!r}: expected 'auto' or a number of steps >= 0 "
                             f"(0 = off, the reference)")
    return resolved[0], resolved[1]
