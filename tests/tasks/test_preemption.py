"""Preemption: a real training process gets SIGTERM / SIGUSR1, writes last.ckpt and exits cleanly;
``ckpt_path=last`` resumes from that step (and ends exactly where a straight run ends). Also the other
guarded failure of a run: out of memory names the batch / crop / precision and the knobs to turn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from semiseg_lit.callbacks.preemption import Preemption, forward_to_sigterm
from semiseg_lit.checkpointing import load_checkpoint
from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides
from tests.tasks.test_resume import assert_same

# constant LR: the interrupted run's schedule (max_steps=200) then equals the straight run's (max_steps=K)
COMMON = ["+experiment=supervised_synthscapes", "trainer.val_check_interval=2", "method.optim.scheduler=constant"]


def _launch(synth_root: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    log = out.parent / f"{out.name}.log"
    cmd = [sys.executable, "-m", "semiseg_lit", *tiny_overrides(synth_root, out), *COMMON,
           "trainer.max_steps=200", f"hydra.run.dir={out}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=out.parent)
    return proc, log


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.is_file():
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{path} did not appear in {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=lambda s: signal.Signals(s).name)
def test_signal_saves_last_ckpt_exits_and_resumes(compose_cfg, synth_root, tmp_path, signum):
    out = tmp_path / "run"
    out.mkdir()
    proc, log = _launch(synth_root, out)
    last = out / "checkpoints" / "last.ckpt"
    _wait_for(last, proc, log)  # the first validation (step 2) wrote last.ckpt: training is under way
    proc.send_signal(signum)
    try:
        rc = proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"no exit after {signal.Signals(signum).name}:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert rc == 128 + signum, text[-3000:]
    assert f"{signal.Signals(signum).name} received: training state at step" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert not list(last.parent.glob(".last.ckpt.*.tmp"))  # atomic write left no temporary file
    stopped = load_checkpoint(last)["global_step"]
    assert 2 <= stopped < 200
    assert not (out / "metrics.json").exists()  # an interrupted run does not pretend to be finished

    final = stopped + 2
    run_task(compose_cfg([*tiny_overrides(synth_root, out), *COMMON, f"trainer.max_steps={final}", "ckpt_path=last"]))
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == final and (out / "metrics.json").is_file()
    if signum == signal.SIGTERM:  # exact: the same state as a run that was never interrupted
        straight = tmp_path / "straight"
        run_task(compose_cfg([*tiny_overrides(synth_root, straight), *COMMON, f"trainer.max_steps={final}"]))
        ref = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert_same(ref["state_dict"], resumed["state_dict"], "state_dict")
        assert_same(ref["optimizer_states"], resumed["optimizer_states"], "optimizer")


def test_sigusr1_is_forwarded_to_the_sigterm_handler():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        forward_to_sigterm(signal.SIGUSR1, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM]


def test_only_a_sigterm_exception_during_fit_saves(tmp_path):
    """A NaN loss or a crash keeps the last good checkpoint: nothing is saved for other exceptions."""
    from pytorch_lightning.trainer.states import TrainerFn
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    class FakeTrainer:
        global_step = 7
        saved: list = []

        class state:
            fn = TrainerFn.FITTING

        def save_checkpoint(self, path, weights_only=None):
            self.saved.append(path)

    cb, trainer = Preemption(tmp_path / "last.ckpt"), FakeTrainer()
    cb.on_exception(trainer, None, FloatingPointError("non-finite loss"))
    assert trainer.saved == [] and cb.saved is None
    cb.on_exception(trainer, None, SIGTERMException())
    assert trainer.saved == [tmp_path / "last.ckpt"] and cb.exit_code == 143
    trainer.state.fn = TrainerFn.VALIDATING  # the final evaluation: last.ckpt already written after fit
    cb.on_exception(trainer, None, SIGTERMException())
    assert len(trainer.saved) == 1


class SignalAt(Callback):
    """Sends this process SIGTERM at a chosen point: after training step ``step`` or inside the
    validation that follows it (Lightning's handler then stops the loop there)."""

    def __init__(self, step: int, where: str):
        self.step, self.where, self.sent = step, where, False

    def _send(self, trainer):
        if not self.sent and trainer.global_step == self.step:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer, *args):
        if self.where == "training":
            self._send(trainer)

    def on_validation_batch_start(self, trainer, *args):
        if self.where == "validation":
            self._send(trainer)


@pytest.mark.slow
@pytest.mark.parametrize("where, step", [("training", 3), ("validation", 2)])
def test_sigterm_in_training_or_validation_resumes_exactly(compose_cfg, synth_root, tmp_path, monkeypatch,
                                                           where, step):
    import semiseg_lit.tasks.common as common_mod

    final = 5
    args = [*COMMON, f"trainer.max_steps={final}", "data.val_batch_size=4"]  # 3 val batches
    out = tmp_path / "run"
    build = common_mod.build_callbacks
    with monkeypatch.context() as m:
        m.setattr("semiseg_lit.tasks.train.build_callbacks",
                  lambda *a, **k: [*build(*a, **k), SignalAt(step, where)])
        with pytest.raises(SystemExit) as exit_info:
            run_task(compose_cfg([*tiny_overrides(synth_root, out), *args]))
    assert exit_info.value.code == 143
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == step
    run_task(compose_cfg([*tiny_overrides(synth_root, out), *args, "ckpt_path=last"]))
    straight = tmp_path / "straight"
    run_task(compose_cfg([*tiny_overrides(synth_root, straight), *args]))
    a, b = (torch.load(p / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True) for p in (straight, out))
    assert a["global_step"] == b["global_step"] == final
    assert_same(a["state_dict"], b["state_dict"], "state_dict")
    assert_same(a["optimizer_states"], b["optimizer_states"], "optimizer")


# ----------------------------------------------------------------------------- out of memory
@pytest.mark.parametrize("phase", ["training", "validation"])
def test_out_of_memory_names_batch_crop_precision_and_knobs(compose_cfg, synth_root, tmp_path, monkeypatch, phase):
    from semiseg_lit.models.deeplab import SegmentationNet

    original = SegmentationNet.forward_all

    def forward_all(self, *args, **kwargs):
        if self.training == (phase == "training"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SegmentationNet, "forward_all", forward_all)
    out = tmp_path / "run"
    with pytest.raises(torch.OutOfMemoryError) as err:
        run_task(compose_cfg([*tiny_overrides(synth_root, out), "+experiment=supervised_synthscapes",
                              "trainer.val_check_interval=1", "trainer.max_steps=2"]))
    msg = str(err.value)
    step = 0 if phase == "training" else 1
    assert f"out of memory during {phase} at step {step} (CUDA out of memory. Tried to allocate 2.00 GiB)" in msg
    for setting in ("data.labeled_batch_size=4", "data.crop_size=64", "trainer.precision=32-true"):
        assert setting in msg, msg
    if phase == "training":
        assert "trainer.precision=bf16-mixed" in msg and "trainer.accumulate_grad_batches=2" in msg, msg
    else:
        assert "data.val_batch_size=<smaller> (now 6)" in msg and "data.val_mode=sliding" in msg, msg
    assert not (out / "metrics.json").exists()


def test_other_runtime_errors_are_not_rewritten():
    from semiseg_lit.tasks.train import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.slow
def test_run_killed_in_its_final_evaluation_completes_with_ckpt_path_last(compose_cfg, synth_root, tmp_path):
    """Killed after training but before metrics.json: ``ckpt_path=last`` trains no further step and
    writes the evaluation."""
    args = [*tiny_overrides(synth_root, tmp_path), "+experiment=supervised_synthscapes"]
    miou = run_task(compose_cfg(args))
    before = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (tmp_path / "metrics.json").unlink()
    assert run_task(compose_cfg([*args, "ckpt_path=last"])) == pytest.approx(miou, abs=1e-6)
    after = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert after["global_step"] == before["global_step"] == 2 and (tmp_path / "metrics.json").is_file()
    assert_same(before["state_dict"], after["state_dict"], "state_dict")


@pytest.mark.parametrize(("experiment", "suggested"), [("supervised_synthscapes", True), ("ael_synthscapes", False),
                                                       ("eln_synthscapes", False)])
def test_oom_advice_suggests_accumulation_only_where_the_method_supports_it(compose_cfg, experiment, suggested):
    from semiseg_lit.tasks.train import oom_advice

    msg = oom_advice(compose_cfg([f"+experiment={experiment}"]), 5, "training")
    assert ("trainer.accumulate_grad_batches=2" in msg) is suggested, msg
