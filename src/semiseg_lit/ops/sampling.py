"""Adaptive equalization sampling (AES, ael.md §5, paper Eq. 10).

A pixel whose **student** argmax is class ``c`` takes part in the unsupervised loss with
probability ``s_c`` (``equalization_keep_rate`` of the confidence bank), so confident classes are
sub-sampled and the least confident class is always kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["equalization_keep_mask"]


def equalization_keep_mask(
    student_pred: Tensor,
    keep_rate: Tensor,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    shared_noise: bool = False,
) -> Tensor:
    """Bernoulli keep mask ``keep = [r > 1 - s_{ĉ}]`` with ``ĉ`` the student's argmax (loss_helper.py:60–93).

    ``P(keep | ĉ = c) = s_c``. The noise ``r ~ U[0,1)`` is
    * ``shared_noise=False`` (default): independent per pixel, ``noise [B, H, W]``;
    * ``shared_noise=True`` (reference): one ``H×W`` map per class, drawn in class order and shared
      by all images of the call, ``noise [C, H, W]``; pixel ``(b, y, x)`` uses ``noise[ĉ, y, x]``.

    Emulated GPUs (``method.ael.virtual_ranks``): with ``keep_rate [G, C]`` the batch is ``G`` equal
    consecutive groups; group ``g`` uses ``s = keep_rate[g]`` and, with ``shared_noise``, its own maps
    ``noise [G, C, H, W]`` (one batch of the reference GPU ``g``).

    Args:
        student_pred: int64 ``[B, H, W]`` class indices in ``[0, C)`` (not validated: no host sync).
        keep_rate: ``s [C]`` or ``[G, C]`` in ``[0, 1]``.
        noise: optional explicit uniforms (shape above); otherwise drawn with ``generator``.

    Returns:
        float32 ``[B, H, W]`` in {0, 1}.
    """
    if student_pred.dim() != 3:
        raise ValueError(f"student_pred: expected [B, H, W], got shape {tuple(student_pred.shape)}")
    if keep_rate.dim() not in (1, 2):
        raise ValueError(f"keep_rate: expected a tensor [C] or [G, C], got shape {tuple(keep_rate.shape)}")
    b, h, w = student_pred.shape
    rates = keep_rate.view(-1, keep_rate.shape[-1])
    groups, num_classes = rates.shape
    if b % groups:
        raise ValueError(f"student_pred: batch {b} does not split into {groups} groups (keep_rate rows)")
    shared_shape = (num_classes, h, w) if keep_rate.dim() == 1 else (groups, num_classes, h, w)
    expected = shared_shape if shared_noise else (b, h, w)
    if noise is None:
        noise = torch.rand(expected, generator=generator, device=student_pred.device)
    elif noise.shape != expected:
        raise ValueError(f"noise: expected shape {expected} (shared_noise={shared_noise}), "
                         f"got {tuple(noise.shape)}")
    pred = student_pred.long().reshape(groups, (b // groups) * h * w)
    noise = noise.to(student_pred.device, torch.float32)
    if shared_noise:
        # r[g, i, p] = noise[g, pred[g, i, p], p]
        r = noise.reshape(groups, num_classes, h * w).gather(1, pred.view(groups, b // groups, h * w)).view(b, h, w)
    else:
        r = noise
    s = rates.to(student_pred.device, torch.float32).gather(1, pred).view(b, h, w)
    return (r > 1.0 - s).float()
