"""Tests of adaptive equalization sampling (ael.md §5)."""

from __future__ import annotations

import pytest
import torch

from semiseg_lit.ops.sampling import equalization_keep_mask

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_keep_mask_hand_example(device: str) -> None:
    # pred [[0, 1], [2, 1]], s = [1, 0.5, 0] -> keep iff r > 1 - s[pred] = [[0, 0.5], [1, 0.5]]
    # r = [[0.3, 0.6], [0.99, 0.4]] -> [[1, 1], [0, 0]]
    pred = torch.tensor([[[0, 1], [2, 1]]], device=device)
    s = torch.tensor([1.0, 0.5, 0.0], device=device)
    noise = torch.tensor([[[0.3, 0.6], [0.99, 0.4]]], device=device)
    keep = equalization_keep_mask(pred, s, noise=noise)
    assert keep.dtype == torch.float32 and keep.device.type == device
    assert keep.cpu().tolist() == [[[1.0, 1.0], [0.0, 0.0]]]


def _reference_keep(pred: torch.Tensor, s: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """loss_helper.py:75–87 with the per-class maps given: keep += (noise[c]·[pred==c] > 1 - s_c)."""
    keep = torch.zeros(pred.shape)
    for c in range(s.shape[0]):
        r = noise[c] * (pred == c)
        keep += (r > 1 - s[c]).float()
    return keep


def test_keep_mask_shared_noise_reproduces_reference() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 4, (3, 5, 6), generator=g)
    s = torch.tensor([1.0, 0.3, 0.0, 0.7])
    noise = torch.rand(4, 5, 6, generator=g)
    ours = equalization_keep_mask(pred, s, noise=noise, shared_noise=True)
    assert torch.equal(ours, _reference_keep(pred, s, noise))
    # the same noise map for every image: identical predictions give identical masks
    same = equalization_keep_mask(pred[:1].expand(3, 5, 6), s, noise=noise, shared_noise=True)
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])


@pytest.mark.parametrize("shared", [False, True])
def test_keep_mask_rates_and_determinism(shared: bool) -> None:
    # P(keep | pred = c) = s_c
    pred = torch.arange(4).repeat_interleave(2500).view(4, 50, 50)  # image b is all class b
    s = torch.tensor([1.0, 0.75, 0.25, 0.0])
    keep = equalization_keep_mask(pred, s, generator=torch.Generator().manual_seed(0), shared_noise=shared)
    torch.testing.assert_close(keep.mean((1, 2)), s, atol=0.03, rtol=0)
    again = equalization_keep_mask(pred, s, generator=torch.Generator().manual_seed(0), shared_noise=shared)
    assert torch.equal(keep, again)


def test_keep_mask_default_noise_is_independent_per_image() -> None:
    pred = torch.zeros(2, 16, 16, dtype=torch.long)
    keep = equalization_keep_mask(pred, torch.tensor([0.5]), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(keep[0], keep[1])


def test_keep_mask_low_precision_keep_rate() -> None:
    keep = equalization_keep_mask(torch.zeros(1, 3, 3, dtype=torch.long), torch.tensor([1.0], dtype=torch.bfloat16),
                                  generator=torch.Generator().manual_seed(0))
    assert keep.dtype == torch.float32 and keep.eq(1).all()


def test_keep_mask_errors() -> None:
    pred = torch.zeros(2, 3, 3, dtype=torch.long)
    s = torch.ones(4)
    with pytest.raises(ValueError, match="noise"):
        equalization_keep_mask(pred, s, noise=torch.rand(2, 3, 3), shared_noise=True)
    with pytest.raises(ValueError, match="noise"):
        equalization_keep_mask(pred, s, noise=torch.rand(4, 3, 3))
    with pytest.raises(ValueError, match="student_pred"):
        equalization_keep_mask(pred[0], s)
    with pytest.raises(ValueError, match="keep_rate"):
        equalization_keep_mask(pred, s[None, None])
