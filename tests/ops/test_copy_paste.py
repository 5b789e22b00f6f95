"""Tests of adaptive Copy-Paste (ael.md §4 "ACP")."""

from __future__ import annotations

import pytest
import torch

from semiseg_lit.ops.copy_paste import adaptive_copy_paste, draw_partners, draw_paste_classes

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------- draw_paste_classes
def test_draw_paste_classes_hand_example() -> None:
    # probs [0.2, 0, 0.5, 0.3] -> cdf [0.2, 0.2, 0.7, 1.0]
    # u = 0.1 -> class 0, 0.75 -> class 3, 0.15 -> class 0; de-duplicated {0, 3}
    probs = torch.tensor([0.2, 0.0, 0.5, 0.3])
    mask = draw_paste_classes(probs, 3, noise=torch.tensor([0.1, 0.75, 0.15]))
    assert mask.dtype == torch.bool and mask.tolist() == [True, False, False, True]


def test_draw_paste_classes_properties() -> None:
    probs = torch.tensor([0.0, 0.4, 0.0, 0.6])  # classes 0 and 2 "ignored" (p = 0)
    for seed in range(50):
        mask = draw_paste_classes(probs, 3, generator=torch.Generator().manual_seed(seed))
        assert 1 <= int(mask.sum()) <= 3 and not mask[0] and not mask[2]
    a = draw_paste_classes(probs, 2, generator=torch.Generator().manual_seed(7))
    b = draw_paste_classes(probs, 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="k=0"):
        draw_paste_classes(probs, 0)


# ---------------------------------------------------------------- adaptive_copy_paste
@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_copy_paste_hand_example(device: str) -> None:
    # B=2, 2×2, C=3; paste classes {1, 2}; only sample 0 has a partner.
    # partner labels [[0, 1], [255, 2]] -> α0 = [[0, 1], [0, 1]] (0: not selected, 255: never)
    # sample 0: labels [[0, 0], [0, 0]] -> [[0, 1], [0, 2]]; image pixels (0,1), (1,1) become partner's
    # sample 1: unchanged
    images = torch.zeros(2, 3, 2, 2, device=device)
    labels = torch.zeros(2, 2, 2, dtype=torch.long, device=device)
    partner_images = torch.arange(24, dtype=torch.float32, device=device).view(2, 3, 2, 2) + 1
    partner_labels = torch.tensor([[[0, 1], [255, 2]], [[1, 1], [2, 2]]], device=device)
    paste = torch.tensor([False, True, True], device=device)
    has_partner = torch.tensor([True, False], device=device)
    out_img, out_lab = adaptive_copy_paste(images, labels, partner_images, partner_labels, paste, has_partner)
    assert out_lab.dtype == torch.long and out_img.dtype == torch.float32
    assert out_lab.cpu().tolist() == [[[0, 1], [0, 2]], [[0, 0], [0, 0]]]
    alpha = torch.tensor([[0.0, 1.0], [0.0, 1.0]], device=device)
    torch.testing.assert_close(out_img[0], partner_images[0] * alpha)
    assert torch.equal(out_img[1], images[1])
    assert torch.equal(images, torch.zeros_like(images))  # inputs untouched


def test_adaptive_copy_paste_per_sample_classes() -> None:
    # [B, C] mask: sample 0 pastes class 1 only, sample 1 pastes class 2 only
    labels = torch.full((2, 1, 3), 9)
    partner_labels = torch.tensor([[[1, 2, 255]], [[1, 2, 0]]])
    paste = torch.tensor([[False, True, False], [False, False, True]])
    _, out = adaptive_copy_paste(torch.zeros(2, 3, 1, 3), labels, torch.ones(2, 3, 1, 3), partner_labels,
                                 paste, torch.tensor([True, True]))
    assert out.tolist() == [[[1, 9, 9]], [[9, 2, 9]]]


def test_adaptive_copy_paste_bf16_images_keep_dtype() -> None:
    img = torch.zeros(1, 3, 2, 2, dtype=torch.bfloat16)
    out, _ = adaptive_copy_paste(img, torch.zeros(1, 2, 2, dtype=torch.long), img + 1,
                                 torch.ones(1, 2, 2, dtype=torch.long), torch.tensor([False, True]),
                                 torch.tensor([True]))
    assert out.dtype == torch.bfloat16 and out.eq(1).all()


def test_adaptive_copy_paste_errors() -> None:
    img = torch.zeros(2, 3, 2, 2)
    lab = torch.zeros(2, 2, 2, dtype=torch.long)
    paste = torch.tensor([True, False])
    has = torch.tensor([True, True])
    with pytest.raises(ValueError, match="labels"):
        adaptive_copy_paste(img, lab[:, :1], img, lab, paste, has)
    with pytest.raises(ValueError, match="has_partner"):
        adaptive_copy_paste(img, lab, img, lab, paste, has[:1])
    with pytest.raises(ValueError, match="paste_classes"):
        adaptive_copy_paste(img, lab, img, lab, paste.long(), has)
    with pytest.raises(ValueError, match="paste_classes"):
        adaptive_copy_paste(img, lab, img, lab, torch.ones(3, 2, dtype=torch.bool), has)


# ---------------------------------------------------------------- draw_partners
def test_draw_partners_properties() -> None:
    g = torch.Generator().manual_seed(0)
    has, idx = draw_partners(4000, prob=0.5, generator=g)
    assert has.dtype == torch.bool and idx.dtype == torch.long
    assert 0.45 < has.float().mean() < 0.55 and idx.min() >= 0 and idx.max() < 4000
    has, idx = draw_partners(8, prob=0.0, pool_size=3, generator=g)
    assert not has.any() and idx.max() < 3
    has, _ = draw_partners(8, prob=1.0, generator=g)
    assert has.all()
    has, idx = draw_partners(200, allow_self=False, generator=g)
    assert (idx != torch.arange(200)).all() and idx.max() < 200
    a = draw_partners(5, generator=torch.Generator().manual_seed(1))
    b = draw_partners(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_draw_partners_errors() -> None:
    with pytest.raises(ValueError, match="prob"):
        draw_partners(2, prob=1.5)
    with pytest.raises(ValueError, match="allow_self"):
        draw_partners(1, allow_self=False)
    with pytest.raises(ValueError, match="allow_self"):
        draw_partners(4, pool_size=8, allow_self=False)
