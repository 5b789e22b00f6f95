"""Distributed training: 2 CPU processes (gloo, Lightning ``strategy=ddp``) train AEL and ELN for a few
steps on tiny synthscapes; every rank dumps its confidence bank, teacher, CutMix bank and validation
scores, and the test asserts that they agree across ranks. Also: the SLURM launcher config composes.

The ranks run this file as a script (``python -m tests.test_distributed OUT OVERRIDES...``): Lightning's
DDP launcher re-runs that command for rank 1, so both ranks build the same run through ``run_task``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from semiseg_lit.callbacks.buffer_sync import (
    SyncBatchNormStatistics,
    average_over_ranks_,
    batchnorm_statistics,
)
from semiseg_lit.methods.ael import AELMethod
from semiseg_lit.methods.eln import ELNMethod
from semiseg_lit.tasks.common import resolve_strategy
from tests.conftest import REPO_ROOT, tiny_overrides

DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=3",
       "trainer.val_check_interval=2", "callbacks.rich_progress=false"]
TINY_ELN = [f"{k}=tu-mobilenetv3_small_050" for k in ("model.encoder", "method.eln.encoder")] + [
    "model.decoder_channels=16", "method.eln.decoder_channels=16", "method.eln.n_crops=2", "method.eln.crop_size=4",
    "method.eln.pretrain_steps=1", "method.eln.eln_steps=1"]  # step 0: stage 1, 1: stage 2, 2: stage 3


# ----------------------------------------------------------------------------------------- the rank script
class DumpState(Callback):
    """Records what must agree across ranks and saves it to ``<out>/rank<r>.pt``: the networks and banks
    when training ends (``on_train_end``: after the last step, before the final evaluation, whose
    ``trainer.validate`` builds fresh method callbacks) and the scores of every validation."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.record: dict[str, Any] = {"val": [], "labeled_index": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.record["labeled_index"].append(batch["labeled"]["index"].tolist())

    def on_train_end(self, trainer, pl_module):
        fit: dict[str, Any] = {"world_size": trainer.world_size, "global_step": trainer.global_step}
        fit["student"] = {k: v.detach().cpu().clone() for k, v in pl_module.student.state_dict().items()}
        if pl_module.teacher is not None:
            fit["teacher"] = {k: v.detach().cpu().clone() for k, v in pl_module.teacher.state_dict().items()}
        bank = getattr(pl_module, "confidence_bank", None)
        if bank is not None:
            fit["confidence_bank"] = bank.bank.detach().cpu().clone()
        cutmix = getattr(pl_module, "cutmix_bank", None)
        if cutmix is not None:
            fit["cutmix_bank"] = cutmix.bank.detach().cpu().clone()
            fit["cutmix_snap_conf"] = cutmix.snap_conf.clone()
        self.record.update(fit)
        self.save(trainer)

    def on_validation_end(self, trainer, pl_module):
        scores = pl_module.last_scores
        entry = {"miou": float(scores["miou"]), "per_class_iou": torch.as_tensor(scores["per_class_iou"]).clone()}
        entry.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "val_eln/"))})
        self.record["val"].append(entry)
        self.save(trainer)

    def save(self, trainer) -> None:
        torch.save(self.record, self.out / f"rank{trainer.global_rank}.pt")


def rank_main(out: str, overrides: list[str]) -> None:
    """Entry of each rank: the train task with :class:`DumpState` added to its callbacks."""
    from hydra import compose, initialize_config_dir

    import semiseg_lit.tasks.train as train_task
    from semiseg_lit.__main__ import CONFIG_DIR
    from semiseg_lit.tasks import run_task

    build = train_task.build_callbacks
    train_task.build_callbacks = lambda *a, **k: [*build(*a, **k), DumpState(Path(out))]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    run_task(cfg)


# ----------------------------------------------------------------------------------------- the tests
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(tmp_path: Path, overrides: list[str], timeout: int = 240) -> tuple[dict, dict]:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WANDB_MODE="disabled",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, "-m", "tests.test_distributed", str(tmp_path), *overrides], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return ranks[0], ranks[1]


def assert_same_state(a: dict, b: dict, name: str) -> None:
    assert a.keys() == b.keys(), name
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{name}: {len(differ)} tensors differ across ranks, e.g. {differ[:5]}"


def assert_ranks_agree(r0: dict, r1: dict) -> None:
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["global_step"] == r1["global_step"] == 3
    # the ranks trained on different shards of the labeled stream ...
    assert r0["labeled_index"] != r1["labeled_index"]
    # ... yet hold the same networks, banks and metrics
    assert_same_state(r0["student"], r1["student"], "student")
    assert_same_state(r0["teacher"], r1["teacher"], "teacher")
    assert len(r0["val"]) == len(r1["val"]) >= 2
    for v0, v1 in zip(r0["val"], r1["val"]):
        assert v0.keys() == v1.keys()
        assert torch.equal(v0.pop("per_class_iou"), v1.pop("per_class_iou"))
        assert v0 == v1


@pytest.mark.slow
def test_ael_ddp_two_cpu_ranks_agree(synth_root, tmp_path):
    r0, r1 = run_two_ranks(tmp_path, ["+experiment=ael_synthscapes", *tiny_overrides(synth_root, tmp_path), *DDP])
    assert_ranks_agree(r0, r1)
    assert torch.equal(r0["confidence_bank"], r1["confidence_bank"])
    assert torch.equal(r0["cutmix_bank"], r1["cutmix_bank"]) and bool(r0["cutmix_bank"].any())
    assert torch.equal(r0["cutmix_snap_conf"], r1["cutmix_snap_conf"])


@pytest.mark.slow
def test_eln_ddp_two_cpu_ranks_agree(synth_root, tmp_path):
    overrides = ["+experiment=eln_synthscapes", *tiny_overrides(synth_root, tmp_path), *DDP, *TINY_ELN]
    if not getattr(ELNMethod, "ddp_find_unused_parameters", False):  # until ELN asks for it itself
        overrides.append("trainer.strategy=ddp_find_unused_parameters_true")
    r0, r1 = run_two_ranks(tmp_path, overrides)
    assert_ranks_agree(r0, r1)
    assert "val_eln/auroc" in r0["val"][-1]


def test_ddp_strategy_finds_unused_parameters_for_methods_that_ask(compose_cfg, tmp_path, monkeypatch):
    cfg = compose_cfg(["+experiment=ael_synthscapes", "trainer.strategy=ddp", f"paths.output_dir={tmp_path}"])
    assert resolve_strategy(cfg) == "ddp"
    monkeypatch.setattr(AELMethod, "ddp_find_unused_parameters", True, raising=False)
    assert resolve_strategy(cfg) == "ddp_find_unused_parameters_true"
    cfg.trainer.strategy = "ddp_spawn"
    assert resolve_strategy(cfg) == "ddp_spawn"  # only plain "ddp" is rewritten


def test_bn_statistics_sync_is_a_no_op_on_one_process():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Dropout())
    net[1].running_mean.fill_(0.5)
    assert len(batchnorm_statistics(net)) == 2

    class OneRank:
        world_size = 1

    SyncBatchNormStatistics().on_train_end(OneRank(), net)
    assert torch.all(net[1].running_mean == 0.5)


def test_average_over_ranks_replaces_each_tensor_by_the_mean():
    class TwoRanks:  # rank 0's values are (a + other) / 2 with the other rank holding 3·a
        @staticmethod
        def reduce(t, reduce_op):
            assert reduce_op == "mean"
            return (t + 3 * t) / 2

    a, b = torch.tensor([1.0, 2.0]), torch.tensor([[4.0]])
    average_over_ranks_([a, b], TwoRanks())
    assert torch.equal(a, torch.tensor([2.0, 4.0])) and torch.equal(b, torch.tensor([[8.0]]))


def test_slurm_launcher_maps_the_trainer_resources(compose_cfg):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from semiseg_lit.__main__ import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4",
            "hydra.launcher.partition=gpu"])
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher")
        assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
        assert launcher.partition == "gpu" and cfg.trainer.strategy == "ddp"
        with pytest.raises(Exception, match="partiton"):  # typed by the plugin's schema
            compose(config_name="config", return_hydra_config=True,
                    overrides=["hydra/launcher=slurm", "hydra.launcher.partiton=gpu"])
    GlobalHydra.instance().clear()


if __name__ == "__main__":
    rank_main(sys.argv[1], sys.argv[2:])
