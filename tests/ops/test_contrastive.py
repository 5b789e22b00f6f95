"""Tests of the ELN pixel contrastive loss (eln.md §4.3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from semiseg_lit.ops.contrastive import (
    ContrastiveInputError,
    crop_offsets,
    pixel_contrastive_loss,
    window_contrastive_loss,
)

E2 = math.e ** 2


def reference_window_loss(a, k, lab, tau, ignore=255):
    """Slow reference of one window, written like eln.md §4.3 (loop over classes)."""
    a, k = F.normalize(a.double(), dim=1), F.normalize(k.double(), dim=1)
    classes = [c for c in torch.unique(lab).tolist() if c != ignore]
    if not classes:
        return 0.0
    losses = []
    for c in classes:
        pos, neg = lab == c, (lab != c) & (lab != ignore)
        p = torch.exp(a[pos] @ k[pos].t() / tau).sum().clamp_min(1e-8)
        n = torch.exp(a[pos] @ k[neg].t() / tau).sum().clamp_min(1e-8)
        losses.append((-torch.log(p / (p + n)) / pos.sum()).item())
    return sum(losses) / len(losses)


def reference_loss(anchor, key, labels, offsets, crop, tau, ignore=255):
    """Mean of :func:`reference_window_loss` over the given windows (loops over crops)."""
    total = 0.0
    for r, c in offsets.tolist():
        rows, cols = slice(r, r + crop), slice(c, c + crop)
        a = anchor[..., rows, cols].permute(0, 2, 3, 1).reshape(-1, anchor.shape[1])
        k = key[..., rows, cols].permute(0, 2, 3, 1).reshape(-1, key.shape[1])
        total += reference_window_loss(a, k, labels[..., rows, cols].reshape(-1), tau, ignore)
    return total / len(offsets)


def _hand_case():
    # 1 image, 2×2 map, 2-d embeddings, classes [[0, 0], [1, 1]] (row-major pixels 0..3)
    #   anchors (teacher): a0 = a1 = (3, 0) → normalised (1, 0);  a2 = a3 = (0, 1)
    #   keys (student):    k0 = (1, 0);  k1 = k2 = k3 = (0, 2) → normalised (0, 1)
    anchor = torch.tensor([[3.0, 3.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).view(1, 2, 2, 2)
    key = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 2.0, 2.0]]).view(1, 2, 2, 2)
    labels = torch.tensor([[[0, 0], [1, 1]]])
    return anchor, key, labels


def test_hand_computed_two_classes():
    # τ = 0.5, so exp(a·k/τ) = e² for aligned unit vectors and e⁰ = 1 for orthogonal ones.
    # class 0 (anchors a0, a1; positives k0, k1; negatives k2, k3):
    #   P = 2·(e² + 1),  N = 2·2·1 = 4,  loss_0 = log(1 + 4/(2(e²+1))) / 2 = 0.1069125
    # class 1 (anchors a2, a3; positives k2, k3; negatives k0 (·=0), k1 (·=1)):
    #   P = 4e²,  N = 2·(1 + e²),  loss_1 = log(1 + 2(1+e²)/(4e²)) / 2 = 0.2247945
    # mean over the 2 classes = 0.1658535; the 2×2 map is smaller than the crop → one window = whole map
    loss_0 = math.log(1 + 4 / (2 * (E2 + 1))) / 2
    loss_1 = math.log(1 + 2 * (1 + E2) / (4 * E2)) / 2
    assert loss_0 == pytest.approx(0.1069125, abs=1e-6) and loss_1 == pytest.approx(0.2247945, abs=1e-6)
    anchor, key, labels = _hand_case()
    loss = pixel_contrastive_loss(anchor, key, labels, tau=0.5, n_crops=3, crop_size=32,
                                  generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((loss_0 + loss_1) / 2, abs=1e-6)


def test_hand_case_with_a_rejected_pixel():
    # pixel 1 rejected (255): class 0 = {0}: P = e² (a0·k0 = 1), N = 2 (k2, k3 orthogonal)
    #   loss_0 = log(1 + 2/e²) / 1 = 0.2395447
    # class 1 = {2, 3}: P = 4e², no more k1 among negatives, k0 ⟂ (0,1): N = 2·1 = 2
    #   loss_1 = log(1 + 2/(4e²)) / 2 = 0.0327382
    anchor, key, labels = _hand_case()
    labels[0, 0, 1] = 255
    loss_0 = math.log(1 + 2 / E2)
    loss_1 = math.log(1 + 2 / (4 * E2)) / 2
    assert loss_0 == pytest.approx(0.2395447, abs=1e-6) and loss_1 == pytest.approx(0.0327382, abs=1e-6)
    loss = pixel_contrastive_loss(anchor, key, labels, n_crops=1)
    assert loss.item() == pytest.approx((loss_0 + loss_1) / 2, abs=1e-6)


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_matches_slow_reference_on_random_crops(tau):
    g = torch.Generator().manual_seed(3)
    b, d, h, w, crop = 2, 8, 10, 12, 6
    anchor, key = torch.randn(b, d, h, w, generator=g), torch.randn(b, d, h, w, generator=g)
    labels = torch.randint(0, 4, (b, h, w), generator=g)
    labels[torch.rand(b, h, w, generator=g) < 0.3] = 255
    offsets = crop_offsets(h, w, crop, 5, torch.device("cpu"), torch.Generator().manual_seed(11))
    loss = pixel_contrastive_loss(anchor, key, labels, tau=tau, n_crops=5, crop_size=crop,
                                  generator=torch.Generator().manual_seed(11))
    expected = reference_loss(anchor, key, labels, offsets, crop, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_crop_offsets_range_and_determinism():
    off = crop_offsets(10, 7, 4, 200, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert off.shape == (200, 2) and off.dtype == torch.int64
    assert off[:, 0].min() == 0 and off[:, 0].max() == 6   # rows in [0, 10 − 4]
    assert off[:, 1].min() == 0 and off[:, 1].max() == 3   # cols in [0, 7 − 4]
    again = crop_offsets(10, 7, 4, 200, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.equal(off, again)


def test_window_loss_single_class_is_about_zero():
    # one class only: N = clamp(0) = 1e-8 → loss = log(1 + 1e-8/P)/n ≈ 0, finite
    g = torch.Generator().manual_seed(0)
    a, k = F.normalize(torch.randn(12, 4, generator=g), dim=1), F.normalize(torch.randn(12, 4, generator=g), dim=1)
    loss = window_contrastive_loss(a, k, torch.full((12,), 3), tau=0.5)
    assert torch.isfinite(loss) and 0.0 <= loss.item() < 1e-8


def test_input_smaller_than_crop_and_single_class_full_loss():
    key = torch.randn(2, 4, 3, 5, requires_grad=True)
    labels = torch.ones(2, 3, 5, dtype=torch.long)
    loss = pixel_contrastive_loss(torch.randn(2, 4, 3, 5), key, labels, crop_size=32)
    assert torch.isfinite(loss) and abs(loss.item()) < 1e-8
    loss.backward()
    assert torch.isfinite(key.grad).all()


def test_no_kept_pixels_gives_zero_with_grad():
    key = torch.randn(2, 4, 6, 6, requires_grad=True)
    loss = pixel_contrastive_loss(torch.randn(2, 4, 6, 6), key, torch.full((2, 6, 6), 255), crop_size=4)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(key.grad, torch.zeros_like(key))


def test_bf16_inputs_give_finite_float32_loss():
    g = torch.Generator().manual_seed(1)
    anchor = torch.randn(2, 16, 8, 8, generator=g).bfloat16()
    key = torch.randn(2, 16, 8, 8, generator=g).bfloat16().requires_grad_()
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    loss = pixel_contrastive_loss(anchor, key, labels, crop_size=4, generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert key.grad.dtype == torch.bfloat16 and torch.isfinite(key.grad.float()).all()


def test_gradient_flows_into_key_not_anchor():
    g = torch.Generator().manual_seed(2)
    anchor = torch.randn(1, 4, 4, 4, generator=g, requires_grad=True)
    key = torch.randn(1, 4, 4, 4, generator=g, requires_grad=True)
    labels = torch.randint(0, 2, (1, 4, 4), generator=g)
    pixel_contrastive_loss(anchor, key, labels, n_crops=2, crop_size=4).backward()
    assert anchor.grad is None
    assert key.grad is not None and key.grad.abs().sum() > 0


def test_same_generator_same_loss_and_crops_matter():
    g = torch.Generator().manual_seed(5)
    anchor, key = torch.randn(1, 4, 12, 12, generator=g), torch.randn(1, 4, 12, 12, generator=g)
    labels = torch.randint(0, 3, (1, 12, 12), generator=g)

    def run(seed):
        return pixel_contrastive_loss(anchor, key, labels, n_crops=2, crop_size=3,
                                      generator=torch.Generator().manual_seed(seed)).item()
    assert run(0) == run(0)
    assert len({run(s) for s in range(4)}) > 1


def test_bad_inputs_named():
    x = torch.zeros(1, 4, 4, 4)
    with pytest.raises(ContrastiveInputError, match="anchor and key"):
        pixel_contrastive_loss(x, torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ContrastiveInputError, match="labels"):
        pixel_contrastive_loss(x, x, torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ContrastiveInputError, match="tau"):
        pixel_contrastive_loss(x, x, torch.zeros(1, 4, 4, dtype=torch.long), tau=0.0)
    with pytest.raises(ContrastiveInputError, match="n_crops"):
        pixel_contrastive_loss(x, x, torch.zeros(1, 4, 4, dtype=torch.long), n_crops=0)
