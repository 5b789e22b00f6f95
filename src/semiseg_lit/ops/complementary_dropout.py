"""Complementary channel dropout of UniMatch V2 (docs/unimatch_v2.md §4, paper §3.3 "Complementary Dropout").

The student sees the two strong views of each unlabeled image in one batch ``[view 1; view 2]``. Their
encoder features are multiplied, per image ``i`` and channel ``c``, by masks

    m1[i, c] = 2·[u_ic < 1/2],   m2[i, c] = 2 − m1[i, c]

so every channel survives (×2, keeping the expectation) in exactly one of the two views: the views are
complementary. A fraction ``1 − drop_prob`` of the images (the reference: ``⌊b/2⌋`` of each GPU batch of
``b``, drawn by a random permutation) keeps every channel in both views (``m1 = m2 = 1``). One mask per
image and channel is shared by all spatial positions and all feature levels (the reference's 4 ViT
layers all have the same width; for levels of different widths ``D_ℓ`` each uses the first ``D_ℓ``
channels of one mask of width ``max_ℓ D_ℓ``).

Pure tensor code: the randomness comes in as uniform noise tensors (drawn by the caller from per-step
generators on the training device), no loops over images, no host sync.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["complementary_dropout_masks", "apply_channel_masks", "complementary_channel_dropout"]


def _rank_within_rows(noise: Tensor) -> Tensor:
    """Rank of each entry within its row (0 = smallest): ``argsort(argsort(noise))``. The entries of
    rank ``< k`` are a uniformly random ``k``-subset of the row, as ``randperm(b)[:k]`` gives."""
    return noise.argsort(dim=-1).argsort(dim=-1)


def complementary_dropout_masks(channel_noise: Tensor, keep_noise: Tensor, drop_prob: float = 0.5) -> Tensor:
    """The two views' channel masks.

    Args:
        channel_noise: ``U[0,1)`` draws ``[G, b, D]`` (``G`` emulated GPUs of ``b`` images; ``D`` channels).
            ``m1 = 2·[u < 1/2]`` (``Binomial(1, 0.5)·2``), ``m2 = 2 − m1``.
        keep_noise: ``U[0,1)`` draws ``[G, b]``; in each row the ``int(b·(1 − drop_prob))`` images of lowest
            noise keep every channel in both views (``m1 = m2 = 1``), as ``randperm(b)[:num_kept]``.
        drop_prob: fraction of the images whose views get complementary dropout (reference 0.5).

    Returns:
        float ``[2, G·b, D]``: ``[m1, m2]`` (rows in group-major order ``(g, i)``).
    """
    if channel_noise.dim() != 3:
        raise ValueError(f"channel_noise: expected [G, b, D], got shape {tuple(channel_noise.shape)}")
    if keep_noise.shape != channel_noise.shape[:2]:
        raise ValueError(f"keep_noise: expected shape {tuple(channel_noise.shape[:2])}, got {tuple(keep_noise.shape)}")
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob={drop_prob}: expected a fraction in [0, 1]")
    g, b, d = channel_noise.shape
    m1 = (channel_noise < 0.5).float() * 2.0
    m2 = 2.0 - m1
    num_kept = int(b * (1.0 - drop_prob))
    keep_all = (_rank_within_rows(keep_noise) < num_kept).unsqueeze(-1)  # [G, b, 1]
    m1 = torch.where(keep_all, 1.0, m1)
    m2 = torch.where(keep_all, 1.0, m2)
    return torch.stack([m1.reshape(g * b, d), m2.reshape(g * b, d)])


def apply_channel_masks(features: Sequence[Tensor], masks: Tensor) -> list[Tensor]:
    """``f_ℓ · [m1; m2][:, :D_ℓ]`` broadcast over the spatial dims of each ``f_ℓ [2N, D_ℓ, ...]``.

    ``masks`` is ``[2, N, D]`` from :func:`complementary_dropout_masks`; the first ``N`` images of every
    feature map are view 1, the last ``N`` view 2. Each level needs ``D_ℓ <= D``.
    """
    two, n, d = masks.shape
    mask = masks.reshape(two * n, d)
    out = []
    for level, f in enumerate(features):
        if f.dim() < 2 or f.shape[0] != two * n or f.shape[1] > d:
            raise ValueError(f"feature level {level}: expected [{two * n}, <= {d}, ...], got {tuple(f.shape)}")
        m = mask[:, : f.shape[1]].to(f.dtype)
        out.append(f * m.reshape(*m.shape, *([1] * (f.dim() - 2))))
    return out


def complementary_channel_dropout(features: Sequence[Tensor], generators: Sequence[torch.Generator],
                                  drop_prob: float = 0.5) -> list[Tensor]:
    """Complementary dropout of a concatenated two-view batch: the feature list with masks applied.

    ``features``: maps ``[2N, D_ℓ, ...]`` (view 1 = first ``N`` images, view 2 = last ``N``);
    ``generators``: one per emulated GPU (``N`` splits into ``len(generators)`` equal groups of ``b``),
    each drawing its group's ``[b, max D_ℓ]`` channel noise and ``[b]`` keep noise on the features' device.
    Returns the same list with :func:`apply_channel_masks` applied (same shapes; nothing in place).
    """
    features = list(features)
    if not features:
        return features
    groups = len(generators)
    two_n, device = features[0].shape[0], features[0].device
    if groups < 1 or two_n % (2 * groups):
        raise ValueError(f"complementary_channel_dropout: batch {two_n} is not two views of {groups} equal groups")
    b = two_n // (2 * groups)
    width = max(int(f.shape[1]) for f in features)
    channel_noise = torch.stack([torch.rand((b, width), generator=g, device=device) for g in generators])
    keep_noise = torch.stack([torch.rand((b,), generator=g, device=device) for g in generators])
    return apply_channel_masks(features, complementary_dropout_masks(channel_noise, keep_noise, drop_prob))
