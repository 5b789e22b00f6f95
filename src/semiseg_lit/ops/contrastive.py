"""Pixel-wise contrastive loss of ELN (Kwon & Kwak, CVPR 2022), eln.md §4.3 (``utils/losses.py``).

For each of ``n_crops`` random windows (the same window for every image of the batch), with the kept
pixels of the window pooled over the batch, L2-normalised teacher anchors ``a`` and student keys ``k``:

    P_c = Σ_{i∈c, j∈c} exp(a_i·k_j / τ)        (all anchor–positive pairs of class c)
    N_c = Σ_{i∈c, j∉c, j kept} exp(a_i·k_j / τ) (all anchor–negative pairs)
    loss_c = −log(P_c / (P_c + N_c)) / n_c      (P_c, N_c clamped at 1e-8; n_c = #class-c pixels)
    crop loss = mean over the classes present (0 if none);  loss = mean over crops.

Vectorised over classes without knowing the number of classes (so no host sync): with the pairwise
same-class matrix ``Q_ij = [y_i = y_j, both kept]`` and ``S_ij = exp((a_i·k_j − 1)/τ)`` (shifted by the
largest possible value ``1/τ`` so it never overflows), the per-anchor sums are ``p_i = Σ_j Q_ij S_ij`` and
``q_i = Σ_j [y_j ≠ y_i, j kept] S_ij``; the class sums, seen from any pixel i of the class, are
``P_{c(i)} = (Q p)_i`` and ``N_{c(i)} = (Q q)_i`` and ``n_{c(i)} = Σ_j Q_ij``. Averaging
``loss_{c(i)}`` over the pixels with weight ``1/n_{c(i)}`` gives each class weight 1, so
``mean_c loss_c = Σ_i loss_{c(i)}/n_{c(i)} / Σ_i 1/n_{c(i)}``. Memory is O(n²) with n = B·crop².
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ContrastiveInputError", "crop_offsets", "pixel_contrastive_loss", "window_contrastive_loss"]

_CLAMP = 1e-8  # reference clamp_min of P and N
_TINY = torch.finfo(torch.float32).tiny


class ContrastiveInputError(ValueError):
    """Bad shapes or hyper-parameters for the pixel contrastive loss."""


def crop_offsets(h: int, w: int, crop: int, n_crops: int, device: torch.device,
                 generator: torch.Generator | None = None) -> Tensor:
    """``n_crops`` uniform random top-left corners ``[n_crops, 2]`` (row, col) of ``crop×crop`` windows.

    Rows are in ``[0, h − crop]`` and columns in ``[0, w − crop]``, drawn with ``generator`` on its own
    device and returned on ``device``.
    """
    gen_device = generator.device if generator is not None else device
    u = torch.rand(n_crops, 2, generator=generator, device=gen_device).to(device)
    span = torch.tensor([h - crop + 1, w - crop + 1], device=device)
    return (u * span).long().clamp_max(span - 1)


def window_contrastive_loss(anchor: Tensor, key: Tensor, labels: Tensor, tau: float,
                            ignore_index: int = 255) -> Tensor:
    """Loss of one window: mean over present classes of ``−log(P_c/(P_c+N_c))/n_c`` (module docstring).

    ``anchor``/``key`` are ``[n, D]`` float32 L2-normalised, ``labels`` ``[n]``. Returns 0 (attached to
    ``key``'s graph) when no pixel is kept. Log-space throughout: ``log P = log Σ S + 1/τ``.
    """
    kept = labels != ignore_index
    keptf = kept.float()
    same = ((labels[:, None] == labels[None, :]) & kept[:, None] & kept[None, :]).float()
    s = torch.exp((anchor @ key.t() - 1.0) / tau)              # shifted: entries in [e^{-2/τ}, 1]
    other = same.neg().add_(keptf)                             # [y_i != y_j, both kept] (rows of kept i)
    pos_row = (s * same).sum(dim=1)                            # p_i
    neg_row = (s * other).sum(dim=1)                           # q_i (summed directly: no cancellation)
    pos_cls = same @ pos_row                                   # P_{c(i)} / e^{1/τ}
    neg_cls = same @ neg_row                                   # N_{c(i)} / e^{1/τ}
    n_cls = same.sum(dim=1)                                    # n_{c(i)}; 0 for dropped pixels
    log_floor = math.log(_CLAMP)
    log_p = (torch.log(pos_cls.clamp_min(_TINY)) + 1.0 / tau).clamp_min(log_floor)
    log_n = (torch.log(neg_cls.clamp_min(_TINY)) + 1.0 / tau).clamp_min(log_floor)
    inv_n = keptf / n_cls.clamp_min(1.0)                       # 1/n_{c(i)} on kept pixels, else 0
    loss_cls = F.softplus(log_n - log_p) * inv_n               # loss_c = −log(P/(P+N))/n_c = log(1+N/P)/n_c
    n_classes = inv_n.sum()                                    # ≈ number of classes present
    return (loss_cls * inv_n).sum() / n_classes.clamp_min(1.0)  # Σ_c loss_c / #classes


def _flatten_window(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``[B,D,h,w]`` → window ``[B·crop·crop, D]`` (index_select keeps the indices on device)."""
    win = x.index_select(2, rows).index_select(3, cols)
    return win.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def pixel_contrastive_loss(anchor: Tensor, key: Tensor, labels: Tensor, *, tau: float = 0.5,
                           n_crops: int = 8, crop_size: int = 32, ignore_index: int = 255,
                           generator: torch.Generator | None = None) -> Tensor:
    """ELN pixel contrastive loss (eln.md §4.3), averaged over ``n_crops`` random windows.

    ``anchor``: teacher projections ``[B,D,h,w]`` (detached here); ``key``: student projections
    ``[B,D,h,w]`` (gradient flows only into them); ``labels`` ``[B,h,w]`` = pseudo labels with
    ``ignore_index`` on rejected pixels. The window side is ``min(crop_size, h, w)`` so small maps
    work. Computed in float32 with autocast disabled; returns a float32 scalar.
    """
    if anchor.dim() != 4 or anchor.shape != key.shape:
        raise ContrastiveInputError(f"anchor and key: expected two [B,D,h,w] tensors of the same shape, got "
                                    f"{tuple(anchor.shape)} and {tuple(key.shape)}")
    b, _, h, w = anchor.shape
    if labels.shape != (b, h, w):
        raise ContrastiveInputError(f"labels: expected shape {(b, h, w)} (the projections' [B,h,w]), got "
                                    f"{tuple(labels.shape)}")
    if not tau > 0:
        raise ContrastiveInputError(f"tau: expected a positive temperature, got {tau}")
    if n_crops < 1 or crop_size < 1:
        raise ContrastiveInputError(f"n_crops and crop_size must be >= 1, got {n_crops} and {crop_size}")
    crop = min(int(crop_size), h, w)
    offsets = crop_offsets(h, w, crop, n_crops, anchor.device, generator)
    steps = torch.arange(crop, device=anchor.device)
    with torch.autocast(device_type=anchor.device.type, enabled=False):
        a_all = F.normalize(anchor.detach().float(), dim=1)
        k_all = F.normalize(key.float(), dim=1)
        total = k_all.new_zeros(())
        # 8 windows, each an O(n²) similarity matrix: looping keeps peak memory at one window.
        for r in range(n_crops):
            rows, cols = offsets[r, 0] + steps, offsets[r, 1] + steps
            total = total + window_contrastive_loss(
                _flatten_window(a_all, rows, cols), _flatten_window(k_all, rows, cols),
                labels.index_select(1, rows).index_select(2, cols).reshape(-1), tau, ignore_index)
    return total / n_crops
