import pytest
import torch

from semiseg_lit.methods.base import poly_lr_factor
from semiseg_lit.tasks.common import build_datamodule, build_method
from tests.conftest import tiny_overrides


def test_poly_lr_factor_hand_values():
    # (1 - k/K)^0.9: k=0 -> 1; k=K/2 -> 0.5^0.9; k=K -> 0
    assert poly_lr_factor(0, 100) == 1.0
    assert poly_lr_factor(50, 100) == pytest.approx(0.5 ** 0.9)
    assert poly_lr_factor(100, 100) == 0.0
    assert poly_lr_factor(0, 100, warmup_steps=4) == 0.25


def test_param_groups_and_loss_choice(compose_cfg, synth_root, tmp_path):
    cfg = compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       "method.optim.lr=0.01", "method.optim.head_lr_mult=10"])
    dm = build_datamodule(cfg)
    model = build_method(cfg, dm)
    groups = {g["name"]: g for g in model.param_groups()}
    assert groups["backbone"]["lr"] == pytest.approx(0.01) and groups["head"]["lr"] == pytest.approx(0.1)
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == sum(p.numel() for p in model.student.parameters())
    logits = torch.randn(2, 10, 8, 8)
    target = torch.randint(0, 10, (2, 8, 8))
    target[0, 0, 0] = 255
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert model.supervised_loss(logits, target) == pytest.approx(float(ce))
    model.cfg.method.loss.name = "dice"
    with pytest.raises(ValueError, match="dice"):
        model.supervised_loss(logits, target)
