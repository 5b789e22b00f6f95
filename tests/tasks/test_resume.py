"""Exact resume: N steps straight == interrupted (once or twice), checkpointed and resumed to N
(CPU, to float tolerance) for every method: weights, teacher, ELN, optimizer, banks, stage, metrics."""

import json

import pytest
import torch
from pytorch_lightning.callbacks import Callback

import semiseg_lit.tasks.common as common_mod
from semiseg_lit.checkpointing import CheckpointError
from semiseg_lit.methods.eln import eln_stage
from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides

MEAN_TEACHER_CUTMIX = ["method.ael.copy_paste=false", "method.ael.cutmix_adaptive=false",
                       "method.ael.sampling=false", "method.ael.reweight=false"]
# ELN stages on the tiny run: 1 = step 0, 2 = steps 1-2, 3 = steps 3+ (teacher copied at step 3)
ELN_TINY = ["+experiment=eln_synthscapes", "method.eln.pretrain_steps=1", "method.eln.eln_steps=2",
            "method.eln.decoder_channels=32", "method.eln.aux_gate_factors=[20.0]"]

# name -> (overrides, steps at which the run is interrupted, final step)
CASES = {
    "supervised": (["+experiment=supervised_synthscapes"], [2], 4),
    "ael": (["+experiment=ael_synthscapes"], [2], 4),
    "mean_teacher_cutmix": (["+experiment=ael_synthscapes", *MEAN_TEACHER_CUTMIX], [2], 4),
    # 2 emulated GPUs on one process: per-GPU bank rows and snapshots go through the checkpoint
    "ael_virtual_ranks": (["+experiment=ael_synthscapes", "method.ael.virtual_ranks=2", "method.ael.bank_sync=false"],
                          [2], 4),
    # EMA teacher, two strong views, CutMix and feature dropout from per-step generators; 2 emulated GPUs
    "unimatch_v2": (["method=unimatch_v2", "method.unimatch_v2.virtual_ranks=2"], [2], 4),
    # interrupted inside stage 2 (after step 1) and inside stage 3 (after step 3), resumed to 5
    "eln": (ELN_TINY, [2, 4], 5),
}
TRAINING_CALLBACKS = ("ConfidenceBank", "CutMixBank", "EMATeacher")


class StopAfter(Callback):
    """Simulates an interruption: stop (after the step's checkpoint) at a given global step."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a, b, where):
    """Nested dicts / lists of tensors and numbers are equal (floats to tolerance)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=where)
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), where
    else:
        assert a == b, where


def _run_interrupted(compose_cfg, overrides, monkeypatch, stop):
    build = common_mod.build_callbacks
    with monkeypatch.context() as m:
        m.setattr(common_mod, "build_callbacks", lambda *a, **k: [*build(*a, **k), StopAfter(stop)])
        m.setattr("semiseg_lit.tasks.train.build_callbacks", common_mod.build_callbacks)
        run_task(compose_cfg(overrides))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_resume_matches_uninterrupted_run(compose_cfg, synth_root, tmp_path, name, monkeypatch):
    experiment, stops, final = CASES[name]
    # validation at the end only: the interrupted runs still validate when they stop (train() always
    # does), so the test also shows that validation does not perturb the training state
    common = [*experiment, f"trainer.val_check_interval={final}", f"trainer.max_steps={final}"]
    straight = tmp_path / "straight"
    run_task(compose_cfg([*tiny_overrides(synth_root, straight), *common]))
    resumed = tmp_path / "resumed"
    args = [*tiny_overrides(synth_root, resumed), *common]
    for i, stop in enumerate(stops):
        _run_interrupted(compose_cfg, args + (["ckpt_path=last"] if i else []), monkeypatch, stop)
        assert _ckpt(resumed / "checkpoints" / "last.ckpt")["global_step"] == stop
    run_task(compose_cfg([*args, "ckpt_path=last"]))

    a, b = _ckpt(straight / "checkpoints" / "last.ckpt"), _ckpt(resumed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == final
    assert_same(a["state_dict"], b["state_dict"], "state_dict")  # student, teacher, ELN, aux decoders
    assert_same(a["optimizer_states"], b["optimizer_states"], "optimizer")
    assert_same(a["lr_schedulers"], b["lr_schedulers"], "lr_schedulers")
    names = [n for n in a["callbacks"] if n.startswith(TRAINING_CALLBACKS)]  # not ModelCheckpoint bookkeeping
    assert [n for n in b["callbacks"] if n.startswith(TRAINING_CALLBACKS)] == names
    for n in names:
        assert_same(a["callbacks"][n], b["callbacks"][n], n)
    if name == "eln":
        assert eln_stage(final - 1, 1, 2) == 3 and bool(b["state_dict"]["teacher_ready"])
        assert b["callbacks"][names[0]]["updates"] == final - 3  # EMA from the first stage-3 step
    # the CSV log of every interrupted segment is kept beside the last one
    assert len(list((resumed / "csv").glob("metrics.part*.csv"))) == len(stops)
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (straight, resumed))
    for m in (ma, mb):  # the run folders' paths
        m.pop("checkpoint_dir")
    # the interrupted segments validated when they stopped, so the resumed run's best covers more
    # validations than the straight one's; both include the same final validation
    best_a, best_b = ma.pop("best"), mb.pop("best")
    assert best_b["miou"] >= best_a["miou"] - 1e-6 and best_a["miou"] >= ma["miou"] - 1e-6
    assert_same(ma, mb, "metrics.json")


def test_resume_refuses_a_checkpoint_of_another_network_or_method(compose_cfg, synth_root, tmp_path):
    """Resuming checks the checkpoint before any work and names what differs."""
    from semiseg_lit.tasks.train import check_resumable

    cfg = compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path)])
    from omegaconf import OmegaConf

    saved = {"hyper_parameters": {"config": OmegaConf.to_container(cfg, resolve=True)}}
    check_resumable(saved, "run.ckpt", cfg)
    other = compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path),
                         "model.decoder_channels=64"])
    with pytest.raises(CheckpointError, match=r"run\.ckpt.*model\.decoder_channels=32 in the checkpoint, 64 now"):
        check_resumable(saved, "run.ckpt", other)
    ael = compose_cfg(["+experiment=ael_synthscapes", *tiny_overrides(synth_root, tmp_path)])
    with pytest.raises(CheckpointError, match="method=supervised but this run has method=ael"):
        check_resumable(saved, "run.ckpt", ael)
    saved["hyper_parameters"]["config"]["data"]["num_classes"] = 19
    with pytest.raises(CheckpointError, match="19 classes"):
        check_resumable(saved, "run.ckpt", cfg)


def test_ckpt_path_auto_starts_fresh_or_resumes(tmp_path):
    from semiseg_lit.tasks.train import resolve_ckpt_path

    assert resolve_ckpt_path("auto", tmp_path) is None
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    torch.save({"global_step": 3}, last)
    assert resolve_ckpt_path("auto", tmp_path) == str(last)
    last.write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="last.ckpt"):
        resolve_ckpt_path("auto", tmp_path)
