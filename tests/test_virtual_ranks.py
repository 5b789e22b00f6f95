"""``method.ael.virtual_ranks``: one CPU process emulating 2 GPUs trains exactly as 2 gloo processes do.

Both runs train AEL for 3 steps on tiny synthscapes with ``virtual_ranks=2``, per-GPU banks
(``bank_sync=false``, the reference; a short bank memory so that the GPUs' banks part visibly), OHEM
that mines (``min_kept`` below the pixels per GPU), every pixel a pseudo-label and the reference's
shared AES noise maps. Every step, each process records its per-GPU loss terms, OHEM
selection, confidence bank rows, CutMix bank and the images it trained on; the one-process records
(2 groups) must equal the two processes' records laid side by side (1 group each), to float tolerance.

BatchNorm and dropout are switched to their deterministic eval forms in both runs: the one device
normalises over its whole batch, which equals 2 GPUs only under SyncBatchNorm (not available for CPU
tensors), and the global-RNG dropout masks are drawn per device, not per emulated GPU. Everything
``virtual_ranks`` emulates (the per-GPU pieces of ael.md §3–7) is left as it is.

The processes run this file as a script (``python -m tests.test_virtual_ranks OUT OVERRIDES...``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback

from tests.conftest import REPO_ROOT, tiny_overrides
from tests.test_distributed import free_port

RUN = ["+experiment=ael_synthscapes", "trainer.max_steps=3", "trainer.val_check_interval=3",
       "callbacks.rich_progress=false", "method.ael.virtual_ranks=2", "method.ael.bank_sync=false",
       "method.ael.sampling_shared_noise=true", "method.loss.ohem_min_kept=3000",
       "data.labeled_batch_size=4", "data.unlabeled_batch_size=4", "method.ael.copy_paste_prob=1.0",
       "model.aux_head=true", "method.ael.threshold=0.0", "method.ael.bank_momentum=0.5",
       "method.ael.labeled_consistency=true"]


class RecordSteps(Callback):
    """Saves, after every training step, what must not depend on the device layout."""

    def __init__(self, out: Path):
        self.out, self.steps = Path(out), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        terms = pl_module.last_group_terms
        record = {name: t.detach().cpu().clone() for name, t in terms.items() if t is not None}
        record["confidence_bank"] = pl_module.confidence_bank.bank.detach().cpu().clone()
        record["cutmix_bank"] = pl_module.cutmix_bank.bank.detach().cpu().clone()
        for stream in ("labeled", "unlabeled", "bank", "partner"):
            record[f"index/{stream}"] = batch[stream]["index"].cpu().clone()
        record["bank_class"] = batch["bank"]["bank_class"].cpu().clone()
        self.steps.append(record)
        torch.save({"world_size": trainer.world_size, "steps": self.steps},
                   self.out / f"rank{trainer.global_rank}.pt")


def deterministic_normalisation() -> None:
    """BatchNorm with its running statistics, no dropout (module docstring: applied to both runs)."""
    def batchnorm(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    torch.nn.modules.batchnorm._BatchNorm.forward = batchnorm
    for cls in (torch.nn.Dropout, torch.nn.Dropout2d):
        cls.forward = lambda self, x: x


def rank_main(out: str, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    import semiseg_lit.tasks.train as train_task
    from semiseg_lit.__main__ import CONFIG_DIR
    from semiseg_lit.tasks import run_task

    deterministic_normalisation()
    build = train_task.build_callbacks
    train_task.build_callbacks = lambda *a, **k: [*build(*a, **k), RecordSteps(Path(out))]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    run_task(cfg)


def run(out: Path, overrides: list[str], processes: int) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WANDB_MODE="disabled",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LOCAL_RANK", None)
    devices = [f"trainer.devices={processes}"] + (["trainer.strategy=ddp"] if processes > 1 else [])
    proc = subprocess.run([sys.executable, "-m", "tests.test_virtual_ranks", str(out), *overrides, *devices],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    records = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(processes)]
    assert all(r["world_size"] == processes for r in records)
    return [r["steps"] for r in records]


@pytest.mark.slow
def test_one_process_with_two_virtual_ranks_equals_two_gloo_processes(synth_root, tmp_path):
    (one,) = run(tmp_path / "one", [*tiny_overrides(synth_root, tmp_path / "one" / "run"), *RUN], processes=1)
    rank0, rank1 = run(tmp_path / "two", [*tiny_overrides(synth_root, tmp_path / "two" / "run"), *RUN], processes=2)
    assert len(one) == len(rank0) == len(rank1) == 3
    for step, (o, r0, r1) in enumerate(zip(one, rank0, rank1)):
        where = f"step {step}"
        # the same images per emulated GPU (device batch = the two GPUs' batches side by side)
        for key in ("index/labeled", "index/unlabeled", "index/bank", "index/partner", "bank_class"):
            assert torch.equal(o[key], torch.cat([r0[key], r1[key]])), f"{where}: {key}"
        # per-GPU losses, OHEM selection and confidence banks
        for key in ("sup", "aux", "unsup_unlabeled", "unsup_labeled"):
            torch.testing.assert_close(o[key], torch.cat([r0[key], r1[key]]), msg=f"{where}: {key}")
        assert o["sup"].shape == (2,)
        kept = torch.cat([r0["ohem_kept"], r1["ohem_kept"]])
        assert o["ohem_kept"].shape == kept.shape
        assert (o["ohem_kept"] != kept).float().mean() < 1e-3, f"{where}: OHEM selections differ"
        assert not bool(o["ohem_kept"].all()), f"{where}: OHEM should mine (drop easy pixels)"
        torch.testing.assert_close(o["confidence_bank"], torch.cat([r0["confidence_bank"], r1["confidence_bank"]]),
                                   msg=f"{where}: confidence bank")
        assert torch.equal(o["cutmix_bank"], r0["cutmix_bank"]) and torch.equal(r0["cutmix_bank"], r1["cutmix_bank"])
        assert bool(o["cutmix_bank"].any()) and bool((o["unsup_unlabeled"] > 0).all())
    # the two emulated GPUs keep different banks (bank_sync=false), as the reference's GPUs do
    bank = one[-1]["confidence_bank"]
    assert (bank[0] - bank[1]).abs().max() > 0.01


if __name__ == "__main__":
    rank_main(sys.argv[1], sys.argv[2:])
