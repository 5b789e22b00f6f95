"""Tests of the AEL confidence bank (ael.md §3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semiseg_lit.ops.confidence import (
    class_confidence,
    copy_paste_class_probs,
    cutmix_class_probs,
    equalization_keep_rate,
    sample_classes,
    update_confidence_bank,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _probs_from(values: list[list[list[float]]]) -> torch.Tensor:
    """[C][H][W] nested list -> probs [1, C, H, W]."""
    return torch.tensor(values, dtype=torch.float32).unsqueeze(0)


# ---------------------------------------------------------------- class_confidence
@pytest.mark.parametrize("device", DEVICES)
def test_class_confidence_hand_example(device: str) -> None:
    # 1×3×2×2; target [[0, 1], [1, 255]]
    # class 0: pixel (0,0), p0 = 0.6                    -> conf0 = 0.6
    # class 1: pixels (0,1), (1,0), p1 = 0.5, 0.7      -> conf1 = (0.5 + 0.7) / 2 = 0.6
    # class 2: absent                                  -> conf2 = 0, present False
    probs = _probs_from([[[0.6, 0.2], [0.1, 0.3]],
                         [[0.3, 0.5], [0.7, 0.3]],
                         [[0.1, 0.3], [0.2, 0.4]]]).to(device)
    target = torch.tensor([[[0, 1], [1, 255]]], device=device)
    conf, present = class_confidence(probs, target, num_classes=3)
    assert conf.dtype == torch.float32 and conf.device.type == device
    torch.testing.assert_close(conf.cpu(), torch.tensor([0.6, 0.6, 0.0]))
    assert present.cpu().tolist() == [True, True, False]


def test_class_confidence_is_pixel_weighted_over_the_batch() -> None:
    # image 0: 3 pixels of class 0 with p0 = 0.9; image 1: 1 pixel of class 0 with p0 = 0.1
    # pooled: (3·0.9 + 0.1) / 4 = 0.7   (a per-image mean would give (0.9 + 0.1) / 2 = 0.5)
    probs = torch.zeros(2, 2, 2, 2)
    probs[0, 0] = 0.9
    probs[0, 1] = 0.1
    probs[1, 0] = 0.1
    probs[1, 1] = 0.9
    target = torch.tensor([[[0, 0], [0, 255]], [[0, 255], [255, 255]]])
    conf, present = class_confidence(probs, target, num_classes=2)
    torch.testing.assert_close(conf, torch.tensor([0.7, 0.0]))
    assert present.tolist() == [True, False]


def test_class_confidence_out_of_range_labels_match_no_class() -> None:
    probs = torch.full((1, 2, 1, 3), 0.5)
    target = torch.tensor([[[7, -1, 255]]])
    conf, present = class_confidence(probs, target, num_classes=2)
    assert conf.tolist() == [0.0, 0.0] and present.tolist() == [False, False]


def test_class_confidence_all_ignore_and_bf16() -> None:
    probs = torch.softmax(torch.randn(2, 4, 3, 3), 1).bfloat16()
    conf, present = class_confidence(probs, torch.full((2, 3, 3), 255), num_classes=4)
    assert conf.dtype == torch.float32 and torch.isfinite(conf).all() and not present.any()
    conf, _ = class_confidence(probs, torch.zeros(2, 3, 3, dtype=torch.long), num_classes=4)
    assert torch.isfinite(conf).all() and 0 < conf[0] < 1


def test_class_confidence_bad_shapes() -> None:
    with pytest.raises(ValueError, match="probs"):
        class_confidence(torch.rand(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), num_classes=4)
    with pytest.raises(ValueError, match="target"):
        class_confidence(torch.rand(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long), num_classes=3)


# ---------------------------------------------------------------- update_confidence_bank
def test_update_confidence_bank_hand_example() -> None:
    # bank [0.5, 0.2], conf [1.0, 0.0], present [T, F], τ = 0.9
    # zero: [0.9·0.5 + 0.1·1.0, 0.9·0.2 + 0.1·0] = [0.55, 0.18]
    # keep: class 1 absent stays 0.2                = [0.55, 0.20]
    bank = torch.tensor([0.5, 0.2])
    conf = torch.tensor([1.0, 0.0])
    present = torch.tensor([True, False])
    torch.testing.assert_close(update_confidence_bank(bank, conf, present, 0.9, "zero"), torch.tensor([0.55, 0.18]))
    torch.testing.assert_close(update_confidence_bank(bank, conf, present, 0.9, "keep"), torch.tensor([0.55, 0.20]))
    assert torch.equal(bank, torch.tensor([0.5, 0.2]))  # not modified in place


def test_update_confidence_bank_errors() -> None:
    bank = torch.zeros(3)
    with pytest.raises(ValueError, match="absent"):
        update_confidence_bank(bank, bank, bank.bool(), absent="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum"):
        update_confidence_bank(bank, bank, bank.bool(), momentum=1.5)
    with pytest.raises(ValueError, match="conf/present"):
        update_confidence_bank(bank, torch.zeros(4), torch.zeros(4, dtype=torch.bool))


# ---------------------------------------------------------------- copy_paste_class_probs
def test_copy_paste_class_probs_hand_example() -> None:
    # bank [0, 0.75, 0.96, 0.5], class 0 ignored: z = sqrt(1 - conf) = [-, 0.5, 0.2, 0.70711]
    # exp(z) = [-, 1.64872, 1.22140, 2.02811], sum = 4.89823
    # p = [0, 0.33660, 0.24936, 0.41405]
    bank = torch.tensor([0.0, 0.75, 0.96, 0.5])
    expected = torch.tensor([0.0, 0.33660, 0.24936, 0.41405])
    torch.testing.assert_close(copy_paste_class_probs(bank, [0]), expected, atol=1e-4, rtol=0)
    mask = torch.tensor([True, False, False, False])
    torch.testing.assert_close(copy_paste_class_probs(bank, mask), expected, atol=1e-4, rtol=0)
    # nothing ignored: softmax over all four
    p_all = copy_paste_class_probs(bank)
    assert p_all[0] > 0 and math.isclose(float(p_all.sum()), 1.0, rel_tol=1e-6)


def test_copy_paste_class_probs_errors() -> None:
    bank = torch.rand(4)
    with pytest.raises(ValueError, match="outside"):
        copy_paste_class_probs(bank, [4])
    with pytest.raises(ValueError, match="every class"):
        copy_paste_class_probs(bank, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="every class"):
        copy_paste_class_probs(bank, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool mask"):
        copy_paste_class_probs(bank, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[C\] or \[G, C\]"):
        copy_paste_class_probs(torch.rand(2, 2, 4), [0])


# ---------------------------------------------------------------- cutmix_class_probs
def test_cutmix_class_probs_hand_example() -> None:
    # bank [1, 0]: softmax([0, 1]) = [1/(1+e), e/(1+e)] = [0.26894, 0.73106]
    p = cutmix_class_probs(torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(p, torch.tensor([0.26894, 0.73106]), atol=1e-5, rtol=0)
    p16 = cutmix_class_probs(torch.tensor([1.0, 0.0], dtype=torch.bfloat16))
    assert p16.dtype == torch.float32


# ---------------------------------------------------------------- equalization_keep_rate
def test_equalization_keep_rate_hand_example() -> None:
    # bank [0.2, 0.6, 1.0]: 1 - conf = [0.8, 0.4, 0]; / 0.8 -> [1, 0.5, 0]; β = 2 -> [1, 0.25, 0]
    bank = torch.tensor([0.2, 0.6, 1.0])
    torch.testing.assert_close(equalization_keep_rate(bank), torch.tensor([1.0, 0.5, 0.0]))
    torch.testing.assert_close(equalization_keep_rate(bank, beta=2.0), torch.tensor([1.0, 0.25, 0.0]))


def test_equalization_keep_rate_edge_cases() -> None:
    # all classes perfectly confident: 0 / (0 + 1e-12) = 0, no NaN; a bank value > 1 is clamped
    assert equalization_keep_rate(torch.ones(3)).tolist() == [0.0, 0.0, 0.0]
    s = equalization_keep_rate(torch.tensor([1.2, 0.5]), beta=0.5)
    assert torch.isfinite(s).all() and s.tolist() == [0.0, 1.0]


# ---------------------------------------------------------------- sample_classes
def test_sample_classes_hand_example() -> None:
    # probs [0.2, 0, 0.5, 0.3] -> cdf [0.2, 0.2, 0.7, 1.0]; index = first cdf > u
    # u = 0.0 -> 0, 0.1999 -> 0, 0.2 -> 2 (class 1 has p = 0), 0.69 -> 2, 0.71 -> 3, 0.99 -> 3
    probs = torch.tensor([0.2, 0.0, 0.5, 0.3])
    noise = torch.tensor([0.0, 0.1999, 0.2, 0.69, 0.71, 0.99])
    assert sample_classes(probs, 6, noise=noise).tolist() == [0, 0, 2, 2, 3, 3]


def test_sample_classes_matches_numpy_choice() -> None:
    # np.random.choice(C, p=p) draws random_sample(size) and inverts the CDF the same way
    p = np.array([0.1, 0.05, 0.3, 0.25, 0.3])
    draws = np.random.RandomState(3).choice(5, size=50, p=p)
    uniforms = np.random.RandomState(3).random_sample(50)
    ours = sample_classes(torch.tensor(p, dtype=torch.float32), 50, noise=torch.tensor(uniforms))
    assert ours.tolist() == draws.tolist()


def test_sample_classes_frequencies_and_determinism() -> None:
    probs = torch.tensor([0.5, 0.0, 0.25, 0.25])
    draws = sample_classes(probs, 20000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.02, rtol=0)
    again = sample_classes(probs, 20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    with pytest.raises(ValueError, match="noise"):
        sample_classes(probs, 3, noise=torch.rand(2))


# ------------------------------------------------------------------ bank momentum: auto (issue 16)
def test_auto_bank_momentum_follows_the_schedule_and_is_the_reference_for_long_ones():
    from semiseg_lit.ops.confidence import bank_momentum_for_schedule

    assert bank_momentum_for_schedule(400) == pytest.approx(1 - 1 / 25)    # T = 400 / 16
    assert bank_momentum_for_schedule(800) == pytest.approx(0.98)          # T = 50
    assert bank_momentum_for_schedule(4000) == pytest.approx(0.996)        # T = 250
    assert bank_momentum_for_schedule(8) == 0.0                            # T clipped to 1 step
    for reference_steps in (16_000, 18_600, 34_800, 52_480):
        assert bank_momentum_for_schedule(reference_steps) == pytest.approx(0.999, abs=1e-12)
    # what the issue measured: the random initial bank keeps 0.999^400 = 67 % of its weight after 400 steps;
    # auto forgets it (weight (1 - 1/25)^400 = 8e-8)
    assert 0.999 ** 400 == pytest.approx(0.670, abs=1e-3)
    assert bank_momentum_for_schedule(400) ** 400 < 1e-7


def test_resolve_bank_momentum_accepts_auto_and_numbers_and_names_the_key_otherwise():
    from semiseg_lit.ops.confidence import resolve_bank_momentum

    assert resolve_bank_momentum("auto", 400) == pytest.approx(0.96)
    assert resolve_bank_momentum(0.999, 400) == 0.999
    assert resolve_bank_momentum(0, 400) == 0.0
    for bad in (1.0, -0.1, "fast", True, None):
        with pytest.raises(ValueError, match=r"method.ael.bank_momentum=.*expected 'auto'"):
            resolve_bank_momentum(bad, 400)
    with pytest.raises(ValueError, match=r"method.ael.bank_momentum=auto .* trainer.max_steps=-1"):
        resolve_bank_momentum("auto", -1)
