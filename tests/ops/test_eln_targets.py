"""Tests of the ELN tensor functions (eln.md §2.2, §2.3, §3, §4.2) with hand-computed examples."""

import math

import pytest
import torch
import torch.nn.functional as F

from semiseg_lit.ops.eln_targets import (
    ELNInputError,
    aux_decoder_gate,
    balanced_bce_loss,
    eln_inputs,
    eln_pseudo_labels,
    eln_targets,
    entropy_map,
    resize_bilinear,
)


# ------------------------------------------------------------------------------- resize_bilinear
def test_resize_bilinear_identity_and_align_corners():
    x = torch.tensor([[[[0.0, 3.0]]]])  # 1×1×1×2
    assert resize_bilinear(x, (1, 2)) is x
    # align_corners=True keeps the end points: 0, 1, 2, 3 on a width-4 grid
    assert torch.allclose(resize_bilinear(x, (1, 4)), torch.tensor([[[[0.0, 1.0, 2.0, 3.0]]]]))


# ------------------------------------------------------------------------------- entropy_map
def test_entropy_uniform_logits_is_log_c():
    # uniform softmax over C = 5: H = -Σ (1/5)·log(1/5) = log 5 = 1.6094
    h = entropy_map(torch.full((2, 5, 3, 4), 7.0))
    assert h.shape == (2, 1, 3, 4) and h.dtype == torch.float32
    assert torch.allclose(h, torch.full_like(h, math.log(5)), atol=1e-6)


def test_entropy_two_class_hand_example():
    # logits (0, log 3) → p = (1/4, 3/4); H = -(1/4·log(1/4) + 3/4·log(3/4)) = 0.5623351
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_map(logits).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.5623351, abs=1e-6)


def test_entropy_confident_is_zero_and_half_precision_is_float32():
    logits = torch.tensor([100.0, -100.0, -100.0]).view(1, 3, 1, 1).to(torch.bfloat16)
    h = entropy_map(logits)
    assert h.dtype == torch.float32 and h.abs().item() < 1e-6


def test_entropy_rejects_wrong_rank():
    with pytest.raises(ELNInputError, match="logits"):
        entropy_map(torch.zeros(2, 3, 4))


# ------------------------------------------------------------------------------- eln_inputs
def test_eln_inputs_channels_upsampling_and_detach():
    images = torch.randn(2, 3, 8, 8)
    logits = torch.randn(2, 4, 2, 2, requires_grad=True)
    x = eln_inputs(images, logits)
    assert x.shape == (2, 3 + 1 + 4, 8, 8)
    assert not x.requires_grad  # logits are detached
    up = F.interpolate(logits.detach(), size=(8, 8), mode="bilinear", align_corners=True)
    assert torch.equal(x[:, :3], images)
    assert torch.allclose(x[:, 4:], up)
    assert torch.allclose(x[:, 3:4], entropy_map(up))
    # align_corners=True: the corners of the upsampled map equal the corners of the low-res logits
    assert torch.allclose(x[:, 4:, 0, 0], logits.detach()[:, :, 0, 0])
    assert torch.allclose(x[:, 4:, -1, -1], logits.detach()[:, :, -1, -1])


def test_eln_inputs_validates_shapes():
    with pytest.raises(ELNInputError, match="images"):
        eln_inputs(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ELNInputError, match="batch size"):
        eln_inputs(torch.zeros(2, 3, 8, 8), torch.zeros(1, 3, 2, 2))


# ------------------------------------------------------------------------------- eln_targets
def _two_class_logits():
    # predictions on a 1×2×2 grid: argmax = [[0, 1], [1, 0]]
    z = torch.zeros(1, 2, 2, 2)
    z[0, 0, 0, 0] = z[0, 1, 0, 1] = z[0, 1, 1, 0] = z[0, 0, 1, 1] = 5.0
    return z


def test_eln_targets_with_ignore_pixel_both_modes():
    # prediction [[0,1],[1,0]] vs target [[0,0],[1,255]]:
    #   (0,0): 0==0 correct → 1;  (0,1): 1!=0 wrong → 0;  (1,0): 1==1 → 1;  (1,1): ignore
    z, y = _two_class_logits(), torch.tensor([[[0, 0], [1, 255]]])
    t, valid = eln_targets(z, y)
    assert torch.equal(t, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))
    assert torch.equal(valid, torch.tensor([[[True, True], [True, False]]]))
    # reference parity: the ignore pixel is an "error" (t = 0) and counted (valid)
    t2, valid2 = eln_targets(z, y, ignore_as_error=True)
    assert torch.equal(t2, t) and t2.dtype == torch.float32
    assert bool(valid2.all())


def test_eln_targets_upsamples_prediction_to_label_size():
    # 1×1 prediction of class 1 everywhere → upsampled to 3×3, correct where the label is 1
    z = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    y = torch.tensor([[[1, 0, 1], [1, 1, 1], [255, 1, 0]]])
    t, valid = eln_targets(z, y)
    assert t.shape == (1, 3, 3)
    assert torch.equal(t, (y == 1).float())
    assert int(valid.sum()) == 8


def test_eln_targets_rejects_float_target():
    with pytest.raises(ELNInputError, match="integer"):
        eln_targets(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2))


# ------------------------------------------------------------------------------- balanced_bce_loss
LN3 = math.log(3.0)


def test_balanced_bce_hand_example():
    # logits e = [0, ln3, -ln3, 0], targets t = [1, 1, 1, 0]; n1 = 3, n0 = 1 → w0 = n1/n0 = 3
    #   BCE(t=1, e) = log(1 + exp(-e)):  ln2,  ln(4/3),  ln4;   BCE(t=0, e=0) = ln2, weighted ×3
    #   L = (ln2 + ln(4/3) + ln4 + 3·ln2) / 4 = (8·ln2 − ln3) / 4 = 1.1116413
    e = torch.tensor([[[[0.0, LN3], [-LN3, 0.0]]]], requires_grad=True)
    t = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    loss = balanced_bce_loss(e, t, valid)
    expected = (8 * math.log(2) - LN3) / 4
    assert expected == pytest.approx(1.1116413, abs=1e-6)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # d/de of BCE(t=0) = sigmoid(0) = 0.5, times w0 = 3, divided by 4 pixels → 0.375
    assert e.grad[0, 0, 1, 1].item() == pytest.approx(0.375, abs=1e-6)


def test_balanced_bce_excludes_invalid_pixels():
    # same as above but pixel (1,0) (e = -ln3, t = 1) is invalid: n1 = 2, n0 = 1 → w0 = 2
    #   L = (ln2 + ln(4/3) + 2·ln2) / 3 valid pixels = (5·ln2 − ln3) / 3 = 0.7890412
    e = torch.tensor([[[[0.0, LN3], [-LN3, 0.0]]]])
    t = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    valid = torch.tensor([[[True, True], [False, True]]])
    expected = (5 * math.log(2) - LN3) / 3
    assert expected == pytest.approx(0.7890412, abs=1e-6)
    assert balanced_bce_loss(e, t, valid).item() == pytest.approx(expected, abs=1e-6)


def test_balanced_bce_no_errors_guard_and_no_valid_pixels():
    # n0 = 0 → weight 1 (no ZeroDivision, no NaN): L = mean BCE(t=1, e=0) = ln2
    e = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = balanced_bce_loss(e, torch.ones(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # no valid pixel → exactly 0, finite and attached to the graph
    loss0 = balanced_bce_loss(e, torch.ones(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))
    assert loss0.item() == 0.0 and loss0.requires_grad
    loss0.backward()
    assert torch.equal(e.grad, torch.zeros_like(e))


def test_balanced_bce_upsamples_logits_and_accepts_bf16():
    # a constant 1×1 logit map upsampled to 2×2 gives the same loss as the full-size map
    t = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    small = balanced_bce_loss(torch.full((1, 1, 1, 1), 0.7).bfloat16(), t, valid)
    full = balanced_bce_loss(torch.full((1, 1, 2, 2), 0.7).bfloat16(), t, valid)
    assert small.dtype == torch.float32
    assert small.item() == pytest.approx(full.item(), abs=1e-6)


def test_balanced_bce_validates_valid_mask():
    with pytest.raises(ELNInputError, match="valid"):
        balanced_bce_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 2), torch.ones(1, 2, 2))


# ------------------------------------------------------------------------------- aux_decoder_gate
@pytest.mark.parametrize("main_ce, expected", [(0.01, 7.02), (0.1, 3.51), (1.0, 0.0)])
def test_aux_gate_spec_example(main_ce, expected):
    # eln.md §2.2: two aux decoders, CE 3.51 each, factors [20, 50]:
    #   L_sup = 0.01: thresholds 0.2, 0.5 → both pass → 3.51 + 3.51 = 7.02
    #   L_sup = 0.1 : thresholds 2.0, 5.0 → only decoder 0 passes → 3.51
    #   L_sup = 1.0 : thresholds 20, 50 → none passes → 0
    aux = torch.tensor([3.51, 3.51], requires_grad=True)
    total = aux_decoder_gate(aux, torch.tensor(main_ce), [20, 50]).sum()
    assert total.item() == pytest.approx(expected, abs=1e-5)
    total.backward()
    n_pass = round(expected / 3.51)
    assert aux.grad.tolist() == [1.0] * n_pass + [0.0] * (2 - n_pass)


def test_aux_gate_boundary_is_inclusive_and_main_gets_no_grad():
    # 2.0 >= 4 · 0.5 = 2.0 → passes (>=); scalar factor broadcasts
    aux = torch.tensor(2.0, requires_grad=True)
    main = torch.tensor(0.5, requires_grad=True)
    out = aux_decoder_gate(aux, main, 4.0)
    assert out.item() == 2.0
    out.backward()
    assert aux.grad.item() == 1.0 and main.grad is None
    assert aux_decoder_gate(torch.tensor(1.99), torch.tensor(0.5), 4.0).item() == 0.0


def test_aux_gate_factor_count_mismatch():
    with pytest.raises(ELNInputError, match="factor"):
        aux_decoder_gate(torch.ones(2), torch.tensor(0.1), [20.0, 50.0, 100.0])


# ------------------------------------------------------------------------------- eln_pseudo_labels
def test_pseudo_labels_logit_zero_is_discarded():
    # teacher argmax = [[1, 0], [2, 1]]; ELN logits [[0, 1e-3], [-2, 3]]:
    #   sigmoid(0) = 0.5 → not > 0.5 → discarded (255); 1e-3 → kept; -2 → discarded; 3 → kept
    z = torch.zeros(1, 3, 2, 2)
    z[0, 1, 0, 0] = z[0, 0, 0, 1] = z[0, 2, 1, 0] = z[0, 1, 1, 1] = 4.0
    e = torch.tensor([[[[0.0, 1e-3], [-2.0, 3.0]]]])
    labels, keep = eln_pseudo_labels(z, e)
    assert torch.equal(keep, torch.tensor([[[False, True], [False, True]]]))
    assert torch.equal(labels, torch.tensor([[[255, 0], [255, 1]]]))
    assert labels.dtype == torch.int64


def test_pseudo_labels_threshold_and_resize():
    # 1×1 ELN logit 1.0 (sigmoid 0.731) upsampled to the 2×2 teacher grid: kept at 0.5, dropped at 0.8
    z = torch.randn(2, 4, 2, 2)
    e = torch.ones(2, 1, 1, 1)
    labels, keep = eln_pseudo_labels(z, e)
    assert bool(keep.all()) and torch.equal(labels, z.argmax(1))
    labels, keep = eln_pseudo_labels(z, e, threshold=0.8, ignore_index=7)
    assert not bool(keep.any()) and bool((labels == 7).all())
    with pytest.raises(ELNInputError, match="threshold"):
        eln_pseudo_labels(z, e, threshold=1.5)
