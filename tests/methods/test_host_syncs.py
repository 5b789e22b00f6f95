"""No host-device synchronisation inside a training step of any method (outside the logging cadence).

Counts, on CPU (tests/sync_probe.py), every call that would make the host wait for a CUDA device:
reads of device values (``.item()``, ``bool(t)``, ``.cpu()``, ``.tolist()``, ``.numpy()``) and
data-dependent-size ops (``nonzero``, boolean-mask indexing, ``unique``, ``bincount``, ...), from the
start to the end of each training step (the method's ``training_step``, backward, optimizer, and the
EMA-teacher / confidence-bank / CutMix-bank callbacks). tests/cuda/test_cuda.py runs the same steps
under ``torch.cuda.set_sync_debug_mode("error")`` on a GPU.
"""

from __future__ import annotations

import pytest

from tests.conftest import tiny_overrides
from tests.sync_probe import SyncWindow

LOG_EVERY = 50
# known, deliberate exceptions: (what, "file:function" of the origin) -> why it is not fixed
ALLOWED = {
    ("aten::equal", "cutmix.py connected_components"):
        "convergence check of the label propagation, once per 4 iterations (2-4 per AEL step); the "
        "iteration count depends on the component shapes (BENCHMARKS.md, host syncs)",
    ("aten::_local_scalar_dense", "confidence.py _ignore_mask"):
        "validates a CPU ignore mask only (guarded by device.type == 'cpu'): no device sync on CUDA",
}


def unexpected(calls) -> list[tuple[str, str]]:
    """(what, where) of the recorded calls that are not in :data:`ALLOWED`."""
    found = set()
    for _, what, where in calls:
        file_line, func = where.split(" ", 1)
        if (what, f"{file_line.split(':')[0]} {func}") not in ALLOWED:
            found.add((what, where))
    return sorted(found)
ELN_STAGE3 = ["method.eln.pretrain_steps=0", "method.eln.eln_steps=0", "method.eln.encoder=resnet18",
              "method.eln.encoder_weights=null", "method.eln.decoder_channels=16"]


def fit_with_window(compose_cfg, synth_root, out, method: str, extra: list[str], steps: int = 4,
                    accelerator: str = "cpu", cuda_error: bool = False) -> SyncWindow:
    """Train ``steps`` steps of ``method`` (tiny synthscapes config) with a :class:`SyncWindow` placed after
    the method's own callbacks; returns the window with its records."""
    from semiseg_lit.tasks.common import build_trainer, prepare_run

    cfg = compose_cfg([f"+experiment={method}_synthscapes", *tiny_overrides(synth_root, out),
                       f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                       "trainer.limit_val_batches=0", f"trainer.log_every_n_steps={LOG_EVERY}",
                       "logger.csv.enabled=false", f"trainer.accelerator={accelerator}", *extra])
    out_dir, dm, model = prepare_run(cfg, "fit")
    window = SyncWindow(LOG_EVERY, skip_first=1, cuda_error=cuda_error)
    own = model.configure_callbacks

    def with_window():
        return [*own(), window]

    model.configure_callbacks = with_window
    build_trainer(cfg, out_dir, [], []).fit(model, datamodule=dm)
    return window


@pytest.mark.slow
@pytest.mark.parametrize(("method", "extra"), [
    ("supervised", []),
    ("ael", []),
    ("ael", ["method.ael.cutmix_adaptive=false"]),
    ("eln", ELN_STAGE3),
    ("eln", ["method.eln.pretrain_steps=0", "method.eln.eln_steps=100", "method.eln.encoder=resnet18",
             "method.eln.encoder_weights=null", "method.eln.decoder_channels=16"]),  # stage 2
    ("unimatch_v2", ["method.unimatch_v2.virtual_ranks=2"]),
], ids=["supervised", "ael", "ael-random-cutmix", "eln-stage3", "eln-stage2", "unimatch_v2"])
def test_no_host_sync_inside_training_steps(compose_cfg, synth_root, tmp_path, method, extra):
    window = fit_with_window(compose_cfg, synth_root, tmp_path, method, extra)
    assert window.steps_checked == 3  # steps 1, 2, 3 (step 0 warms up)
    found = unexpected(window.calls)
    assert not found, "host syncs in the training step:\n" + "\n".join(f"  {w}  at {loc}" for w, loc in found)


def test_probe_sees_item_bool_tolist_and_masked_indexing():
    import torch

    from tests.sync_probe import SyncCounter

    x = torch.arange(6.0)
    with SyncCounter() as counter:
        x.sum().item()
        bool(x.max() > 2)
        x.tolist()
        x[x > 2]
        torch.bincount(x.long(), minlength=8)
        x.mul(2).add_(1)  # no sync
    kinds = [what for what, _ in counter.calls]
    assert kinds.count("aten::_local_scalar_dense") + kinds.count("aten::is_nonzero") >= 2
    assert "Tensor.tolist" in kinds and "aten::bincount" in kinds
    assert any("boolean mask" in k or k == "aten::nonzero" for k in kinds)
    assert len(kinds) <= 6
