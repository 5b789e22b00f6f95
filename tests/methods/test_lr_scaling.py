"""``method.optim.scale_lr_with_batch``: the learning rate follows the total labeled batch (opt-in).

Hand-computed: B = per-device batch x devices x nodes x accumulation; linear lr x B/base, sqrt lr x sqrt(B/base).
"""

from __future__ import annotations

import logging

import pytest
import pytorch_lightning as pl
import yaml
from omegaconf import OmegaConf

from semiseg_lit.methods.lr_scaling import lr_batch_factor, resolve_batch_lr
from semiseg_lit.tasks import run_task
from semiseg_lit.tasks.common import build_datamodule, build_method
from tests.conftest import tiny_overrides


def optim(lr=0.01, on=True, base=16, rule="linear"):
    return OmegaConf.create({"lr": lr, "scale_lr_with_batch": on, "base_batch_size": base, "lr_scale_rule": rule})


@pytest.mark.parametrize("global_batch,world,accumulate,base,rule,total,factor", [
    (16, 1, 1, 16, "linear", 16, 1.0),     # the tuned batch: unchanged
    (32, 4, 2, 16, "linear", 64, 4.0),     # 8 per device x 4 devices x 2 accumulated = 64 -> 64/16
    (8, 2, 3, 6, "linear", 24, 4.0),       # ELN VOC base 6: 4 x 2 x 3 = 24 -> 24/6
    (8, 1, 1, 16, "linear", 8, 0.5),       # a smaller batch lowers the rate
    (32, 4, 2, 16, "sqrt", 64, 2.0),       # sqrt(64/16)
    (4, 2, 1, 16, "sqrt", 4, 0.5),         # sqrt(4/16)
])
def test_effective_lr_hand_values(global_batch, world, accumulate, base, rule, total, factor):
    lr = resolve_batch_lr(optim(base=base, rule=rule), global_batch, world, accumulate)
    assert lr.total_batch == total and lr.per_device == global_batch // world
    assert lr.factor == pytest.approx(factor) and lr.effective == pytest.approx(0.01 * factor)
    assert lr.configured == 0.01
    assert lr_batch_factor(total, base, rule) == pytest.approx(factor)


def test_off_keeps_the_configured_rate_whatever_the_batch():
    lr = resolve_batch_lr(optim(on=False), 64, 4, 4)
    assert lr.factor == 1.0 and lr.effective == 0.01 and lr.total_batch == 256 and not lr.enabled
    assert "as configured" in lr.describe()


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match=r"method.optim.lr_scale_rule='cube'"):
        resolve_batch_lr(optim(rule="cube"), 16, 1, 1)
    with pytest.raises(ValueError, match=r"method.optim.base_batch_size=None with method.optim.scale_lr_with_batch"):
        resolve_batch_lr(optim(base=None), 16, 1, 1)
    with pytest.raises(ValueError, match=r"base_batch_size=0"):
        resolve_batch_lr(optim(base=0), 16, 1, 1)
    with pytest.raises(ValueError, match=r"data.labeled_batch_size=6 is not divisible by the 4 device"):
        resolve_batch_lr(optim(), 6, 4, 1)


def test_default_is_off_and_base_is_the_preset_batch(compose_cfg):
    for method, base in (("supervised", 16), ("ael", 16), ("eln", 6)):
        o = compose_cfg([f"method={method}"]).method.optim
        assert o.scale_lr_with_batch is False and o.base_batch_size == base and o.lr_scale_rule == "linear"
    # a reference experiment: the base is its official global batch (ELN Cityscapes: 4)
    assert compose_cfg(["+experiment=eln_cityscapes_1_8"]).method.optim.base_batch_size == 4


def make_method(compose_cfg, synth_root, tmp_path, extra):
    cfg = compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       "method.optim.lr=0.01", "method.optim.head_lr_mult=10", *extra])
    return build_method(cfg, build_datamodule(cfg))


@pytest.mark.parametrize("devices,accumulate,factor", [(1, 1, 2.0), (1, 3, 6.0), (2, 2, 4.0)])
def test_every_param_group_is_scaled_by_the_trainer_batch(compose_cfg, synth_root, tmp_path, caplog, devices,
                                                          accumulate, factor):
    # global labeled batch 4 (tiny_overrides), base 2: B = 4 / devices per device x devices x accumulate
    model = make_method(compose_cfg, synth_root, tmp_path, ["method.optim.scale_lr_with_batch=true",
                                                            "method.optim.base_batch_size=2"])
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         accumulate_grad_batches=accumulate, max_steps=10, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert trainer.world_size == devices
    model.trainer = trainer
    with caplog.at_level(logging.INFO):
        out = model.configure_optimizers()
    groups = {g["name"]: g for g in out["optimizer"].param_groups}
    # backbone x1, head x10 kept: 0.01 f and 0.1 f
    assert groups["backbone"]["lr"] == pytest.approx(0.01 * factor)
    assert groups["head"]["lr"] == pytest.approx(0.1 * factor)
    assert out["lr_scheduler"]["scheduler"].base_lrs == pytest.approx([0.01 * factor, 0.1 * factor])
    assert model.batch_lr.total_batch == 4 * accumulate
    line = f"learning rate: configured 0.01, effective {0.01 * factor:g} = 0.01 x {4 * accumulate} / 2"
    assert line in caplog.text and f"{4 // devices} per device x {devices} device(s) x {accumulate} accumulated" \
        in caplog.text


def test_off_by_default_leaves_groups_and_console_alone(compose_cfg, synth_root, tmp_path, caplog):
    model = make_method(compose_cfg, synth_root, tmp_path, ["method.optim.scheduler=constant",
                                                            "trainer.accumulate_grad_batches=4"])
    with caplog.at_level(logging.INFO):
        opt = model.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.1])
    assert "learning rate" not in caplog.text


@pytest.mark.slow
def test_training_logs_both_rates_and_trains_with_the_effective_one(compose_cfg, synth_root, tmp_path):
    # global batch 4, 2 accumulated, base 2 -> B = 8, factor 4: head lr 0.1 x 4 = 0.4 at step 0 (poly)
    cfg = compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       "method.optim.name=sgd", "method.optim.lr=0.01", "method.optim.head_lr_mult=10",
                       "method.optim.scale_lr_with_batch=true", "method.optim.base_batch_size=2", "trainer.accumulate_grad_batches=2",
                       "trainer.log_every_n_steps=1"])
    run_task(cfg)
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert hparams["optim/lr_configured"] == 0.01 and hparams["optim/lr_effective"] == pytest.approx(0.04)
    assert hparams["optim/total_batch_size"] == 8 and hparams["optim/lr_batch_factor"] == pytest.approx(4.0)
    lines = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("lr-SGD/head")
    first = next(float(row.split(",")[col]) for row in lines[1:] if row.split(",")[col])
    assert first == pytest.approx(0.4)


def test_resume_refuses_a_changed_scaling_rule(compose_cfg, tmp_path):
    from semiseg_lit.checkpointing import CheckpointError
    from semiseg_lit.tasks.train import check_same_schedule

    base = ["+experiment=supervised_synthscapes", *tiny_overrides(tmp_path, tmp_path)]
    saved = OmegaConf.to_container(compose_cfg(base), resolve=True)
    # the restored optimizer state would keep the checkpoint's rates: the switch cannot change on resume
    with pytest.raises(CheckpointError, match=r"method.optim.scale_lr_with_batch=False in the checkpoint, True now"):
        check_same_schedule(saved, "run/last.ckpt", compose_cfg([*base, "method.optim.scale_lr_with_batch=true"]))
    check_same_schedule(saved, "run/last.ckpt", compose_cfg(base))  # unchanged: accepted
