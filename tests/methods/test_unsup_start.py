"""Schedule-aware start (issue 16) in real tiny runs: a supervised warm-up, then the ramp of the
unsupervised weight, while the AEL banks and the EMA teacher keep updating during the warm-up."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides
from tests.methods.test_eln import SMALL


def _train_rows(out, key):
    rows = [r for r in csv.DictReader((out / "csv" / "metrics.csv").open()) if r.get(key)]
    return sorted(rows, key=lambda r: int(r["step"]))


@pytest.mark.slow
def test_ael_warmup_then_sigmoid_ramp_while_banks_and_teacher_update(compose_cfg, synth_root, tmp_path):
    """warm-up 2, ramp 2 over 5 steps: w = 0, 0, exp(-5), exp(-1.25), 1. During the warm-up the unsupervised
    terms are exactly 0 (the loss is the supervised one), yet the confidence bank leaves its initial values,
    the CutMix image bank fills and the teacher follows the student."""
    from semiseg_lit.callbacks.confidence_bank import ConfidenceBank

    cfg = compose_cfg(["+experiment=ael_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       "trainer.max_steps=5", "trainer.val_check_interval=5", "trainer.log_every_n_steps=1",
                       "method.unsup_warmup_steps=2", "method.unsup_rampup_steps=2", "method.ael.threshold=0.0",
                       "method.ael.bank_momentum=0.5", "method.ael.labeled_consistency=true"])
    run_task(cfg)
    rows = _train_rows(tmp_path, "train/unsup_weight")
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    weights = [float(r["train/unsup_weight"]) for r in rows]
    assert weights == pytest.approx([0.0, 0.0, math.exp(-5), math.exp(-1.25), 1.0])
    for r in rows[:2]:  # the warm-up: supervised loss only
        assert float(r["train/unsup_unlabeled"]) == 0.0 and float(r["train/unsup_labeled"]) == 0.0
        assert float(r["train/loss"]) == pytest.approx(float(r["train/sup"]))
    assert float(rows[4]["train/unsup_unlabeled"]) > 0.0
    assert float(rows[4]["train/loss"]) > float(rows[4]["train/sup"])

    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    initial = ConfidenceBank(10, seed=int(cfg.seed)).bank
    assert not torch.allclose(state["callbacks"]["ConfidenceBank"]["bank"], initial)  # 5 updates at 0.5
    assert state["callbacks"]["EMATeacher"]["updates"] == 5
    assert bool(state["callbacks"]["CutMixBank"]["bank"].any())  # [C, N] "image n contains class c", filled


@pytest.mark.slow
def test_eln_ramp_counts_from_the_stage3_start(compose_cfg, synth_root, tmp_path):
    """pretrain 1, eln 1: stage 3 from step 2; ramp 2: w = exp(-5), exp(-1.25) at steps 2, 3."""
    cfg = compose_cfg(["+experiment=eln_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       *SMALL, "method.eln.pretrain_steps=1", "method.eln.eln_steps=1",
                       "data.crop_size=32", "data.labeled_batch_size=2",
                       "data.unlabeled_batch_size=2", "trainer.limit_val_batches=1", "trainer.max_steps=4",
                       "trainer.val_check_interval=4", "trainer.log_every_n_steps=1",
                       "method.unsup_warmup_steps=0", "method.unsup_rampup_steps=2"])
    run_task(cfg)
    rows = _train_rows(tmp_path, "train/unsup_weight")
    assert [int(r["step"]) for r in rows] == [2, 3]
    assert [float(r["train/unsup_weight"]) for r in rows] == pytest.approx([math.exp(-5), math.exp(-1.25)])


def test_ema_decay_auto_gives_each_method_a_schedule_sized_teacher_and_the_reference_on_long_runs(tmp_path):
    """`ema_decay: auto` (ops/ema.ema_decay_for_schedule) reaches the EMATeacher callback of AEL, ELN and
    UniMatch V2: time constant max_steps / 40 (400 steps -> 0.9), capped at each method's official decay;
    a number is used as it is; a bad value is refused naming the key."""
    from semiseg_lit.callbacks.ema_teacher import EMATeacher
    from tests.methods.test_ael import _compose_method as ael_method
    from tests.methods.test_eln import make_method as eln_method
    from tests.methods.test_unimatch_v2 import _method as uv2_method

    def teacher_decay(method):
        (ema,) = [c for c in method.configure_callbacks() if isinstance(c, EMATeacher)]
        return ema.decay

    assert teacher_decay(ael_method(tmp_path, "trainer.max_steps=400")) == pytest.approx(0.9)
    assert teacher_decay(ael_method(tmp_path, "trainer.max_steps=40000")) == pytest.approx(0.99)
    assert teacher_decay(ael_method(tmp_path, "trainer.max_steps=400", "method.ael.ema_decay=0.99")) == 0.99
    assert teacher_decay(eln_method(tmp_path, ["trainer.max_steps=400"])) == pytest.approx(0.9)
    assert teacher_decay(eln_method(tmp_path, ["trainer.max_steps=40000"])) == pytest.approx(0.995)
    assert teacher_decay(uv2_method(tmp_path, "trainer.max_steps=400")) == pytest.approx(0.9)
    assert teacher_decay(uv2_method(tmp_path, "trainer.max_steps=40000")) == pytest.approx(0.996)
    with pytest.raises(ValueError, match=r"method\.ael\.ema_decay=1\.5"):
        ael_method(tmp_path, "method.ael.ema_decay=1.5")
