"""UniMatch's CutMix: one random box per strong view, pasted from the reversed batch (docs/unimatch_v2.md §2-3).

Box of one image (``obtain_cutmix_box`` of UniMatch V1/V2, ``dataset/transform.py:66-84``): with probability
``1 − p`` no box; otherwise an area ``s = U(a_min, a_max)·H·W`` and, repeated until the box fits,
a ratio ``r ~ U(r_min, r_max)``, ``w = ⌊√(s/r)⌋``, ``h = ⌊√(s·r)⌋`` and a corner ``x ~ U{0..W−1}``,
``y ~ U{0..H−1}``; the box fits when ``x + w <= W`` and ``y + h <= H`` and covers rows ``[y, y+h)`` and
columns ``[x, x+w)``. Here the loop is vectorised: ``K`` candidate (ratio, corner) draws per image, the
first that fits is taken (the loop's distribution whenever one of the ``K`` fits); when none does, the
box keeps the area with ratio 1, clipped to the crop, at a uniform position (a documented fallback).

The partner of image ``i`` of a GPU batch of ``b`` is image ``b − 1 − i`` (``x.flip(0)``); with emulated
GPUs the flip is within each group (:func:`flip_within_groups`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cutmix_box_noise_width", "cutmix_box_masks", "flip_within_groups", "paste_from_partner"]


def cutmix_box_noise_width(candidates: int) -> int:
    """Uniforms per image that :func:`cutmix_box_masks` reads: apply, area, and (ratio, x, y) per candidate."""
    return 2 + 3 * int(candidates)


def cutmix_box_masks(noise: Tensor, height: int, width: int, prob: float = 0.5,
                     area_range: tuple[float, float] = (0.02, 0.4),
                     ratio_range: tuple[float, float] = (0.3, 1 / 0.3)) -> Tensor:
    """Bool ``[B, H, W]`` box masks (True = pixel pasted from the partner), one box or none per image.

    Args:
        noise: ``U[0,1)`` draws ``[B, 2 + 3K]``: column 0 decides the box (``u < prob``), column 1 the
            area ``s = (a_min + u·(a_max − a_min))·H·W``, then ``K`` triples ``(u_r, u_x, u_y)``:
            ``r = r_min + u_r·(r_max − r_min)``, ``x = ⌊u_x·W⌋``, ``y = ⌊u_y·H⌋``.
        prob: probability of a box (reference 0.5).
    """
    if noise.dim() != 2 or noise.shape[1] < 5 or (noise.shape[1] - 2) % 3:
        raise ValueError(f"noise: expected [B, 2 + 3K] with K >= 1, got shape {tuple(noise.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"cutmix_box_masks: invalid size {height}x{width}")
    noise = noise.double()  # int(sqrt(...)) as numpy's float64 computes it
    apply = noise[:, 0] < prob
    area = (area_range[0] + noise[:, 1] * (area_range[1] - area_range[0])) * (height * width)
    cand = noise[:, 2:].reshape(noise.shape[0], -1, 3)
    ratio = ratio_range[0] + cand[..., 0] * (ratio_range[1] - ratio_range[0])
    box_w = torch.sqrt(area[:, None] / ratio).floor().long()
    box_h = torch.sqrt(area[:, None] * ratio).floor().long()
    x = (cand[..., 1] * width).floor().long().clamp_max(width - 1)
    y = (cand[..., 2] * height).floor().long().clamp_max(height - 1)
    fits = (x + box_w <= width) & (y + box_h <= height)  # [B, K]
    first = fits.int().argmax(dim=1, keepdim=True)  # index of the first True (0 when none)
    any_fit = fits.any(dim=1)
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    # fallback (no candidate fits): ratio 1, clipped, uniform position from the first candidate's draws
    side = torch.sqrt(area).floor().long()
    fb_w, fb_h = side.clamp_max(width), side.clamp_max(height)
    fb_x = (cand[:, 0, 1] * (width - fb_w + 1)).floor().long().clamp_max(width - fb_w)
    fb_y = (cand[:, 0, 2] * (height - fb_h + 1)).floor().long().clamp_max(height - fb_h)
    bx = torch.where(any_fit, pick(x), fb_x)
    by = torch.where(any_fit, pick(y), fb_y)
    bw = torch.where(any_fit, pick(box_w), fb_w)
    bh = torch.where(any_fit, pick(box_h), fb_h)
    rows = torch.arange(height, device=noise.device)
    cols = torch.arange(width, device=noise.device)
    in_rows = (rows >= by[:, None]) & (rows < (by + bh)[:, None])
    in_cols = (cols >= bx[:, None]) & (cols < (bx + bw)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]


def flip_within_groups(x: Tensor, groups: int) -> Tensor:
    """Reverse the order of the images within each of ``groups`` equal consecutive chunks of the batch
    (one emulated GPU each): ``out[g·b + i] = x[g·b + b − 1 − i]``; ``groups = 1`` is ``x.flip(0)``."""
    n = x.shape[0]
    if groups < 1 or n % groups:
        raise ValueError(f"flip_within_groups: batch {n} does not split into {groups} equal groups")
    return x.reshape(groups, n // groups, *x.shape[1:]).flip(1).reshape(x.shape)


def paste_from_partner(x: Tensor, box: Tensor, groups: int = 1) -> Tensor:
    """``x`` with the pixels inside ``box`` taken from the partner image of the same emulated GPU batch:
    ``out[i] = where(box[i], x[partner(i)], x[i])``, partner = :func:`flip_within_groups` (the reference's
    ``x[box == 1] = x.flip(0)[box == 1]``, ``unimatch_v2.py:175-190``). ``x`` is ``[B, H, W]`` (pseudo-labels,
    confidences, padding masks) or ``[B, C, H, W]`` (images); ``box`` bool ``[B, H, W]``. Exact copies,
    any dtype."""
    if box.dim() != 3 or x.shape[0] != box.shape[0] or x.shape[-2:] != box.shape[-2:] or x.dim() not in (3, 4):
        raise ValueError(f"paste_from_partner: x {tuple(x.shape)} and box {tuple(box.shape)} do not match "
                         "([B, (C,) H, W] and [B, H, W])")
    m = box if x.dim() == 3 else box.unsqueeze(1)
    return torch.where(m, flip_within_groups(x, groups), x)
