"""UniMatch V2 ops (docs/unimatch_v2.md §2-4): complementary dropout, CutMix boxes, the confident loss."""

from __future__ import annotations

import math

import pytest
import torch

from semiseg_lit.ops.complementary_dropout import (
    apply_channel_masks,
    complementary_channel_dropout,
    complementary_dropout_masks,
)
from semiseg_lit.ops.cutmix_boxes import (
    cutmix_box_masks,
    cutmix_box_noise_width,
    flip_within_groups,
    paste_from_partner,
)
from semiseg_lit.ops.losses import confident_pseudo_label_loss_per_group


# ------------------------------------------------------------------ complementary dropout
def test_masks_by_hand():
    # one group of b = 2 images, D = 3 channels; image 1 has the lowest keep noise -> keeps all channels
    channel_noise = torch.tensor([[[0.1, 0.7, 0.4], [0.9, 0.2, 0.6]]])
    keep_noise = torch.tensor([[0.8, 0.3]])
    m = complementary_dropout_masks(channel_noise, keep_noise, drop_prob=0.5)
    assert m.shape == (2, 2, 3)
    # image 0: u < 0.5 -> view 1 keeps (x2), view 2 drops; u >= 0.5 -> the other way round
    assert m[0, 0].tolist() == [2.0, 0.0, 2.0]
    assert m[1, 0].tolist() == [0.0, 2.0, 0.0]
    # image 1: int(2 * 0.5) = 1 image keeps everything in both views
    assert m[0, 1].tolist() == [1.0, 1.0, 1.0]
    assert m[1, 1].tolist() == [1.0, 1.0, 1.0]


def test_masks_are_complementary_and_half_the_images_keep_all():
    g, b, d = 3, 4, 64
    m = complementary_dropout_masks(torch.rand(g, b, d), torch.rand(g, b), drop_prob=0.5)
    m1, m2 = m[0].view(g, b, d), m[1].view(g, b, d)
    assert torch.equal(m1 + m2, torch.full_like(m1, 2.0))  # the expectation of a channel is kept
    full = (m1 == 1).all(-1)
    assert full.sum(1).tolist() == [2, 2, 2]  # int(b * 0.5) per group (per emulated GPU)
    dropped = ~full
    assert torch.equal((m1 * m2)[dropped], torch.zeros_like(m1[dropped]))  # each channel in one view only
    assert set(m1[dropped].unique().tolist()) <= {0.0, 2.0}


def test_drop_prob_extremes():
    cn, kn = torch.rand(1, 5, 4), torch.rand(1, 5)
    assert torch.equal(complementary_dropout_masks(cn, kn, 0.0), torch.ones(2, 5, 4))
    m = complementary_dropout_masks(cn, kn, 1.0)
    assert not (m == 1).any()
    with pytest.raises(ValueError, match="drop_prob"):
        complementary_dropout_masks(cn, kn, 1.5)


def test_apply_masks_uses_channel_prefix_and_broadcasts_spatially():
    masks = torch.tensor([[[2.0, 0.0, 2.0]], [[0.0, 2.0, 0.0]]])  # N = 1 image, D = 3
    f_wide = torch.ones(2, 3, 2, 2)
    f_narrow = torch.arange(2 * 2 * 1, dtype=torch.float32).view(2, 2, 1, 1) + 1  # D_l = 2 < 3
    a, b = apply_channel_masks([f_wide, f_narrow], masks)
    assert a[0, :, 0, 0].tolist() == [2.0, 0.0, 2.0] and a[1, :, 1, 1].tolist() == [0.0, 2.0, 0.0]
    # narrow level: the first 2 channels of the mask; view 1 = [1, 2] * [2, 0], view 2 = [3, 4] * [0, 2]
    assert b.flatten().tolist() == [2.0, 0.0, 0.0, 8.0]
    with pytest.raises(ValueError, match="feature level 0"):
        apply_channel_masks([torch.ones(3, 3)], masks)


def test_dropout_from_generators_is_reproducible_and_grouped():
    feats = [torch.randn(8, 5, 3, 3), torch.randn(8, 7, 2, 2)]
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731  2 groups of b = 2
    a = complementary_channel_dropout(feats, gens())
    b = complementary_channel_dropout(feats, gens())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # the masks of views 1 and 2 of the same image sum to 2 (complementary halves, x2 each)
    m_view1 = a[1][:4] / feats[1][:4]
    m_view2 = a[1][4:] / feats[1][4:]
    assert torch.allclose(m_view1 + m_view2, torch.full_like(m_view1, 2.0))
    # one image per group keeps every channel in both views
    kept = (m_view1.flatten(1) - 1).abs().amax(1) < 1e-5
    assert kept.view(2, 2).sum(1).tolist() == [1, 1]
    with pytest.raises(ValueError, match="two views"):
        complementary_channel_dropout([torch.randn(6, 2, 1, 1)], gens())


# ------------------------------------------------------------------ CutMix boxes
def _noise(apply, area, cands):
    row = [apply, area]
    for c in cands:
        row += list(c)
    return torch.tensor([row])


def test_box_by_hand():
    # 10 x 10 crop, area u = 0 -> s = 0.02 * 100 = 2; first candidate: r = 0.3 -> w = floor(sqrt(2/0.3)) = 2,
    # h = floor(sqrt(0.6)) = 0; x = floor(0.95 * 10) = 9 -> 9 + 2 > 10 does not fit; second candidate
    # u_r chosen for r = 1 -> w = h = floor(sqrt(2)) = 1, x = 3, y = 5 fits
    u_r1 = (1.0 - 0.3) / (1 / 0.3 - 0.3)
    m = cutmix_box_masks(_noise(0.2, 0.0, [(0.0, 0.95, 0.0), (u_r1, 0.35, 0.55)]), 10, 10)
    assert m.shape == (1, 10, 10) and int(m.sum()) == 1 and bool(m[0, 5, 3])


def test_box_rectangle_rows_and_columns():
    # s = (0.02 + 0.5 * 0.38) * 20 * 10 = 42; r = 0.3 + u * (1/0.3 - 0.3) with u chosen for r = 2:
    # w = floor(sqrt(21)) = 4 columns, h = floor(sqrt(84)) = 9 rows; x = 2, y = 10
    u_r = (2.0 - 0.3) / (1 / 0.3 - 0.3)
    m = cutmix_box_masks(_noise(0.0, 0.5, [(u_r, 0.2, 0.5)]), height=20, width=10)[0]
    rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
    assert rows.tolist() == list(range(10, 19)) and cols.tolist() == [2, 3, 4, 5]
    assert int(m.sum()) == 36


def test_no_box_when_apply_noise_above_prob():
    m = cutmix_box_masks(_noise(0.5, 0.5, [(0.5, 0.1, 0.1)]), 8, 8, prob=0.5)
    assert not m.any()


def test_fallback_keeps_area_with_ratio_one():
    # the only candidate cannot fit (corner at the last column): ratio-1 box of side floor(sqrt(s))
    s = (0.02 + 1.0 * 0.38) * 16 * 16  # 102.4 -> side 10
    m = cutmix_box_masks(_noise(0.0, 1.0, [(0.5, 0.999, 0.999)]), 16, 16)[0]
    assert int(m.sum()) == int(math.isqrt(int(s))) ** 2 == 100


def test_box_statistics_match_the_reference_loop():
    # the reference's loop (numpy, transform.py:66-84) vs the vectorised draws: box probability and mean area
    import numpy as np

    rng = np.random.default_rng(0)
    size, n = 32, 4000
    ref_area = []
    for _ in range(n):
        if rng.random() > 0.5:
            ref_area.append(0)
            continue
        s = rng.uniform(0.02, 0.4) * size * size
        while True:
            r = rng.uniform(0.3, 1 / 0.3)
            w, h = int(np.sqrt(s / r)), int(np.sqrt(s * r))
            x, y = rng.integers(0, size), rng.integers(0, size)
            if x + w <= size and y + h <= size:
                break
        ref_area.append(w * h)
    ours = cutmix_box_masks(torch.rand(n, cutmix_box_noise_width(128), generator=torch.Generator().manual_seed(0)),
                            size, size).flatten(1).sum(1).double()
    ref = torch.tensor(ref_area, dtype=torch.float64)
    assert abs((ours > 0).double().mean() - (ref > 0).double().mean()) < 0.04
    assert abs(ours.mean() - ref.mean()) / ref.mean() < 0.08


def test_flip_within_groups():
    x = torch.arange(6)
    assert flip_within_groups(x, 1).tolist() == [5, 4, 3, 2, 1, 0]
    assert flip_within_groups(x, 3).tolist() == [1, 0, 3, 2, 5, 4]
    with pytest.raises(ValueError, match="equal groups"):
        flip_within_groups(x, 4)


def test_paste_from_partner_labels_and_images():
    # 2 groups of 2 images, 1 x 2 pixels; box on pixel 1 of image 0 and pixel 0 of image 3
    labels = torch.tensor([[[0, 1]], [[2, 3]], [[4, 5]], [[6, 7]]])
    box = torch.zeros(4, 1, 2, dtype=torch.bool)
    box[0, 0, 1] = box[3, 0, 0] = True
    out = paste_from_partner(labels, box, groups=2)
    assert out.tolist() == [[[0, 3]], [[2, 3]], [[4, 5]], [[4, 7]]]  # partners 0<->1, 2<->3
    images = labels.unsqueeze(1).expand(4, 3, 1, 2).float()
    assert torch.equal(paste_from_partner(images, box, groups=2), out.unsqueeze(1).expand(4, 3, 1, 2).float())
    valid = torch.tensor([[[True, True]], [[True, False]], [[True, True]], [[True, True]]])
    assert paste_from_partner(valid, box, groups=2)[0].tolist() == [[True, False]]  # padding travels with it


# ------------------------------------------------------------------ confident pseudo-label loss
def test_confident_loss_by_hand():
    # 1 image, 2 classes, 1 x 3 pixels; logits (0, 0) -> CE = log 2 for either label
    logits = torch.zeros(1, 2, 1, 3)
    label = torch.tensor([[[0, 1, 1]]])
    conf = torch.tensor([[[0.96, 0.5, 0.99]]])
    valid = torch.tensor([[[True, True, False]]])
    # selected: pixel 0 only (pixel 1 under tau, pixel 2 padding); denominator = 2 valid pixels
    loss = confident_pseudo_label_loss_per_group(logits, label, conf, valid, threshold=0.95)
    assert loss.shape == (1,) and torch.allclose(loss, torch.tensor([math.log(2) / 2]))


def test_confident_loss_per_group_and_all_padding():
    logits = torch.zeros(2, 3, 1, 1)
    label = torch.tensor([[[2]], [[0]]])
    conf = torch.ones(2, 1, 1)
    valid = torch.tensor([[[True]], [[False]]])
    loss = confident_pseudo_label_loss_per_group(logits, label, conf, valid, 0.95, groups=2)
    assert torch.allclose(loss, torch.tensor([math.log(3), 0.0]))  # no division by zero
    logits.requires_grad_(True)
    confident_pseudo_label_loss_per_group(logits, label, conf, valid, 0.95).backward()
    assert logits.grad[1].abs().sum() == 0  # padding gets no gradient
