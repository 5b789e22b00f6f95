"""ELN method (eln.md): stage function, loss terms per stage, pseudo labels, teacher events, BN freeze,
parameter groups, validation metrics, and an end-to-end run that resumes inside stage 2 into stage 3."""

from __future__ import annotations

import csv
import math
import shutil

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from semiseg_lit.__main__ import CONFIG_DIR
from semiseg_lit.data.datamodule import resolve_class_info
from semiseg_lit.methods.eln import (
    AuxDecoder,
    ELNMethod,
    eln_stage,
    freeze_bn_affine_,
    kept_rejected_accuracy,
    masked_cross_entropy,
    quarter_grid,
    stage_warnings,
    training_mode,
)
from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides

SIZE = 30  # not a multiple of 32 (student) nor of 16 (ELN) nor of 4 (1/4 grid): exercises padding / cropping
# a 0.6 M-parameter timm encoder for student and ELN keeps steps and checkpoints small
TINY_ENCODER = "tu-mobilenetv3_small_050"
SMALL = [f"model.encoder={TINY_ENCODER}", f"method.eln.encoder={TINY_ENCODER}", "model.decoder_channels=16",
         "method.eln.decoder_channels=16", "method.eln.n_crops=2", "method.eln.crop_size=4",
         "method.eln.pretrain_steps=2", "method.eln.eln_steps=3",
         # the ELN method's own optimiser (conf/method/eln.yaml; eln_synthscapes trains with SGD)
         "method.optim.name=adamw", "method.optim.lr=1e-4", "method.optim.weight_decay=1e-5",
         "method.optim.backbone_lr_mult=0.1", "method.optim.head_lr_mult=1.0", "method.optim.scheduler=constant"]


def _cfg(tmp_path, extra=()):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=[
                "+experiment=eln_synthscapes", *tiny_overrides(tmp_path / "synth", tmp_path / "out"), *SMALL,
                *extra])
    finally:
        GlobalHydra.instance().clear()


def make_method(tmp_path, extra=()) -> ELNMethod:
    torch.manual_seed(0)
    cfg = _cfg(tmp_path, extra)
    return ELNMethod(cfg, resolve_class_info(cfg.data))


def make_batch(b: int = 2, size: int = SIZE, c: int = 10, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (b, size, size), generator=g)
    y[:, :3] = 255
    xu = torch.randn(b, 3, size, size, generator=g)
    x = torch.randn(b, 3, size, size, generator=g)
    return {"labeled": {"image": x, "mask": y, "index": torch.arange(b)},
            "unlabeled": {"image": xu, "image_strong": xu + 0.3 * torch.randn(xu.shape, generator=g),
                          "index": torch.arange(b), "mask": torch.randint(0, c, (b, size, size), generator=g)}}


@pytest.fixture(scope="module")
def method(tmp_path_factory) -> ELNMethod:
    """One shared tiny model for tests that do not change it (pretrain 2, eln 3: stage 3 from step 5)."""
    return make_method(tmp_path_factory.mktemp("eln"))


# ----------------------------------------------------------------------------------------- pure functions
def test_eln_stage_boundaries():
    # VOC reference: [0, 18620) stage 1, [18620, 31920) stage 2, then stage 3 (eln.md §1)
    assert [eln_stage(s, 18620, 13300) for s in (0, 18619, 18620, 31919, 31920, 133000)] == [1, 1, 2, 2, 3, 3]
    assert eln_stage(0, 0, 0) == 3 and eln_stage(0, 0, 5) == 2 and eln_stage(4, 0, 5) == 2
    with pytest.raises(ValueError, match="pretrain_steps=-1"):
        eln_stage(0, -1, 5)


def test_stage_warnings_name_the_unreached_stage():
    assert stage_warnings(200, 200, 800) == []
    assert stage_warnings(200, 200, -1) == []          # no step limit
    (msg,) = stage_warnings(200, 200, 400)
    assert "stage 3" in msg and "400" in msg
    (msg,) = stage_warnings(800, 0, 800)
    assert "stage 2" in msg and "pretrain_steps=800" in msg


def test_masked_cross_entropy_hand_example_and_all_ignored():
    # pixel 0: logits (0, 0), label 0 -> CE = log 2; pixel 1: ignored. Mean over valid = log 2.
    logits = torch.zeros(1, 2, 1, 2, requires_grad=True)
    labels = torch.tensor([[[0, 255]]])
    assert float(masked_cross_entropy(logits, labels).detach()) == pytest.approx(math.log(2))
    # every pixel ignored: 0 (F.cross_entropy would give NaN), still differentiable
    loss = masked_cross_entropy(logits, torch.full_like(labels, 255))
    loss.backward()
    assert float(loss) == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_quarter_grid_hand_example():
    # 5x5 map whose value is the column index 0..4; grid 2x2. Edge padding to 8x8 repeats column 4:
    # cell column 0 covers columns 0..3 -> mean 1.5; cell column 1 covers 4,4,4,4 -> 4.
    x = torch.arange(5.0).repeat(5, 1)[None, None]
    assert torch.equal(quarter_grid(x, (2, 2)), torch.tensor([[[[1.5, 4.0], [1.5, 4.0]]]]))
    with pytest.raises(ValueError, match="4×4 cells"):
        quarter_grid(x, (3, 2))


def test_kept_rejected_accuracy_hand_example():
    # 1x2 grid: cell 0 predicts 0 and is kept, cell 1 predicts 1 and is rejected; GT 4x8.
    # left 4x4 block: GT 0 except one ignore pixel and one pixel of class 2 -> kept acc 14/15;
    # right block: GT 1 everywhere -> rejected acc 16/16.
    yhat, keep = torch.tensor([[[0, 1]]]), torch.tensor([[[True, False]]])
    gt = torch.zeros(1, 4, 8, dtype=torch.long)
    gt[..., 4:] = 1
    gt[0, 0, 0], gt[0, 1, 1] = 255, 2
    acc_kept, acc_rej = kept_rejected_accuracy(yhat, keep, gt)
    assert float(acc_kept) == pytest.approx(14 / 15) and float(acc_rej) == pytest.approx(1.0)
    # nothing kept -> 0, not NaN
    acc_kept, _ = kept_rejected_accuracy(yhat, torch.zeros_like(keep), gt)
    assert float(acc_kept) == 0.0


def test_freeze_bn_affine_and_training_mode():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    assert freeze_bn_affine_(net) == 2
    assert not net[1].weight.requires_grad and not net[1].bias.requires_grad and net[0].weight.requires_grad
    net[2].eval()
    with training_mode(net, False):
        assert not any(m.training for m in net.modules())
    assert net[0].training and net[1].training and not net[2].training  # per-module modes restored


def test_aux_decoder_shape_and_detached_features():
    enc_channels = (3, 8, 8, 16, 16, 32)
    dec = AuxDecoder(enc_channels, num_classes=5, decoder_channels=8, atrous_rates=(1, 2, 3), output_stride=16,
                     aspp_separable=False, aspp_dropout=0.1)
    sizes = (64, 32, 16, 8, 4, 4)  # smp ResNet stages of a 64x64 input at output stride 16
    feats = [torch.randn(2, c, s, s, requires_grad=True) for c, s in zip(enc_channels, sizes)]
    z = dec(feats, (60, 62))
    assert z.shape == (2, 5, 60, 62)
    z.sum().backward()
    assert all(f.grad is None for f in feats)  # the encoder gets nothing from the aux decoders
    assert dec.head[0].weight.grad is not None


# ----------------------------------------------------------------------------------------- the module
def test_construction_checks(tmp_path):
    # the method brings its projection head: model.projection_dim=null -> method.eln.projection_dim
    brought = make_method(tmp_path, ["model.projection_dim=null", "method.eln.projection_dim=24"])
    assert brought.cfg.model.projection_dim == 24 and brought.student.projection_head is not None
    with pytest.raises(ValueError, match=r"set model\.projection_dim=128"):
        make_method(tmp_path, ["model.projection_dim=null", "method.eln.projection_dim=0"])
    with pytest.raises(ValueError, match="reset_every_steps"):
        make_method(tmp_path, ["method.eln.parity.reset_every_steps=0"])


def test_loss_terms_per_stage(method):
    batch = make_batch()
    s1, d1 = method.compute_losses(batch, step=1)
    assert set(s1) == {"sup"} and d1 == {}
    s2, d2 = method.compute_losses(batch, step=2)
    assert set(s2) == {"sup", "aux", "eln"}
    assert {"aux0_ce", "aux1_ce", "eln_aux0", "eln_aux1", "eln_main"} <= set(d2)
    # the ELN term is the sum of its three BCEs (aux0, aux1, main)
    assert float(s2["eln"]) == pytest.approx(float(d2["eln_aux0"] + d2["eln_aux1"] + d2["eln_main"]), rel=1e-6)
    # fresh aux decoders: CE ~ log(10) < 20 x main CE -> gated off
    assert float(s2["aux"]) == 0.0 and float(d2["aux0_gate_open"]) == 0.0
    s3, d3 = method.compute_losses(batch, step=5)
    assert set(s3) == {"sup", "aux", "eln", "pl_weak", "pl_strong", "con_weak", "con_strong"}
    assert {"kept_frac", "pl_acc_kept", "pl_acc_rejected"} <= set(d3)
    assert all(torch.isfinite(v) for v in s3.values())
    assert 0.0 <= float(d3["kept_frac"]) <= 1.0


def test_gate_passes_aux_loss_when_factors_are_zero(tmp_path):
    m = make_method(tmp_path, ["method.eln.aux_gate_factors=[0.0,0.0]"])
    terms, diag = m.compute_losses(make_batch(), step=2)
    assert float(terms["aux"]) == pytest.approx(float(diag["aux0_ce"] + diag["aux1_ce"]), rel=1e-6)
    assert float(diag["aux1_gate_open"]) == 1.0


def test_pseudo_labels_follow_the_eln_mask(method):
    x = make_batch()["unlabeled"]["image"]
    head = method.eln.head[-1]
    saved = head.weight.detach().clone(), head.bias.detach().clone()
    try:
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(50.0)   # ELN says "correct" everywhere -> every teacher label kept
        labels, keep, yhat, proj = method.pseudo_labels(x)
        h = -(-SIZE // 4)
        assert labels.shape == keep.shape == yhat.shape == (2, h, h) and proj.shape == (2, 128, h, h)
        assert bool(keep.all()) and torch.equal(labels, yhat)
        with torch.no_grad():
            head.bias.fill_(-50.0)  # "wrong" everywhere -> nothing kept
        labels, keep, _, _ = method.pseudo_labels(x)
        assert not bool(keep.any()) and bool((labels == 255).all())
    finally:
        with torch.no_grad():
            head.weight.copy_(saved[0])
            head.bias.copy_(saved[1])


def test_no_kept_pixel_gives_finite_loss(tmp_path):
    m = make_method(tmp_path)
    with torch.no_grad():
        m.eln.head[-1].weight.zero_()
        m.eln.head[-1].bias.fill_(-50.0)
    terms, diag = m.compute_losses(make_batch(), step=5)
    loss = torch.stack(list(terms.values())).sum()
    assert bool(torch.isfinite(loss)) and float(diag["kept_frac"]) == 0.0
    for k in ("pl_weak", "pl_strong", "con_weak", "con_strong"):
        assert float(terms[k]) == 0.0, k
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.student.parameters() if p.grad is not None)


def test_teacher_copied_at_stage3_start_and_student_reset(tmp_path):
    m = make_method(tmp_path, ["method.eln.parity.reset_every_steps=4"])  # stage 3 from step 5
    first = next(m.student.parameters())
    with torch.no_grad():
        first.add_(1.0)  # student moved away from the initial teacher
    t_first = next(m.teacher.parameters())
    m.apply_stage_transitions(4)
    assert not torch.equal(first, t_first) and not bool(m.teacher_ready)
    assert m.eval_network() is m.student
    m.apply_stage_transitions(5)  # first stage-3 step: teacher <- student
    assert torch.equal(first, t_first) and bool(m.teacher_ready)
    with torch.no_grad():
        first.add_(1.0)
    m.apply_stage_transitions(6)  # neither a start nor a reset step
    assert not torch.equal(first, t_first)
    m.apply_stage_transitions(9)  # 5 + 4: student <- teacher
    assert torch.equal(first, t_first)


def test_param_groups_cover_everything_but_the_teacher(method):
    groups = {g["name"]: g for g in method.param_groups()}
    assert set(groups) == {"backbone", "head", "eln_backbone", "eln_head", "aux_decoders"}
    lr = {name: g["lr"] for name, g in groups.items()}
    assert lr["backbone"] == pytest.approx(1e-5) and lr["eln_backbone"] == pytest.approx(1e-5)
    assert lr["head"] == lr["eln_head"] == lr["aux_decoders"] == pytest.approx(1e-4)
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids))
    expected = {id(p) for mod in (method.student, method.eln, method.aux_decoders) for p in mod.parameters()}
    assert set(ids) == expected
    assert not any(p.requires_grad for p in method.teacher.parameters())
    opt = method.configure_optimizers()  # constant LR: a bare AdamW
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == pytest.approx(1e-5)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_affine_parity_keeps_bn_weights(tmp_path, freeze):
    m = make_method(tmp_path, [f"method.eln.parity.freeze_bn_affine={str(freeze).lower()}"])
    bn, conv, eln_bn = (next(x for x in mod.modules() if isinstance(x, kind)) for mod, kind in (
        (m.student.encoder, torch.nn.BatchNorm2d), (m.student.encoder, torch.nn.Conv2d),
        (m.eln.encoder, torch.nn.BatchNorm2d)))
    before = bn.weight.detach().clone(), conv.weight.detach().clone(), eln_bn.weight.detach().clone()
    opt = m.configure_optimizers()
    terms, _ = m.compute_losses(make_batch(), step=2)  # stage 2: student, aux decoders and ELN get gradients
    torch.stack(list(terms.values())).sum().backward()
    opt.step()
    assert torch.equal(bn.weight, before[0]) == freeze
    assert not torch.equal(conv.weight, before[1])
    assert not torch.equal(eln_bn.weight, before[2])  # the ELN is always fully trained (eln.md §5.1)
    aux_bn = [p for mod in m.aux_decoders.modules() if isinstance(mod, torch.nn.BatchNorm2d)
              for p in mod.parameters()]
    assert all(p.requires_grad != freeze for p in aux_bn)


def test_validation_eln_metrics(method):
    method.eval()
    try:
        b = make_batch()["labeled"]
        method.update_eln_metrics(b["image"], b["mask"])
        for metric in (method.val_eln_precision, method.val_eln_recall, method.val_eln_auroc):
            value = float(metric.compute())
            assert 0.0 <= value <= 1.0
            metric.reset()
    finally:
        method.train()
        method._val_eln_updated = False


# ----------------------------------------------------------------------------------------- end to end
def _train_rows(csv_path):
    """The per-step training rows of a run's CSV log, in step order (a resumed run starts a new file)."""
    rows = [r for r in csv.DictReader(csv_path.open()) if r.get("train/stage")]
    return sorted(rows, key=lambda r: int(r["step"]))


@pytest.mark.slow
def test_resume_inside_stage2_then_stage3_with_pseudo_labels(compose_cfg, synth_root, tmp_path):
    """pretrain 1, eln 2: steps 0 | 1, 2 | 3. Train 2 steps (warns: stage 3 out of reach), resume to 4."""
    common = ["+experiment=eln_synthscapes", *tiny_overrides(synth_root, tmp_path), *SMALL,
              "method.eln.pretrain_steps=1", "method.eln.eln_steps=2", "data.crop_size=32",
              "data.labeled_batch_size=2", "data.unlabeled_batch_size=2", "trainer.limit_val_batches=1",
              "trainer.log_every_n_steps=1"]
    with pytest.warns(UserWarning, match="stage 3 starts at step"):
        run_task(compose_cfg([*common, "trainer.max_steps=2"]))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    shutil.copy(ckpt, tmp_path / "step2.ckpt")
    first = _train_rows(tmp_path / "csv" / "metrics.csv")
    assert [float(r["train/stage"]) for r in first] == [1.0, 2.0]
    assert not first[0].get("train/eln") and first[1]["train/eln"]
    run_task(compose_cfg([*common, "trainer.max_steps=4", "ckpt_path=last", "resume_check=warn"]))

    rows = _train_rows(tmp_path / "csv" / "metrics.csv")  # steps 2 and 3 of the resumed run
    assert [float(r["train/stage"]) for r in rows] == [2.0, 3.0]
    assert rows[0]["train/eln"] and not rows[0].get("train/pl_weak")  # resumed inside stage 2
    for key in ("train/pl_weak", "train/pl_strong", "train/con_weak", "train/kept_frac", "train/pl_acc_kept"):
        assert math.isfinite(float(rows[1][key])), key
    metrics = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert any(r.get("val_eln/auroc") for r in metrics)

    a = torch.load(tmp_path / "step2.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert b["global_step"] == 4
    assert not bool(a["state_dict"]["teacher_ready"]) and bool(b["state_dict"]["teacher_ready"])
    assert b["callbacks"]["EMATeacher"]["updates"] == 1 and b["callbacks"]["EMATeacher"]["start_step"] == 3
    key = next(k for k in a["state_dict"] if k.startswith("teacher.") and k.endswith("weight"))
    assert not torch.equal(a["state_dict"][key], b["state_dict"][key])  # teacher copied + EMA in stage 3


def test_configure_callbacks_returns_the_same_teacher_callback_every_time(method):
    """Lightning calls configure_callbacks for fit and again for the final validate: the second call
    must not replace the trained EMA-teacher state with a fresh callback."""
    first, second = method.configure_callbacks(), method.configure_callbacks()
    assert len(first) == 1 and first[0] is second[0]
