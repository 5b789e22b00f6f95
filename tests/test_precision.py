"""Mixed precision: ``trainer.precision=bf16-mixed`` trains every method on the CPU, and the numerically
sensitive parts (softmax statistics, confidence bank, BCE, contrastive exp-sums, CE) are computed in
float32 even inside an autocast region with bf16 inputs."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from semiseg_lit.callbacks.confidence_bank import ConfidenceBank
from semiseg_lit.methods.eln import masked_cross_entropy
from semiseg_lit.ops.confidence import class_confidence, equalization_keep_rate
from semiseg_lit.ops.contrastive import pixel_contrastive_loss
from semiseg_lit.ops.eln_targets import balanced_bce_loss, eln_inputs, entropy_map
from semiseg_lit.ops.ema import ema_update_
from semiseg_lit.ops.losses import ohem_cross_entropy, pseudo_labels, weighted_pseudo_label_loss
from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides

C = 10


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def inputs(seed: int = 0, b: int = 2, h: int = 16, w: int = 16):
    """bf16 logits (as a network under autocast returns them), labels with ignore pixels."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(b, C, h, w, generator=g)).to(torch.bfloat16)
    y = torch.randint(0, C, (b, h, w), generator=g)
    y[:, :2] = 255
    return logits, y


def close_to_fp64(value: torch.Tensor, reference: torch.Tensor) -> None:
    """float32 result within float32 rounding of the float64 one (a bf16 computation is ~1e-2 off)."""
    assert value.dtype == torch.float32
    assert torch.allclose(value.double(), reference.double(), rtol=1e-5, atol=1e-6), (value, reference)


# ----------------------------------------------------------------------------------------- ops in float32
def test_cross_entropy_losses_are_float32_under_bf16_autocast():
    logits, y = inputs()
    ref_ce = F.cross_entropy(logits.double(), y, ignore_index=255)
    with bf16_autocast():
        ohem = ohem_cross_entropy(logits, y, min_kept=0)
        masked = masked_cross_entropy(logits, y)
    close_to_fp64(ohem, ref_ce)
    close_to_fp64(masked, ref_ce)


def test_pseudo_labels_and_reweighted_loss_are_float32_under_bf16_autocast():
    logits, y = inputs()
    teacher, _ = inputs(seed=1)
    keep = (torch.rand(y.shape, generator=torch.Generator().manual_seed(2)) > 0.3).float()
    p = torch.softmax(teacher.double(), 1)
    ref_conf, ref_lab = p.max(1)
    ce = F.cross_entropy(logits.double(), ref_lab, reduction="none")
    weight = ref_conf.pow(2.0) * keep
    ref = (weight * ce).sum() / (weight.sum() + 1e-12)
    with bf16_autocast():
        conf, lab = pseudo_labels(teacher)
        loss = weighted_pseudo_label_loss(logits, lab, conf, keep=keep, gamma=2.0)
    close_to_fp64(conf, ref_conf)
    assert torch.equal(lab, ref_lab)
    close_to_fp64(loss, ref)


def test_confidence_statistics_and_bank_stay_float32_under_bf16_autocast():
    logits, y = inputs()
    probs = torch.softmax(logits.float(), 1).to(torch.bfloat16)  # a bf16 softmax handed in
    valid = y != 255
    p_gt = probs.double().gather(1, torch.where(valid, y, 0).unsqueeze(1)).squeeze(1)
    ref = torch.stack([p_gt[valid & (y == c)].sum() / ((valid & (y == c)).sum() + 1e-12) for c in range(C)])
    bank = ConfidenceBank(C, momentum=0.9, init="zeros")
    with bf16_autocast():
        conf, present = class_confidence(probs, y, C)
        updated = bank.update(probs, y)
        rate = equalization_keep_rate(updated)
    close_to_fp64(conf, ref)
    close_to_fp64(updated, 0.1 * ref)
    assert bank.bank.dtype == torch.float32 and rate.dtype == torch.float32


def test_eln_entropy_inputs_and_bce_are_float32_under_bf16_autocast():
    logits, y = inputs()
    images = torch.randn(2, 3, 16, 16)
    log_p = F.log_softmax(logits.double(), 1)
    ref_entropy = -(log_p.exp() * log_p).sum(1, keepdim=True)
    e = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    t = (torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.4).float()
    valid = y != 255
    bce = F.binary_cross_entropy_with_logits(e.double().squeeze(1), t.double(), reduction="none")
    n1, n0 = ((t > 0.5) & valid).sum(), ((t < 0.5) & valid).sum()
    weight = torch.where(t > 0.5, 1.0, n1 / n0).double() * valid
    ref_bce = (bce * weight).sum() / valid.sum()
    with bf16_autocast():
        ent = entropy_map(logits)
        x = eln_inputs(images, logits)
        loss = balanced_bce_loss(e, t, valid)
    close_to_fp64(ent, ref_entropy)
    assert x.dtype == torch.float32 and x.shape[1] == 3 + 1 + C
    close_to_fp64(loss, ref_bce)


def test_contrastive_exp_sums_are_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(5)
    anchor = torch.randn(2, 8, 6, 6, generator=g).to(torch.bfloat16)
    key = torch.randn(2, 8, 6, 6, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 3, (2, 6, 6), generator=g)
    a = F.normalize(anchor.double().permute(0, 2, 3, 1).reshape(-1, 8), dim=1)
    k = F.normalize(key.double().permute(0, 2, 3, 1).reshape(-1, 8), dim=1)
    lab = labels.reshape(-1)
    per_class = []
    for c in range(3):  # eln.md §4.3 written out per class, in float64
        pos, neg = lab == c, lab != c
        p = torch.exp(a[pos] @ k[pos].t() / 0.1).sum()
        n = torch.exp(a[pos] @ k[neg].t() / 0.1).sum()
        per_class.append(-torch.log(p / (p + n)) / pos.sum())
    ref = torch.stack(per_class).mean()  # both windows are the whole 6x6 map
    with bf16_autocast():
        loss = pixel_contrastive_loss(anchor, key, labels, tau=0.1, n_crops=2, crop_size=6)
    close_to_fp64(loss, ref)


def test_ema_keeps_float32_teacher_under_bf16_autocast():
    student, teacher = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    expected = [0.5 * t + 0.5 * s for t, s in zip(teacher.parameters(), student.parameters())]
    with bf16_autocast():
        ema_update_(teacher, student, 0.5)
    for p, e in zip(teacher.parameters(), expected):
        assert p.dtype == torch.float32 and torch.allclose(p, e)


# ----------------------------------------------------------------------------------------- end to end
TINY_ELN = [f"{k}=tu-mobilenetv3_small_050" for k in ("model.encoder", "method.eln.encoder")] + [
    "model.decoder_channels=16", "method.eln.decoder_channels=16", "method.eln.n_crops=2", "method.eln.crop_size=4",
    "method.eln.pretrain_steps=0", "method.eln.eln_steps=1"]  # step 0: stage 2, step 1: stage 3
EXPERIMENTS = {"supervised": [], "ael": ["method.ael.labeled_consistency=true"], "eln": TINY_ELN}


def logged_losses(out) -> dict[str, list[float]]:
    """``train/*`` values of the CSV log (``<out>/csv/metrics.csv``), by name."""
    with open(out / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    values: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if k.startswith("train/") and v not in ("", None):
                values.setdefault(k, []).append(float(v))
    return values


@pytest.mark.slow
@pytest.mark.parametrize("method", list(EXPERIMENTS))
def test_bf16_mixed_trains_two_steps_with_finite_losses(compose_cfg, synth_root, tmp_path, method):
    cfg = compose_cfg([f"+experiment={method}_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       *EXPERIMENTS[method], "trainer.precision=bf16-mixed", "trainer.log_every_n_steps=1"])
    miou = run_task(cfg)
    assert 0.0 <= miou <= 1.0
    losses = logged_losses(tmp_path)
    assert len(losses["train/loss"]) == 2, losses
    assert all(math.isfinite(v) for vs in losses.values() for v in vs), losses
    if method == "ael":
        assert {"train/unsup_unlabeled", "train/unsup_labeled"} <= set(losses)
    if method == "eln":  # the stage-3 terms ran under autocast too
        assert {"train/eln", "train/pl_strong", "train/con_strong"} <= set(losses)
