"""Tests of the AEL losses: OHEM CE (ael.md §7), pseudo-labels and DR + AES loss (ael.md §5–6)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semiseg_lit.ops.losses import (
    class_argmax,
    ohem_cross_entropy,
    per_pixel_cross_entropy,
    pseudo_labels,
    weighted_pseudo_label_loss,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
LN2 = math.log(2.0)


def _two_class_logits(p0: list[float]) -> torch.Tensor:
    """[1, 2, 1, N] logits with softmax class-0 probability p0: z0 = log(p/(1-p)), z1 = 0."""
    p = torch.tensor(p0, dtype=torch.float64)
    z0 = torch.log(p / (1 - p))
    return torch.stack([z0, torch.zeros_like(z0)]).float().view(1, 2, 1, -1)


# ---------------------------------------------------------------- per_pixel_cross_entropy
def test_per_pixel_cross_entropy_hand_example() -> None:
    # pixel 0: p0 = 0.5 -> CE ln 2; pixel 1: label 255 -> CE 0, p_gt 1; pixel 2: label 1, p1 = 0.2 -> -ln 0.2
    logits = _two_class_logits([0.5, 0.5, 0.8])
    ce, p_gt, valid = per_pixel_cross_entropy(logits, torch.tensor([[[0, 255, 1]]]))
    torch.testing.assert_close(ce, torch.tensor([[[LN2, 0.0, -math.log(0.2)]]]))
    torch.testing.assert_close(p_gt, torch.tensor([[[0.5, 1.0, 0.2]]]))
    assert valid.tolist() == [[[True, False, True]]]


# ---------------------------------------------------------------- ohem_cross_entropy
# p_gt = [0.9, 0.6, 0.2, 0.8, (ignored)]; -ln p = [0.105361, 0.510826, 1.609438, 0.223144]
OHEM_P = [0.9, 0.6, 0.2, 0.8, 0.5]
OHEM_TARGET = [[[0, 0, 0, 0, 255]]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("min_kept", "thresh", "expected"),
    [
        # k=2: 2nd smallest of [0.2, 0.6, 0.8, 0.9, 1(ign)] = 0.6 -> t = max(0.7, 0.6) = 0.7
        #      kept p <= 0.7: {0.6, 0.2} -> (0.510826 + 1.609438) / 2
        (2, 0.7, (0.510826 + 1.609438) / 2),
        # k=3: 0.8 -> t = 0.8 -> kept {0.6, 0.2, 0.8} -> (0.510826 + 1.609438 + 0.223144) / 3
        (3, 0.7, (0.510826 + 1.609438 + 0.223144) / 3),
        # k=1, thresh 0.5: t = max(0.5, 0.2) = 0.5 -> kept {0.2}
        (1, 0.5, 1.609438),
        # 4 valid < min_kept = 5 -> plain CE over the 4 valid pixels
        (5, 0.7, (0.105361 + 0.510826 + 1.609438 + 0.223144) / 4),
        # min_kept = 0 -> no mining (reference: the threshold is only applied when min_kept > 0)
        (0, 0.7, (0.105361 + 0.510826 + 1.609438 + 0.223144) / 4),
    ],
)
def test_ohem_hand_examples(device: str, min_kept: int, thresh: float, expected: float) -> None:
    logits = _two_class_logits(OHEM_P).to(device)
    loss = ohem_cross_entropy(logits, torch.tensor(OHEM_TARGET, device=device), thresh=thresh, min_kept=min_kept)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert math.isclose(float(loss), expected, abs_tol=1e-5)


def _reference_ohem(logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int) -> torch.Tensor:
    """The sort-based algorithm of ael.md §7, written out step by step."""
    b, c, h, w = logits.shape
    t = target.flatten().clone()
    valid = t.ne(255)
    t = t * valid.long()
    prob = F.softmax(logits.float(), 1).transpose(0, 1).reshape(c, -1)
    if min_kept <= int(valid.sum()):
        prob = prob.masked_fill(~valid, 1)
        p_gt = prob[t, torch.arange(t.numel())]
        threshold = thresh
        kth = p_gt.sort().values[min(p_gt.numel(), min_kept) - 1]
        if kth > thresh:
            threshold = kth
        valid = valid & p_gt.le(threshold)
    t = t.masked_fill(~valid, 255).view(b, h, w)
    return F.cross_entropy(logits.float(), t, ignore_index=255)


def test_ohem_matches_step_by_step_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 9, generator=g) * 2
    target = torch.randint(0, 5, (2, 8, 9), generator=g)
    target[torch.rand(2, 8, 9, generator=g) < 0.2] = 255
    for min_kept in (1, 10, 50, 100, 10_000):
        ours = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=min_kept)
        torch.testing.assert_close(ours, _reference_ohem(logits, target, 0.7, min_kept))
    plain = ohem_cross_entropy(logits, target, min_kept=100_000)
    torch.testing.assert_close(plain, F.cross_entropy(logits, target, ignore_index=255))


def test_ohem_all_ignore_and_bf16() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = ohem_cross_entropy(logits, torch.full((1, 4, 4), 255), min_kept=2)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.eq(0).all()
    low = ohem_cross_entropy(torch.randn(1, 3, 4, 4).bfloat16(), torch.zeros(1, 4, 4, dtype=torch.long), min_kept=4)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    with pytest.raises(ValueError, match="target"):
        ohem_cross_entropy(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


# ---------------------------------------------------------------- pseudo_labels
@pytest.mark.parametrize("device", DEVICES)
def test_pseudo_labels_hand_example(device: str) -> None:
    # pixel 0: z = [2, 0] -> conf = σ(2) = 0.880797, label 0
    # pixel 1: z = [0, 0.5] -> conf = σ(0.5) = 0.622459, label 1 -> 255 when threshold 0.7
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.5]]]], device=device, requires_grad=True)
    conf, labels = pseudo_labels(logits, threshold=0.7)
    torch.testing.assert_close(conf.cpu(), torch.tensor([[[0.880797, 0.622459]]]))
    assert labels.cpu().tolist() == [[[0, 255]]] and labels.dtype == torch.long
    assert not conf.requires_grad
    _, labels0 = pseudo_labels(logits, threshold=0.0)
    assert labels0.cpu().tolist() == [[[0, 1]]]
    conf16, _ = pseudo_labels(logits.detach().bfloat16())
    assert conf16.dtype == torch.float32
    with pytest.raises(ValueError, match="teacher_logits"):
        pseudo_labels(torch.zeros(2, 3, 3))


# ---------------------------------------------------------------- weighted_pseudo_label_loss
def _dr_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # pixel 0: z = [0, 0], label 0 -> CE = ln 2 = 0.693147
    # pixel 1: z = [ln 3, 0], label 1 -> p1 = 1/4 -> CE = ln 4 = 1.386294
    # pixel 2: label 255 -> CE 0
    # conf = [0.5, 1.0, 0.8] -> w = conf² = [0.25, 1, 0.64]
    logits = torch.tensor([[[[0.0, math.log(3.0), 1.0]], [[0.0, 0.0, 2.0]]]])
    labels = torch.tensor([[[0, 1, 255]]])
    conf = torch.tensor([[[0.5, 1.0, 0.8]]])
    return logits, labels, conf


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("keep", "gamma", "ignored_in_denominator", "expected"),
    [
        # (0.25·0.693147 + 1·1.386294) / (0.25 + 1 + 0.64) = 1.559581 / 1.89
        (None, 2.0, True, 1.559581 / 1.89),
        # ignored pixel's weight removed: / (0.25 + 1)
        (None, 2.0, False, 1.559581 / 1.25),
        # keep [1, 0, 1]: w = [0.25, 0, 0.64] -> 0.173287 / 0.89
        ([1.0, 0.0, 1.0], 2.0, True, 0.173287 / 0.89),
        # γ = 0: w = 1 -> (0.693147 + 1.386294) / 3 and / 2
        (None, 0.0, True, (LN2 + 2 * LN2) / 3),
        (None, 0.0, False, (LN2 + 2 * LN2) / 2),
    ],
)
def test_weighted_loss_hand_examples(device: str, keep: list[float] | None, gamma: float,
                                     ignored_in_denominator: bool, expected: float) -> None:
    logits, labels, conf = (t.to(device) for t in _dr_example())
    keep_t = None if keep is None else torch.tensor([[keep]], device=device)
    loss = weighted_pseudo_label_loss(logits, labels, conf, keep=keep_t, gamma=gamma,
                                      ignored_in_denominator=ignored_in_denominator)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert math.isclose(float(loss), expected, abs_tol=1e-5)


def test_weighted_loss_batch_vs_image_normalisation() -> None:
    # image 0: the example above (Σw·CE = 1.559581, Σw = 1.89); image 1: 3 pixels, CE ln 2, w = 1
    # batch: (1.559581 + 3·0.693147) / (1.89 + 3) = 3.639023 / 4.89 = 0.744176
    # image: (1.559581 / 1.89 + 0.693147) / 2 = (0.825175 + 0.693147) / 2 = 0.759161
    logits0, labels0, conf0 = _dr_example()
    logits = torch.cat([logits0, torch.zeros(1, 2, 1, 3)])
    labels = torch.cat([labels0, torch.zeros(1, 1, 3, dtype=torch.long)])
    conf = torch.cat([conf0, torch.ones(1, 1, 3)])
    batch = weighted_pseudo_label_loss(logits, labels, conf, normalize="batch")
    image = weighted_pseudo_label_loss(logits, labels, conf, normalize="image")
    assert math.isclose(float(batch), 3.639023 / 4.89, abs_tol=1e-5)
    assert math.isclose(float(image), (1.559581 / 1.89 + LN2) / 2, abs_tol=1e-5)


def test_weighted_loss_empty_denominator_and_gradients() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4))
    conf = torch.rand(2, 4, 4, requires_grad=True)
    for normalize in ("batch", "image"):
        loss = weighted_pseudo_label_loss(logits, labels, conf, keep=torch.zeros(2, 4, 4), normalize=normalize)
        assert float(loss.detach()) == 0.0 and not torch.isnan(loss)
    # all pseudo-labels ignored, ignored weight dropped -> empty denominator -> 0, finite grads
    loss = weighted_pseudo_label_loss(logits, torch.full((2, 4, 4), 255), conf, ignored_in_denominator=False)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(logits.grad).all()
    # gradients reach the student only (teacher confidence is detached)
    logits.grad = None
    weighted_pseudo_label_loss(logits, labels, conf).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0 and conf.grad is None


def test_weighted_loss_bf16_and_errors() -> None:
    logits, labels, conf = _dr_example()
    loss = weighted_pseudo_label_loss(logits.bfloat16(), labels, conf.bfloat16())
    assert loss.dtype == torch.float32 and math.isclose(float(loss), 1.559581 / 1.89, abs_tol=2e-2)
    with pytest.raises(ValueError, match="normalize"):
        weighted_pseudo_label_loss(logits, labels, conf, normalize="pixel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="teacher_conf"):
        weighted_pseudo_label_loss(logits, labels, conf[:, :, :2])
    with pytest.raises(ValueError, match="keep"):
        weighted_pseudo_label_loss(logits, labels, conf, keep=torch.ones(1, 1, 2))
    with pytest.raises(ValueError, match="pseudo_label"):
        weighted_pseudo_label_loss(logits, labels[:, :, :2], conf)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_class_argmax_equals_argmax_including_ties(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (2, 5, 7, 6), generator=g).to(dtype)  # many ties: the first maximum wins
    assert torch.equal(class_argmax(x), x.argmax(1))
    assert torch.equal(class_argmax(x, dim=-1), x.argmax(-1))
