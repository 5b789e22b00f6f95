"""What only a GPU can check (issue 17); every test is skipped without CUDA.

* 16-mixed training steps with Lightning's GradScaler (loss scale finite, weights updated);
* the CutMix-bank snapshots: pinned host buffers, asynchronous copies, the snapshot read `lag` steps
  later equal to the bank it copied;
* SyncBatchNorm through DDP on one process (NCCL, world size 1);
* no host-device synchronisation inside the training steps of every method:
  ``torch.cuda.set_sync_debug_mode("error")`` from the start to the end of each step after the first,
  outside the logging cadence (tests/sync_probe.py), with the two documented exceptions allowed.

Run on a GPU machine by ``benchmarks/gpu_check.py`` (``pytest --only-device=cuda tests tests/cuda``).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_overrides

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ELN_STAGE3 = ["method.eln.pretrain_steps=0", "method.eln.eln_steps=0", "method.eln.encoder=resnet18",
              "method.eln.encoder_weights=null", "method.eln.decoder_channels=16"]


def fit(compose_cfg, synth_root, out, method: str, extra: list[str], steps: int = 3, callbacks=()):
    from semiseg_lit.tasks.common import build_trainer, prepare_run

    cfg = compose_cfg([f"+experiment={method}_synthscapes", *tiny_overrides(synth_root, out),
                       f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                       "trainer.limit_val_batches=1", "logger.csv.enabled=false", "trainer.accelerator=gpu",
                       *extra])
    out_dir, dm, model = prepare_run(cfg, "fit")
    if callbacks:
        own = model.configure_callbacks
        model.configure_callbacks = lambda: [*own(), *callbacks]
    trainer = build_trainer(cfg, out_dir, [], [])
    trainer.fit(model, datamodule=dm)
    return trainer, model


@pytest.mark.parametrize("method", ["supervised", "ael"])
def test_16_mixed_with_grad_scaler(compose_cfg, synth_root, tmp_path, method):
    from semiseg_lit.tasks.common import prepare_run

    cfg = compose_cfg([f"+experiment={method}_synthscapes", *tiny_overrides(synth_root, tmp_path)])
    before = {k: v.clone() for k, v in prepare_run(cfg, "fit")[2].student.state_dict().items()}
    trainer, model = fit(compose_cfg, synth_root, tmp_path, method, ["trainer.precision=16-mixed"])
    scaler = trainer.precision_plugin.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert torch.isfinite(torch.as_tensor(scaler.get_scale()))
    after = model.student.state_dict()
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k].cpu())]
    assert changed, "no weight changed in 3 steps of 16-mixed training"
    model.raise_if_nonfinite(gather=False)


def test_cutmix_bank_snapshots_are_pinned_asynchronous_and_exact(compose_cfg, synth_root, tmp_path):
    steps = 12
    trainer, model = fit(compose_cfg, synth_root, tmp_path, "ael", ["method.ael.cutmix_bank_lag=3"], steps=steps)
    bank = model.cutmix_bank
    assert bank.bank.is_cuda and bank.snap_bank.is_pinned() and bank.snap_conf.is_pinned()
    last = steps - 1
    conf, snap = bank.snapshot_for(last + bank.lag)  # waits on the copy's event
    assert torch.equal(snap, bank.bank.cpu())  # the asynchronous copy landed, complete
    assert torch.allclose(conf, model.confidence_bank.bank.detach().float().cpu())


def test_sync_batchnorm_on_one_process(compose_cfg, synth_root, tmp_path):
    trainer, model = fit(compose_cfg, synth_root, tmp_path, "ael",
                         ["trainer.strategy=ddp", "trainer.sync_batchnorm=true", "trainer.devices=1"])
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.student.modules())
    assert trainer.world_size == 1
    model.raise_if_nonfinite(gather=False)


@pytest.mark.parametrize(("method", "extra"), [
    ("supervised", []), ("ael", []), ("ael", ["method.ael.cutmix_adaptive=false"]), ("eln", ELN_STAGE3),
    ("unimatch_v2", ["method.unimatch_v2.virtual_ranks=2"]),
], ids=["supervised", "ael", "ael-random-cutmix", "eln-stage3", "unimatch_v2"])
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_no_host_sync_in_training_steps(compose_cfg, synth_root, tmp_path, monkeypatch, method, extra, precision):
    """``set_sync_debug_mode("error")`` over whole steps. 16-mixed is not included: GradScaler reads its
    inf check back every step by design. The documented exception (connected components' convergence
    check in AEL's adaptive CutMix) runs with the mode relaxed."""
    import semiseg_lit.ops.cutmix as cutmix
    from tests.sync_probe import SyncWindow

    original = cutmix.connected_components

    def relaxed(*args, **kwargs):
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("default")
        try:
            return original(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(mode)

    monkeypatch.setattr(cutmix, "connected_components", relaxed)
    window = SyncWindow(log_every_n_steps=50, skip_first=1, cuda_error=True)
    fit(compose_cfg, synth_root, tmp_path, method,
        [*extra, f"trainer.precision={precision}", "trainer.log_every_n_steps=50"], steps=4, callbacks=[window])
    assert window.steps_checked == 3
