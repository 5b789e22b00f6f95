"""Grouped (per emulated GPU) pieces of AEL: hand-computed examples (method.ael.virtual_ranks)."""

import math

import pytest
import torch

from semiseg_lit.ops.confidence import equalization_keep_rate, sample_classes
from semiseg_lit.ops.copy_paste import draw_paste_classes
from semiseg_lit.ops.losses import (
    ohem_cross_entropy,
    ohem_cross_entropy_per_group,
    weighted_pseudo_label_loss,
    weighted_pseudo_label_loss_per_group,
)
from semiseg_lit.ops.sampling import equalization_keep_mask
from semiseg_lit.ops.virtual_ranks import (
    class_confidence_sums_per_group,
    device_rows,
    groups_per_device,
    rand_per_group,
    roll_within_groups,
    virtual_rank_generators,
)


def two_class_logits(p_gt: list[list[float]]) -> torch.Tensor:
    """Logits [B, 2, 1, W] whose softmax gives class 0 the probabilities ``p_gt`` (targets are 0)."""
    p = torch.tensor(p_gt, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()], 1).unsqueeze(2).float()


# ---------------------------------------------------------------- OHEM per group
def test_ohem_mines_each_group_separately_hand_example():
    logits = two_class_logits([[0.9, 0.6, 0.8, 0.3], [0.95, 0.99, 0.5, 0.7]])
    target = torch.zeros(2, 1, 4, dtype=torch.long)
    loss, kept = ohem_cross_entropy_per_group(logits, target, groups=2, thresh=0.7, min_kept=3)
    # group 0: 3rd smallest p = 0.8 -> t = max(0.7, 0.8) = 0.8, kept {0.6, 0.8, 0.3}
    # group 1: 3rd smallest p = 0.95 -> t = 0.95, kept {0.95, 0.5, 0.7}
    assert kept.view(2, 4).tolist() == [[False, True, True, True], [True, False, True, True]]
    expected = torch.tensor([-(math.log(0.6) + math.log(0.8) + math.log(0.3)) / 3,
                             -(math.log(0.95) + math.log(0.5) + math.log(0.7)) / 3])
    torch.testing.assert_close(loss, expected)
    # one group over both images mines differently: 3rd smallest of all = 0.6 -> t = 0.7, kept {0.6, 0.3, 0.5, 0.7}
    _, pooled = ohem_cross_entropy_per_group(logits, target, groups=1, thresh=0.7, min_kept=3)
    assert pooled.view(2, 4).tolist() == [[False, True, False, True], [False, False, True, True]]
    torch.testing.assert_close(ohem_cross_entropy(logits, target, 0.7, 3),
                               torch.tensor(-(math.log(0.6) + math.log(0.3) + math.log(0.5) + math.log(0.7)) / 4))


def test_ohem_group_with_too_few_valid_pixels_is_plain_ce():
    logits = two_class_logits([[0.9, 0.6, 0.8, 0.3], [0.95, 0.99, 0.5, 0.7]])
    target = torch.tensor([[[0, 0, 0, 0]], [[255, 255, 0, 0]]])  # group 1: 2 valid < min_kept 3: no mining
    loss, kept = ohem_cross_entropy_per_group(logits, target, groups=2, thresh=0.7, min_kept=3)
    assert kept[1].tolist() == [[False, False, True, True]]
    torch.testing.assert_close(loss[1], torch.tensor(-(math.log(0.5) + math.log(0.7)) / 2))
    with pytest.raises(ValueError, match="3 equal groups"):
        ohem_cross_entropy_per_group(logits, target, groups=3)


# ---------------------------------------------------------------- DR + AES loss per group
def test_pseudo_label_loss_normalises_within_each_group():
    logits = two_class_logits([[0.5, 0.8], [0.25, 0.5]])
    label = torch.zeros(2, 1, 2, dtype=torch.long)
    conf = torch.tensor([[[1.0, 0.5]], [[1.0, 1.0]]])
    per_group = weighted_pseudo_label_loss_per_group(logits, label, conf, 2, gamma=1.0)
    # group 0: (1·-log .5 + .5·-log .8) / 1.5 ; group 1: (-log .25 - log .5) / 2
    expected = torch.tensor([(-math.log(0.5) - 0.5 * math.log(0.8)) / 1.5, (-math.log(0.25) - math.log(0.5)) / 2])
    torch.testing.assert_close(per_group, expected)
    for g in range(2):  # = the one-GPU loss of each group's batch
        torch.testing.assert_close(per_group[g], weighted_pseudo_label_loss(
            logits[g:g + 1], label[g:g + 1], conf[g:g + 1], gamma=1.0))


# ---------------------------------------------------------------- class draws and keep masks per group
def test_class_draws_per_group_use_their_own_row():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    noise = torch.tensor([[0.1, 0.6], [0.1, 0.6]])
    # row 0: cdf [.5, 1, 1] -> 0, 1 ; row 1: cdf [0, .25, 1] -> 1, 2
    assert sample_classes(probs, 2, noise=noise).tolist() == [[0, 1], [1, 2]]
    mask = draw_paste_classes(probs, 2, noise=torch.tensor([[0.1, 0.2], [0.3, 0.9]]))
    assert mask.tolist() == [[True, False, False], [False, False, True]]


def test_keep_mask_uses_each_groups_rates_and_class_noise_maps():
    pred = torch.tensor([[[0, 1]], [[0, 1]]])  # 2 groups of one 1x2 image, same predictions
    rates = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # group 0 keeps class 0 only, group 1 class 1 only
    keep = equalization_keep_mask(pred, rates, noise=torch.full((2, 1, 2), 0.5))
    assert keep.view(2, 2).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    # shared noise: one map per class per group; keep where noise[g, ĉ, p] > 1 - s; rates 0.5 everywhere
    noise = torch.tensor([[[[0.9, 0.1]], [[0.1, 0.9]]], [[[0.1, 0.1]], [[0.9, 0.9]]]])  # [G=2, C=2, 1, 2]
    keep = equalization_keep_mask(pred, torch.full((2, 2), 0.5), noise=noise, shared_noise=True)
    # group 0: pixel 0 (class 0) noise[0,0,0]=.9 keep, pixel 1 (class 1) noise[0,1,1]=.9 keep
    # group 1: pixel 0 noise[1,0,0]=.1 drop, pixel 1 noise[1,1,1]=.9 keep
    assert keep.view(2, 2).tolist() == [[1.0, 1.0], [0.0, 1.0]]
    # per-row rate normalisation: each row's least confident class is kept with rate 1
    torch.testing.assert_close(equalization_keep_rate(torch.tensor([[0.5, 0.75], [0.0, 0.5]])),
                               torch.tensor([[1.0, 0.5], [1.0, 0.5]]))


# ---------------------------------------------------------------- bank statistic, layout helpers
def test_confidence_sums_per_group_hand_example():
    probs = torch.tensor([[[[0.8, 0.6]], [[0.2, 0.4]]], [[[0.3, 0.5]], [[0.7, 0.5]]]])
    target = torch.tensor([[[0, 0]], [[1, 255]]])
    sums, counts = class_confidence_sums_per_group(probs, target, 2, 2)
    torch.testing.assert_close(sums, torch.tensor([[1.4, 0.0], [0.0, 0.7]]))
    assert counts.tolist() == [[2.0, 0.0], [0.0, 1.0]]


def test_roll_within_groups_and_group_count():
    assert roll_within_groups(torch.arange(6), 2).tolist() == [2, 0, 1, 5, 3, 4]
    assert groups_per_device(1, 4) == 1 and groups_per_device(8, 2) == 4
    with pytest.raises(ValueError, match="method.ael.virtual_ranks=6.*world size 4"):
        groups_per_device(6, 4)


def test_generators_of_a_virtual_rank_do_not_depend_on_the_layout():
    one_device = rand_per_group(virtual_rank_generators(3, 7, 0, 4, "cpu"), (5,), "cpu")
    second_of_two = rand_per_group(virtual_rank_generators(3, 7, 2, 2, "cpu"), (5,), "cpu")
    assert torch.equal(one_device[2:], second_of_two)
    assert not torch.equal(one_device[0], one_device[1])
    # a single group per device keeps the seed of a run without emulation: (seed, step, rank)
    plain = torch.Generator().manual_seed((3 * 1_000_003 + 7 * 7919 + 1) % (2**63))
    assert torch.equal(rand_per_group(virtual_rank_generators(3, 7, 1, 1, "cpu"), (5,), "cpu")[0],
                       torch.rand(5, generator=plain))


def test_device_rows_of_a_checkpoint():
    stored = torch.arange(8.0).view(4, 2)
    assert device_rows(stored, 0, 2, 2, "bank").tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert device_rows(stored[:1], None, 6, 3, "bank").tolist() == [[0.0, 1.0]] * 3
    assert device_rows(stored[:2], 0, 2, 2, "bank").tolist() == [[0.0, 1.0], [2.0, 3.0]]  # rank 0's rows
    with pytest.raises(ValueError, match="virtual_ranks"):
        device_rows(stored, 0, 3, 3, "bank")
