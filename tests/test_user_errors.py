"""Input battery of issue #15 items 2-5: user errors are one block with exit code 2 (runtime failures 1),
nothing a user has is overwritten or lost, and the console shows what a user can act on.

Each case asserts the exit code (or the exception type the entry point maps to it), that the message
names the culprit key / file, that no stack trace is printed, and that files that existed before are
byte-for-byte intact (hashed). A few representative cases go through ``python -m semiseg_lit`` as a
subprocess; the rest run in-process.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from semiseg_lit.__main__ import debug_requested, report_error
from semiseg_lit.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointWriteError,
    NonFiniteCheckpointError,
    load_checkpoint,
    nonfinite_tensors,
)
from semiseg_lit.console import MessageFilter, quiet_third_party
from semiseg_lit.errors import RunFolderError, UserError, checking_input, is_user_error
from semiseg_lit.tasks import run_task
from semiseg_lit.tasks.common import build_callbacks, check_run_folder
from semiseg_lit.tasks.train import check_same_schedule
from tests.conftest import tiny_overrides

SUPERVISED = ["+experiment=supervised_synthscapes", "method.optim.scheduler=constant"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path, skip: tuple[str, ...] = (".hydra", "__main__.log")) -> dict[str, str]:
    """sha256 of every file under ``root`` (Hydra's own record of the latest invocation left out)."""
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith(skip)}


def finished_run(out: Path) -> dict[str, str]:
    """A run folder as a finished run leaves it; returns its hashes."""
    (out / "checkpoints").mkdir(parents=True)
    (out / "csv").mkdir()
    (out / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's last checkpoint")
    (out / "checkpoints" / "best.ckpt").write_bytes(b"an earlier run's best checkpoint")
    (out / "metrics.json").write_text('{"miou": 0.5}')
    (out / "csv" / "metrics.csv").write_text("step,train/loss\n1,2.0\n")
    (out / "config_resolved.yaml").write_text("earlier: true\n")
    return snapshot(out)


def cli(args: list[str], cwd: Path, merged: bool = False, **env_extra: str) -> subprocess.CompletedProcess:
    """``python -m semiseg_lit ARGS`` (``merged``: stderr into stdout, in the order a terminal shows them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "SEMISEG_LIT_USER_HYDRA_FULL_ERROR")}
    env.update({"WANDB_MODE": "disabled", **env_extra})
    return subprocess.run([sys.executable, "-m", "semiseg_lit", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merged else subprocess.PIPE, text=True, cwd=cwd, env=env,
                          timeout=300)


def assert_one_block(res: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert res.stderr.count("error: ") == 1, res.stderr[-3000:]
    assert "Error executing job" not in out, out[-3000:]
    for needle in needles:
        assert needle in res.stderr, res.stderr[-3000:]


# ============================================================================ the command line
def test_cli_fresh_run_into_a_finished_run_is_refused_and_keeps_it(synth_root, tmp_path):
    out = tmp_path / "run"
    before = finished_run(out)
    res = cli([*tiny_overrides(synth_root, out), f"hydra.run.dir={out}"], tmp_path)
    assert_one_block(res, 2, f"the output folder {out} already holds a run", "checkpoints/last.ckpt",
                     "ckpt_path=last", "overwrite=true")
    assert snapshot(out) == before  # last.ckpt byte-for-byte intact, and everything else


@pytest.mark.parametrize("bad, needle", [
    ("trainer.max_steps=0", "trainer.max_steps=0"),
    ("trainer.max_steps=-1", "trainer.max_steps=-1"),
    ("data.crop_sise=32", "crop_sise"),  # Hydra's own composition error: a user error too
])
def test_cli_bad_value_is_exit_2_without_traceback(synth_root, tmp_path, bad, needle):
    out = tmp_path / "run"
    before = finished_run(out)
    res = cli([*tiny_overrides(synth_root, out), f"hydra.run.dir={out}", bad], tmp_path)
    assert_one_block(res, 2, needle)
    assert snapshot(out) == before


@pytest.mark.parametrize("how", ["debug=true", "HYDRA_FULL_ERROR=1"])
def test_cli_debug_shows_the_stack(synth_root, tmp_path, how):
    out = tmp_path / "run"
    args = [*tiny_overrides(synth_root, out), f"hydra.run.dir={out}", "trainer.max_steps=0"]
    res = cli([*args, how], tmp_path) if how.startswith("debug") else cli(args, tmp_path, HYDRA_FULL_ERROR="1")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" in res.stderr and "check_run_options" in res.stderr, res.stderr[-3000:]
    assert "error: trainer.max_steps=0" in res.stderr


def test_cli_multirun_reports_every_failed_job_and_exits_2(synth_root, tmp_path):
    sweep = tmp_path / "sweep"
    res = cli(["-m", *tiny_overrides(synth_root, tmp_path / "unused")[:-2], f"hydra.sweep.dir={sweep}",
               f"paths.log_dir={tmp_path / 'logs'}", "trainer.max_steps=0,-1"], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "error: trainer.max_steps=0" in res.stderr and "error: trainer.max_steps=-1" in res.stderr


def test_cli_folder_as_ckpt_path_names_the_file_inside(synth_root, tmp_path):
    run = tmp_path / "earlier"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    out = tmp_path / "eval"
    res = cli(["task=eval", f"ckpt_path={run}", *tiny_overrides(synth_root, out), f"hydra.run.dir={out}"], tmp_path)
    assert_one_block(res, 2, f"ckpt_path={run} is a folder", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    assert "does not exist" not in res.stderr


# ============================================================================ how errors are reported
def _report(exc: BaseException, debug: bool = False) -> tuple[int, str]:
    stream = io.StringIO()
    try:
        raise exc
    except BaseException as raised:  # noqa: BLE001 - give it a traceback
        code = report_error(raised, debug, stream)
    return code, stream.getvalue()


def test_user_error_is_one_block_exit_2():
    code, text = _report(UserError("data.n_labeled=372 but there are 8 samples"))
    assert code == 2 and "Traceback" not in text
    assert text.startswith("error: data.n_labeled=372 but there are 8 samples\n")
    assert len(text.strip().splitlines()) == 2  # the message and the exit-code line


def test_error_from_a_dataloader_worker_shows_its_message_not_the_worker_stack():
    from semiseg_lit.data.image_io import DataError

    def boom():
        raise DataError("image /d/val/x.png is truncated or corrupt")

    try:
        boom()
    except DataError:
        from torch._utils import ExceptionWrapper

        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(DataError) as info:
        wrapped.reraise()
    assert "Traceback" in str(info.value)  # torch puts the worker's stack into the message
    code, text = _report(info.value)
    assert code == 2 and "Traceback" not in text
    assert text.startswith("error: image /d/val/x.png is truncated or corrupt (in DataLoader worker process 1)")


def test_input_errors_raised_while_checking_are_user_errors_and_keep_their_type():
    for exc in (ValueError("data.root=/x: no such folder"), KeyError("data.foo is not a key"),
                FileNotFoundError("split file /x/labeled.txt not found")):
        with pytest.raises(type(exc)) as info:
            with checking_input():
                raise exc
        assert is_user_error(info.value)
        code, text = _report(info.value)
        assert code == 2 and "Traceback" not in text and "'data.foo" not in text  # a KeyError is not quoted


def test_a_bug_keeps_its_stack_and_exits_1():
    code, text = _report(ValueError("shape mismatch in a kernel"))  # not raised while checking the input
    assert code == 1 and "Traceback" in text and "shape mismatch in a kernel" in text


def test_a_known_run_failure_is_one_block_exit_1():
    code, text = _report(FloatingPointError("non-finite loss at step 7: nan (terms: ['sup'])"))
    assert code == 1 and "Traceback" not in text and text.startswith("run failed: non-finite loss at step 7")


def test_notes_are_part_of_the_block_and_debug_adds_the_stack():
    exc = ValueError("image x.png is truncated")
    exc.add_note("(the validation at step 2 failed; the training state was saved to /r/last.ckpt)")
    exc.semiseg_user_error = True
    code, text = _report(exc, debug=True)
    assert code == 2 and "Traceback" in text and "saved to /r/last.ckpt" in text


def test_debug_is_requested_by_option_or_environment(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("SEMISEG_LIT_USER_HYDRA_FULL_ERROR", raising=False)
    assert not debug_requested(["trainer.max_steps=2", "debug=false"])
    assert debug_requested(["debug=true"]) and debug_requested(["+debug=True"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert debug_requested([])


# ============================================================================ values checked before the trainer
@pytest.mark.parametrize("bad, needle", [
    ("trainer.max_steps=0", "trainer.max_steps=0"),
    ("trainer.max_steps=-1", "trainer.max_steps=-1"),
    ("data.labeled_batch_size=1", "data.labeled_batch_size=1 gives 1 image(s) per device"),
    ("data.labeled_batch_size=0", "data.labeled_batch_size=0"),
    ("data.crop_size=0", "data.crop_size=0"),
    ("data.val_crop_size=[64]", "data.val_crop_size=[64]"),
    ("data.val_batch_size=0", "data.val_batch_size=0"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval=0"),
])
def test_bad_value_is_refused_before_any_data_is_read(compose_cfg, tmp_path, bad, needle):
    out = tmp_path / "run"
    before = finished_run(out)
    # a data root that does not exist: the value check comes first
    cfg = compose_cfg([*tiny_overrides(tmp_path / "no_data", out), *SUPERVISED, bad])
    with pytest.raises(ValueError) as info:
        run_task(cfg)
    assert needle in str(info.value) and is_user_error(info.value), str(info.value)
    assert snapshot(out) == before


def test_batch_not_divisible_by_devices_names_the_keys(compose_cfg, tmp_path):
    cfg = compose_cfg([*tiny_overrides(tmp_path / "no_data", tmp_path / "run"), *SUPERVISED, "trainer.devices=2",
                       "data.labeled_batch_size=3"])
    with pytest.raises(UserError, match=r"data.labeled_batch_size=3 is not divisible by the 2 device\(s\)"):
        run_task(cfg)


def test_n_labeled_larger_than_the_data_names_the_key(compose_cfg, synth_root, tmp_path):
    cfg = compose_cfg([*tiny_overrides(synth_root, tmp_path / "run"), *SUPERVISED, "data.n_labeled=372"])
    with pytest.raises(ValueError, match=r"data.n_labeled=372 but .* has 40 images with a mask") as info:
        with checking_input():
            run_task(cfg)
    assert is_user_error(info.value)


# ============================================================================ the run folder
def test_run_folder_check_rules(tmp_path):
    out = tmp_path / "run"
    check_run_folder(out, None, overwrite=False)  # no folder: fine
    out.mkdir()
    (out / ".hydra").mkdir()
    (out / ".hydra" / "config.yaml").write_text("x")
    check_run_folder(out, None, overwrite=False)  # Hydra's own record is not a run
    before = finished_run(tmp_path / "done")
    done = tmp_path / "done"
    with pytest.raises(RunFolderError, match="already holds a run"):
        check_run_folder(done, None, overwrite=False)
    with pytest.raises(RunFolderError, match=r"ckpt_path=.*other.ckpt is not one of its checkpoints"):
        check_run_folder(done, str(tmp_path / "other.ckpt"), overwrite=False)
    check_run_folder(done, str(done / "checkpoints" / "last.ckpt"), overwrite=False)  # resuming it
    assert snapshot(done) == before
    check_run_folder(done, None, overwrite=True)  # replaced: the earlier run's files are gone
    assert not (done / "checkpoints" / "last.ckpt").exists() and not (done / "metrics.json").exists()


@pytest.mark.slow
def test_overwrite_true_trains_into_a_finished_run_folder(compose_cfg, synth_root, tmp_path):
    out = tmp_path / "run"
    finished_run(out)
    run_task(compose_cfg([*tiny_overrides(synth_root, out), *SUPERVISED, "overwrite=true"]))
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert not list(out.rglob("*-v*.ckpt"))


# ============================================================================ checkpoints
def test_non_finite_checkpoint_is_not_written_and_the_last_finite_one_is_kept(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    good = {"state_dict": {"student.bn.running_var": torch.ones(3)}, "global_step": 4}
    AtomicCheckpointIO().save_checkpoint(good, path)
    kept = digest(path)
    bad = {"state_dict": {"student.conv.weight": torch.full((2, 2), 2e35),
                          "student.bn.running_var": torch.tensor([1.0, float("inf"), 1.0]),
                          "student.bn.num_batches_tracked": torch.tensor(3)},
           "optimizer_states": [{"state": {0: {"momentum_buffer": torch.tensor([float("nan")])}}}],
           "callbacks": {"ModelCheckpoint": {"kth_value": torch.tensor(float("-inf"))}},  # legitimate
           "global_step": 9}
    assert nonfinite_tensors(bad) == ["state_dict.student.bn.running_var", "optimizer_states.0.state.0.momentum_buffer"]
    with pytest.raises(NonFiniteCheckpointError) as info:
        AtomicCheckpointIO().save_checkpoint(bad, path)
    msg = str(info.value)
    assert "step 9" in msg and "student.bn.running_var" in msg and "momentum_buffer" in msg
    assert f"{path} is kept as it was (the last finite state)" in msg and "NOT written" in msg
    assert digest(path) == kept and not list(path.parent.glob(".*.tmp"))
    assert _report(info.value)[0] == 1


def test_checkpoint_gets_the_normal_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, path)
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


@pytest.mark.parametrize("where, err", [("mkstemp", errno.EROFS), ("save", errno.ENOSPC)])
def test_unwritable_checkpoint_folder_is_one_message_and_old_checkpoints_stay(tmp_path, monkeypatch, where, err):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, path)
    kept = digest(path)

    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr("semiseg_lit.checkpointing.tempfile.mkstemp" if where == "mkstemp" else
                        "semiseg_lit.checkpointing.torch.save", fail)
    with pytest.raises(CheckpointWriteError) as info:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    msg = str(info.value)
    assert f"folder {path.parent}" in msg and os.strerror(err) in msg and "unchanged" in msg
    assert digest(path) == kept and not list(path.parent.glob(".*.tmp"))
    code, text = _report(info.value)
    assert code == 1 and "Traceback" not in text


def test_checkpoint_callback_never_versions_files(tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"callbacks": {"checkpoint": {"monitor": "val/miou", "mode": "max", "save_last": True},
                                          "lr_monitor": False, "rich_progress": False},
                            "trainer": {"enable_progress_bar": False}})
    ckpt = next(c for c in build_callbacks(cfg, tmp_path, has_logger=False) if isinstance(c, ModelCheckpoint))
    assert ckpt._enable_version_counter is False


def test_corrupt_checkpoint_is_one_message_without_unsafe_advice_or_chain(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    msg = str(info.value)
    assert str(bad) in msg and "refused for safety" in msg and "set to `False`" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # printed once, not chained
    code, text = _report(info.value)
    assert code == 2 and text.count(str(bad)) == 1


def test_missing_or_folder_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"does not exist \(ckpt_path="):
        load_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"is a folder.*ckpt_path=.*run/checkpoints/best.ckpt"):
        load_checkpoint(tmp_path / "run")


# ============================================================================ resuming
def _saved(compose_cfg, tmp_path, *extra):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose_cfg([*tiny_overrides(tmp_path, tmp_path), *SUPERVISED, *extra]),
                                  resolve=True)


@pytest.mark.parametrize("changed, named", [
    (["seed=1"], ["seed=0 in the checkpoint, 1 now"]),
    (["data.labeled_batch_size=2"], ["data.labeled_batch_size=4 in the checkpoint, 2 now"]),
    (["data.n_labeled=16", "data.split_seed=3"], ["data.n_labeled=8 in the checkpoint, 16 now",
                                                  "data.split_seed=0 in the checkpoint, 3 now"]),
    (["trainer.max_steps=9", "method.optim.scheduler=poly"], ["trainer.max_steps=2 in the checkpoint, 9 now"]),
])
def test_resume_with_other_settings_is_refused_naming_the_keys(compose_cfg, tmp_path, changed, named):
    saved = _saved(compose_cfg, tmp_path, *(["method.optim.scheduler=poly"] if "poly" in str(changed) else []))
    cfg = compose_cfg([*tiny_overrides(tmp_path, tmp_path), *SUPERVISED, *changed])
    with pytest.raises(CheckpointError) as info:
        check_same_schedule(saved, "run/last.ckpt", cfg)
    for needle in named:
        assert needle in str(info.value)
    assert "resume_check=warn" in str(info.value)


def test_resume_check_warn_and_constant_lr_max_steps_only_warn(compose_cfg, tmp_path, caplog):
    saved = _saved(compose_cfg, tmp_path)
    with caplog.at_level(logging.WARNING):
        check_same_schedule(saved, "last.ckpt", compose_cfg([*tiny_overrides(tmp_path, tmp_path), *SUPERVISED,
                                                               "trainer.max_steps=9"]))
        check_same_schedule(saved, "last.ckpt", compose_cfg([*tiny_overrides(tmp_path, tmp_path), *SUPERVISED,
                                                               "seed=5", "resume_check=warn"]))
    text = caplog.text
    assert "trainer.max_steps=2 in the checkpoint, 9 now" in text and "seed=0 in the checkpoint, 5 now" in text


class SignalAt(Callback):
    """Sends this process ``signum`` after training step ``step``."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, *args):
        if not self.sent and trainer.global_step == self.step:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class FailInValidation(Callback):
    def on_validation_batch_start(self, trainer, *args):
        raise ValueError("val image /data/val/broken.png is truncated")


def _with_callback(monkeypatch, extra: Callback):
    import semiseg_lit.tasks.common as common_mod

    build = common_mod.build_callbacks
    monkeypatch.setattr("semiseg_lit.tasks.train.build_callbacks", lambda *a, **k: [*build(*a, **k), extra])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: signal.Signals(s).name)
def test_interrupt_before_the_first_validation_resumes_into_last_and_best(compose_cfg, synth_root, tmp_path,
                                                                          monkeypatch, signum):
    """Ctrl-C saves a resumable last.ckpt like SIGTERM; after the resume no -v1 copies appear."""
    out = tmp_path / "run"
    args = [*tiny_overrides(synth_root, out), *SUPERVISED, "trainer.max_steps=4", "trainer.val_check_interval=3"]
    with monkeypatch.context() as m:
        _with_callback(m, SignalAt(1, signum))
        with pytest.raises(SystemExit) as exit_info:
            run_task(compose_cfg(args))
    assert exit_info.value.code == 128 + signum
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    run_task(compose_cfg([*args, "ckpt_path=last"]))
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best.ckpt", "last.ckpt"], names
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert load_checkpoint(out / "checkpoints" / "best.ckpt")["global_step"] == 3


@pytest.mark.slow
def test_failing_validation_saves_the_training_state_first(compose_cfg, synth_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = [*tiny_overrides(synth_root, out), *SUPERVISED, "trainer.max_steps=4"]
    with monkeypatch.context() as m:
        _with_callback(m, FailInValidation())
        with pytest.raises(ValueError, match="broken.png") as info:
            run_task(compose_cfg(args))
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert any("training state was saved to" in n and "ckpt_path=last" in n for n in info.value.__notes__)
    run_task(compose_cfg([*args, "ckpt_path=last"]))  # and it resumes
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 4


# ============================================================================ eval and predict
@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    from tests.tasks.test_predict import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.ckpt")


def test_predict_refuses_to_replace_existing_files(small_ckpt, tmp_path):
    from tests.tasks.test_predict import predict_cfg, write_image

    write_image(tmp_path / "in" / "a.png", 40, 50, seed=0)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "a.png").write_bytes(b"my own file")
    before = snapshot(out)
    with pytest.raises(RunFolderError, match=r"would replace .*a.png.*overwrite=true"):
        run_task(predict_cfg(small_ckpt, tmp_path / "in", out))
    assert snapshot(out) == before
    run_task(predict_cfg(small_ckpt, tmp_path / "in", out, "overwrite=true"))
    assert digest(out / "a.png") != before["a.png"]


def test_predict_counts_one_image_in_the_singular(small_ckpt, tmp_path, capsys, caplog):
    from tests.tasks.test_predict import predict_cfg, write_image

    write_image(tmp_path / "in" / "a.png", 40, 50, seed=0)
    with caplog.at_level(logging.INFO):
        run_task(predict_cfg(small_ckpt, tmp_path / "in", tmp_path / "pred"))
    assert "predicted 1 of 1 image into" in capsys.readouterr().out
    assert "predicting 1 image with" in caplog.text and "1 images" not in caplog.text


@pytest.mark.slow
def test_eval_prints_only_paths_that_exist_and_opens_no_wandb_run(compose_cfg, synth_root, tmp_path, capsys):
    train_out = tmp_path / "train"
    run_task(compose_cfg([*tiny_overrides(synth_root, train_out), *SUPERVISED]))
    capsys.readouterr()
    eval_out = tmp_path / "eval"
    overrides = [o for o in tiny_overrides(synth_root, eval_out) if not o.startswith("logger.wandb")]
    run_task(compose_cfg(["task=eval", f"ckpt_path={train_out / 'checkpoints' / 'last.ckpt'}", *overrides]))
    text = capsys.readouterr().out
    assert "evaluation written to" in text and "last_eval.json" in text
    assert "checkpoints:" not in text and "metrics:" not in text and "W&B run" not in text
    assert not (eval_out / "wandb").exists()


# ============================================================================ console
def test_message_filters_drop_only_their_messages():
    quiet_third_party()
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    kept = []

    class Keep(logging.Handler):
        def emit(self, record):
            kept.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        old = logger.level
        logger.setLevel(logging.INFO)
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        logger.info("The following callbacks returned in `LightningModule.configure_callbacks` will override x")
        logger.info("GPU available: False, used: False")
        logger.setLevel(old)
    finally:
        logger.removeHandler(handler)
    assert kept == ["GPU available: False, used: False"]
    for name in ("onnxscript.optimizer._constant_folding", "onnx_ir.passes.common.unused_removal"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)  # the ONNX exporter's chatter
    assert logging.getLogger("onnxscript").isEnabledFor(logging.WARNING)
    assert not MessageFilter(("abc",)).filter(logging.LogRecord("x", 20, "", 0, "abc def", None, None))


@pytest.mark.slow
def test_two_step_run_prints_what_a_user_can_act_on_and_ends_with_the_table(synth_root, tmp_path):
    out = tmp_path / "run"
    args = [o for o in tiny_overrides(synth_root, out) if not o.startswith("logger.wandb")]
    res = cli([*args, "logger.wandb.mode=offline", f"hydra.run.dir={out}"], tmp_path, merged=True,
              WANDB_MODE="offline")
    text = res.stdout
    assert res.returncode == 0, text[-3000:]
    for noise in ("litlogger", "`weights_only` was not set", "configure_callbacks", "anonymous setting",
                  "LeafSpec", "FLOPs", "Previous log files", "Traceback"):
        assert noise not in text, noise
    tail = text[text.rfind("Final evaluation"):].rstrip().splitlines()
    assert "wandb:" not in "\n".join(tail)  # W&B's run summary came before the table
    assert tail[-1].startswith("W&B run:") and tail[-2].startswith("metrics:") and tail[-3].startswith("checkpoints:")


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_saves_a_resumable_checkpoint(synth_root, tmp_path):
    """SIGINT to the whole process group (main process and its DataLoader workers), as a terminal sends it."""
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "semiseg_lit", *tiny_overrides(synth_root, out), *SUPERVISED, "data.num_workers=2",
           "trainer.max_steps=200", f"hydra.run.dir={out}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    log = tmp_path / "run.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    last = out / "checkpoints" / "last.ckpt"
    t0 = time.time()
    while not last.is_file():  # the first validation (step 2) wrote it: training is under way
        assert proc.poll() is None and time.time() - t0 < 300, log.read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=180)
    text = log.read_text()
    assert rc == 130, text[-3000:]
    assert "SIGINT received: training state at step" in text and "Traceback" not in text, text[-3000:]
    assert 2 <= load_checkpoint(last)["global_step"] < 200
    assert not (out / "metrics.json").exists()
