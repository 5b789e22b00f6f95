"""Exact resume: N steps straight == N/2 steps, checkpoint, resume to N (CPU, to float tolerance)."""

import pytest
import torch
from pytorch_lightning.callbacks import Callback

import semiseg_lit.tasks.common as common_mod
from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides


class StopAfter(Callback):
    """Simulates an interruption: stop (after the step's checkpoint) at a given global step."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def _state(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["callbacks"], ckpt["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["supervised_synthscapes", "ael_synthscapes"])
def test_resume_matches_uninterrupted_run(compose_cfg, synth_root, tmp_path, experiment, monkeypatch):
    common = [f"+experiment={experiment}", "trainer.val_check_interval=2"]
    straight = tmp_path / "straight"
    run_task(compose_cfg([*common, *tiny_overrides(synth_root, straight), "trainer.max_steps=4"]))
    resumed = tmp_path / "resumed"
    build = common_mod.build_callbacks
    with monkeypatch.context() as m:
        m.setattr(common_mod, "build_callbacks", lambda *a, **k: [*build(*a, **k), StopAfter(2)])
        m.setattr("semiseg_lit.tasks.train.build_callbacks", common_mod.build_callbacks)
        run_task(compose_cfg([*common, *tiny_overrides(synth_root, resumed), "trainer.max_steps=4"]))
    assert _state(resumed / "checkpoints" / "last.ckpt")[2] == 2
    run_task(compose_cfg([*common, *tiny_overrides(synth_root, resumed), "trainer.max_steps=4", "ckpt_path=last"]))
    a, cb_a, step_a = _state(straight / "checkpoints" / "last.ckpt")
    b, cb_b, step_b = _state(resumed / "checkpoints" / "last.ckpt")
    assert step_a == step_b == 4
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k
    for name, state in cb_a.items():
        if not name.startswith(("ConfidenceBank", "CutMixBank", "EMATeacher")):
            continue  # ModelCheckpoint bookkeeping is not training state
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, cb_b[name][key], msg=f"{name}.{key}")
