"""UniMatch V2 method wiring (the pure ops are tested in tests/ops/test_unimatch_v2_ops.py): the loss of a
step by hand, the feature-dropout hook, the data views, option checks, and a 2-step run on synthscapes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import semiseg_lit.methods.unimatch_v2 as uv2_mod
from semiseg_lit.__main__ import CONFIG_DIR
from semiseg_lit.callbacks.ema_teacher import EMATeacher
from semiseg_lit.data.datamodule import resolve_class_info
from semiseg_lit.data.transforms import UnlabeledTransform
from semiseg_lit.methods.unimatch_v2 import UniMatchV2Method
from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides


def _cfg(tmp_path, *overrides):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=[
                "method=unimatch_v2", "data=synthscapes", *tiny_overrides(tmp_path / "synth", tmp_path / "out"),
                *overrides])
    finally:
        GlobalHydra.instance().clear()


def _method(tmp_path, *overrides) -> UniMatchV2Method:
    cfg = _cfg(tmp_path, *overrides)
    return UniMatchV2Method(cfg, resolve_class_info(cfg.data))


def _batch(b_l=2, b_u=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_w = torch.randn(b_u, 3, size, size, generator=g)
    return {
        "labeled": {"image": torch.randn(b_l, 3, size, size, generator=g),
                    "mask": torch.randint(0, 10, (b_l, size, size), generator=g)},
        "unlabeled": {"image": x_w, "image_strong": x_w.clone(), "image_strong2": x_w.clone(),
                      "valid": torch.ones(b_u, size, size, dtype=torch.bool), "index": torch.arange(b_u)},
    }


def test_step_loss_by_hand_without_cutmix_and_dropout(tmp_path):
    # tau = 0, no CutMix, no dropout, strong views = the weak view, teacher = student (eval mode): the
    # unsupervised loss is the CE of the network against its own argmax on the valid pixels, divided by
    # the valid count; the step loss = 1/2 sup + 1/2 (L_s1 + L_s2) / 2
    m = _method(tmp_path, "method.unimatch_v2.conf_thresh=0.0", "method.unimatch_v2.cutmix=false",
                "method.unimatch_v2.feature_dropout=false")
    m.student.eval()
    batch = _batch()
    valid = batch["unlabeled"]["valid"]
    valid[0, :10] = False  # padding rows of image 0
    loss = m.training_step(batch, 0)
    with torch.no_grad():
        z_l, z_u = m.student(batch["labeled"]["image"]), m.student(batch["unlabeled"]["image"])
        sup = F.cross_entropy(z_l, batch["labeled"]["mask"], ignore_index=255)
        ce = F.cross_entropy(z_u, z_u.argmax(1), reduction="none")
        unsup = (ce * valid).sum() / valid.sum()
    assert torch.allclose(loss, 0.5 * sup + 0.5 * unsup, rtol=1e-5)
    # tau = 1: no pseudo-label passes, only the supervised half is left
    m.uv2.conf_thresh = 1.0
    assert torch.allclose(m.training_step(batch, 0), 0.5 * sup, rtol=1e-5)


def test_feature_dropout_hook_sees_both_strong_views(tmp_path, monkeypatch):
    m = _method(tmp_path)
    seen = []
    real = uv2_mod.complementary_channel_dropout

    def spy(features, gens, drop_prob):
        seen.append(([tuple(f.shape) for f in features], len(gens), drop_prob))
        return real(features, gens, drop_prob=drop_prob)

    monkeypatch.setattr(uv2_mod, "complementary_channel_dropout", spy)
    m.training_step(_batch(b_u=4), 0)
    assert len(seen) == 1
    shapes, groups, prob = seen[0]
    assert groups == 1 and prob == 0.5
    # resnet18 stages 1-5 of the [view 1; view 2] batch (2 x 4 images); the identity stage is not passed
    assert [s[:2] for s in shapes] == [(8, 64), (8, 64), (8, 128), (8, 256), (8, 512)]


def test_feature_transform_applies_to_the_decoder_input(tmp_path):
    net = _method(tmp_path).student.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = net.forward_all(x).logits
        same = net.forward_all(x, feature_transform=lambda fs: fs).logits
        zeroed = net.forward_all(x, feature_transform=lambda fs: [f * 0 for f in fs]).logits
    assert torch.equal(plain, same) and not torch.allclose(plain, zeroed)


def test_callbacks_options_and_streams(tmp_path):
    m = _method(tmp_path, "method.unimatch_v2.ema_decay=0.996")  # the official cap (the default is auto)
    first, second = m.configure_callbacks(), m.configure_callbacks()
    assert [type(c) for c in first] == [EMATeacher] and first[0] is second[0]
    ema = first[0]
    assert (ema.decay, ema.warmup, ema.average_buffers) == (0.996, True, True)
    cfg = m.cfg
    assert UniMatchV2Method.required_streams(cfg) == ("labeled", "unlabeled")
    assert UniMatchV2Method.unlabeled_options(cfg) == {"strong_views": 2, "padding_mask": True}
    assert _method(tmp_path, "method.unimatch_v2.virtual_ranks=2").groups == 2
    for override, key in [("method.unimatch_v2.conf_thresh=1.5", "conf_thresh"),
                          ("method.unimatch_v2.cutmix_area=[0.5,0.1]", "cutmix_area"),
                          ("method.unimatch_v2.virtual_ranks=0", "virtual_ranks")]:
        with pytest.raises(ValueError, match=f"method.unimatch_v2.{key}"):
            _method(tmp_path, override)


def test_feature_dropout_needs_the_hook(tmp_path, monkeypatch):
    class NoHook(torch.nn.Module):
        def forward_all(self, x):
            return x

    monkeypatch.setattr(UniMatchV2Method, "build_network", lambda self: NoHook())
    with pytest.raises(ValueError, match="feature_dropout=false"):
        _method(tmp_path)


def test_unlabeled_transform_second_strong_view_and_padding_mask():
    import albumentations as A

    t = UnlabeledTransform(crop=32, scale_range=[0.5, 0.5], hflip=True, pad_label=255, mean=[0.5] * 3,
                           std=[0.25] * 3, strong=[A.ColorJitter(0.5, 0.5, 0.5, 0.25, p=1.0)], strong_views=2,
                           padding_mask=True)
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    out = t(image, seed=3)
    # 40 x 30 scaled by 0.5 = 20 x 15 image pixels in the 32 x 32 crop, the rest padding
    assert out["valid"].dtype == torch.bool and int(out["valid"].sum()) == 20 * 15
    assert float(out["image"][:, ~out["valid"]].abs().max()) < 0.01  # padding = mean colour
    assert not torch.equal(out["image_strong"], out["image_strong2"])  # independent photometric draws
    again = t(image, seed=3)
    assert all(torch.equal(out[k], again[k]) for k in out)  # the sample seed fixes every view
    plain = UnlabeledTransform(crop=32, scale_range=[0.5, 0.5], hflip=True, pad_label=255, mean=[0.5] * 3,
                               std=[0.25] * 3)(image, seed=3)
    assert set(plain) == {"image", "image_strong"}


@pytest.mark.slow
def test_unimatch_v2_trains_two_steps_with_a_small_resnet(synth_root, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "method=unimatch_v2", "data=synthscapes", *tiny_overrides(synth_root, tmp_path / "run"),
            "method.unimatch_v2.ema_decay=0.996"])  # auto would make a 2-step teacher a copy of the student
    GlobalHydra.instance().clear()
    miou = run_task(cfg)
    assert 0.0 <= miou <= 1.0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    teacher = {k for k in state["state_dict"] if k.startswith("teacher.")}
    student = {k for k in state["state_dict"] if k.startswith("student.")}
    assert teacher and {k.replace("teacher.", "student.", 1) for k in teacher} == student
    ema = [v for k, v in state["callbacks"].items() if k.startswith("EMATeacher")]
    assert len(ema) == 1 and ema[0]["updates"] == 2
    # step 0: d = 0 (teacher := student after step 0); step 1: d = 1/2 -> the teacher is not the student
    sd = state["state_dict"]
    assert any(not torch.equal(sd[k], sd[k.replace("teacher.", "student.", 1)]) for k in teacher
               if sd[k].is_floating_point())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0


def test_virtual_ranks_that_do_not_split_the_batch_name_the_method_key(tmp_path):
    from semiseg_lit.errors import UserError
    from semiseg_lit.tasks.common import check_run_options

    with pytest.raises(UserError, match=r"data.labeled_batch_size=4 \(global\) does not split over "
                                        r"method.unimatch_v2.virtual_ranks=3 emulated GPUs"):
        check_run_options(_cfg(tmp_path, "method.unimatch_v2.virtual_ranks=3"), "fit")
