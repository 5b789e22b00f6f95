"""Safe loading: checkpoints and weight files are read with ``weights_only=True`` (a pickled object is
refused, naming the file), and a W&B API key never lands in a run folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from semiseg_lit.checkpointing import CheckpointError, load_checkpoint
from semiseg_lit.models.deeplab import read_weights_file
from tests.conftest import tiny_overrides


class Payload:
    """Anything that is not tensors / containers: unpickling it would run code."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": Payload()}, bad)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        load_checkpoint(bad)


def test_weights_file_with_a_pickled_object_is_refused(tmp_path):
    bad = tmp_path / "evil_encoder.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload()}, bad)
    with pytest.raises(Exception, match="evil_encoder.pth"):
        read_weights_file(bad)


@pytest.mark.slow
def test_wandb_api_key_never_appears_in_the_run_folder(synth_root, tmp_path):
    """A 2-step training through the CLI with W&B offline and WANDB_API_KEY set: no file in the run
    folder (checkpoints, configs, CSV, Hydra files, the W&B offline run and its logs) holds the key."""
    secret = "secret-xyz-0123456789abcdef0123456789abcdef"
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_API_KEY": secret, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    overrides = [o for o in tiny_overrides(synth_root, out) if not o.startswith("logger.wandb.enabled")]
    cmd = [sys.executable, "-m", "semiseg_lit", "+experiment=supervised_synthscapes", *overrides,
           "logger.wandb.enabled=true", "logger.wandb.mode=offline", f"hydra.run.dir={out}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert list((out / "wandb").glob("offline-run-*")), "the W&B offline run was not written"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 5
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaks
    assert secret not in res.stdout + res.stderr
