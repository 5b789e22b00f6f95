"""Adaptive Copy-Paste (ACP) on labeled crops (ael.md §4 "ACP", paper §3.3).

Per iteration: draw K classes from ``copy_paste_class_probs(bank)`` (de-duplicated), and for every
labeled sample that has a paste partner, copy all partner pixels whose label is one of those
classes (category level, no blending): ``x ← (1-α)·x + α·x_p``, ``y ← (1-α)·y + α·y_p`` with
``α = [y_p ∈ query]`` (utils.py:308 ``dynamic_copy_paste``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from semiseg_lit.ops.confidence import sample_classes

__all__ = ["draw_paste_classes", "adaptive_copy_paste", "draw_partners"]


def draw_paste_classes(
    probs: Tensor, k: int, generator: torch.Generator | None = None, noise: Tensor | None = None
) -> Tensor:
    """K class draws with replacement from ``probs [C]``, de-duplicated into a bool mask ``[C]``.

    ``query = {c_1, …, c_K}``, ``c_i ~ probs`` (train.py:228–236: K=3 Cityscapes, 1 VOC), so the
    mask has 1..K classes set. ``noise [K]`` (uniforms) replaces the generator for exact replays.
    With ``probs [G, C]`` (one row per emulated GPU, each drawing its own query) and ``noise [G, K]``
    the result is ``[G, C]``.
    """
    if k < 1:
        raise ValueError(f"k={k}: expected at least one class draw")
    draws = sample_classes(probs, k, generator=generator, noise=noise)
    mask = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
    return mask.scatter(-1, draws, True)


def adaptive_copy_paste(
    images: Tensor,
    labels: Tensor,
    partner_images: Tensor,
    partner_labels: Tensor,
    paste_classes: Tensor,
    has_partner: Tensor,
) -> tuple[Tensor, Tensor]:
    """Category-level paste of the partner's ``paste_classes`` pixels (ael.md §4, utils.py:308).

    ``α_b = has_partner_b · [y_p,b ∈ paste_classes]``; ``x = (1-α)·x + α·x_p``, ``y = (1-α)·y + α·y_p``.
    Partner pixels labeled ``ignore``/out of ``[0, C)`` or with a non-selected class are never pasted;
    samples with ``has_partner = False`` are returned unchanged. (The reference marks "no partner"
    by an all-zero partner label; here it is explicit, so an all-zero partner label can paste
    class 0 if class 0 is selected.)

    Args:
        images, partner_images: ``[B, 3, H, W]`` float.
        labels, partner_labels: ``[B, H, W]`` int64.
        paste_classes: bool ``[C]`` shared by the batch, or ``[B, C]`` per sample.
        has_partner: bool ``[B]``.

    Returns:
        ``(images, labels)``, new tensors of the input shapes and dtypes.
    """
    if images.dim() != 4 or partner_images.shape != images.shape:
        raise ValueError(f"images/partner_images: expected equal [B, C, H, W] shapes, got "
                         f"{tuple(images.shape)} / {tuple(partner_images.shape)}")
    b, _, h, w = images.shape
    if labels.shape != (b, h, w) or partner_labels.shape != (b, h, w):
        raise ValueError(f"labels/partner_labels: expected shape {(b, h, w)}, got "
                         f"{tuple(labels.shape)} / {tuple(partner_labels.shape)}")
    if has_partner.shape != (b,):
        raise ValueError(f"has_partner: expected shape ({b},), got {tuple(has_partner.shape)}")
    if paste_classes.dtype != torch.bool or paste_classes.dim() not in (1, 2):
        raise ValueError(f"paste_classes: expected a bool [C] or [B, C] mask, got dtype "
                         f"{paste_classes.dtype} shape {tuple(paste_classes.shape)}")
    if paste_classes.dim() == 2 and paste_classes.shape[0] != b:
        raise ValueError(f"paste_classes: expected [{b}, C] for per-sample classes, got {tuple(paste_classes.shape)}")
    num_classes = paste_classes.shape[-1]
    per_sample = paste_classes.expand(b, num_classes)
    in_range = (partner_labels >= 0) & (partner_labels < num_classes)
    safe = torch.where(in_range, partner_labels, torch.zeros_like(partner_labels)).long()
    selected = per_sample.gather(1, safe.flatten(1)).view(b, h, w)
    alpha = selected & in_range & has_partner.to(torch.bool).view(b, 1, 1)
    out_images = torch.where(alpha.unsqueeze(1), partner_images, images)
    out_labels = torch.where(alpha, partner_labels, labels)
    return out_images, out_labels


def draw_partners(
    batch_size: int,
    prob: float = 0.5,
    pool_size: int | None = None,
    allow_self: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Choose a paste partner for each of ``batch_size`` labeled samples.

    ``has_partner_b ~ Bernoulli(prob)`` (reference: ``random.random() > 0.5``, so prob = 0.5) and
    ``partner_index_b ~ U{0, …, pool_size-1}`` (reference: any labeled image, itself included).
    ``pool_size`` defaults to ``batch_size`` (partners taken from the same batch). With
    ``allow_self=False`` (requires ``pool_size == batch_size >= 2``) the partner is another sample of
    the batch: ``(b + U{1, …, B-1}) mod B``; pairing a sample with itself pastes nothing.

    Returns:
        ``(has_partner bool [B], partner_index int64 [B])``; index into the pool (e.g. ``images[idx]``).
    """
    if batch_size < 0:
        raise ValueError(f"batch_size={batch_size}: expected >= 0")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob={prob}: expected a probability in [0, 1]")
    pool = batch_size if pool_size is None else pool_size
    if pool < 1 and batch_size > 0:
        raise ValueError(f"pool_size={pool}: expected >= 1")
    has_partner = torch.rand(batch_size, generator=generator, device=device) < prob
    if allow_self:
        index = torch.randint(0, max(pool, 1), (batch_size,), generator=generator, device=device)
        return has_partner, index
    if pool != batch_size or batch_size < 2:
        raise ValueError(f"allow_self=False needs pool_size == batch_size >= 2, got pool_size={pool}, "
                         f"batch_size={batch_size}")
    offset = torch.randint(1, batch_size, (batch_size,), generator=generator, device=device)
    index = (torch.arange(batch_size, device=offset.device) + offset) % batch_size
    return has_partner, index
