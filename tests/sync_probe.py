"""Find host-device synchronisations in training steps, on any device.

On CUDA every read of a device value by the host (``.item()``, ``bool(t)``, ``.cpu()``, ``.tolist()``)
and every op whose output size depends on the data (``nonzero``, boolean-mask indexing, ``unique``,
``bincount`` — which reads ``min``/``max`` back — ``masked_select``, ``repeat_interleave`` without an
output size) stalls the host until the GPU has caught up. :class:`SyncCounter` records such calls while
it is active, on CPU tensors too (where they cost nothing, so the test can run in CI): aten ops through a
``TorchDispatchMode``, and the Python-level reads that never reach the dispatcher (``.tolist()``,
``.numpy()``, ``.cpu()``) by wrapping those methods. Each record keeps the innermost frame of this
package's code, so a failing test names the line to fix.

:class:`SyncWindow` is a Lightning callback that activates a counter (and, on CUDA, optionally
``torch.cuda.set_sync_debug_mode("error")``) from ``on_train_batch_start`` to ``on_train_batch_end`` of
every step after the first, skipping the steps at the logging cadence (Lightning reads the logged
values then, by design). Put it after the method's own callbacks (EMA teacher, banks) so their
per-step work is inside the window.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback
from torch.utils._python_dispatch import TorchDispatchMode

PACKAGE = str(Path(__file__).resolve().parents[1] / "src" / "semiseg_lit")
SYNC_OPS = {
    "aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::nonzero", "aten::masked_select",
    "aten::bincount", "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::unique_dim_consecutive", "aten::histc", "aten::allclose",
}
PY_READS = ("tolist", "numpy", "cpu")


# not device syncs on CUDA: torch.optim's Adam/AdamW keep their step counter as a CPU tensor (not
# capturable / fused) and read it with .item() -- a host-only read
HOST_ONLY_FRAMES = ("/torch/optim/",)


def _origin() -> str | None:
    """``file:line function`` of the innermost frame in this package (else the innermost frame); None for
    the host-only reads of :data:`HOST_ONLY_FRAMES`."""
    frames = traceback.extract_stack()[:-3]
    if any(part in f.filename for f in frames for part in HOST_ONLY_FRAMES):
        return None
    ours = [f for f in frames if f.filename.startswith(PACKAGE)]
    f = (ours or frames)[-1]
    return f"{Path(f.filename).name}:{f.lineno} {f.name}" + ("" if ours else " (outside semiseg_lit)")


class SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []  # (what, where)
        self._saved: dict[str, object] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        what = None
        if name in SYNC_OPS or (name == "aten::repeat_interleave" and kwargs.get("output_size") is None
                                and len(args) == 1):
            what = name
        elif name in ("aten::index", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            what = f"{name} with a boolean mask"
        where = _origin() if what else None
        if where is not None:
            self.calls.append((what, where))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        counter = self
        for name in PY_READS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def wrapped(t, *a, __original=original, __name=name, **k):
                where = _origin()
                if where is not None:
                    counter.calls.append((f"Tensor.{__name}", where))
                return __original(t, *a, **k)

            setattr(torch.Tensor, name, wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()
        return super().__exit__(*exc)


class SyncWindow(Callback):
    """Count syncs (and on CUDA, with ``cuda_error=True``, raise on them) inside training steps."""

    def __init__(self, log_every_n_steps: int, skip_first: int = 1, cuda_error: bool = False):
        self.log_every = max(1, int(log_every_n_steps))
        self.skip_first, self.cuda_error = int(skip_first), bool(cuda_error)
        self.counter: SyncCounter | None = None
        self.calls: list[tuple[int, str, str]] = []
        self.steps_checked = 0

    def _logging_step(self, trainer) -> bool:
        # Lightning logs (and reads the values) when (batches_that_stepped + 1) % log_every_n_steps == 0;
        # SegMethod reads its finite-guard latch when global_step % log_every_n_steps == 0 after the step
        return (trainer.global_step + 1) % self.log_every == 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step < self.skip_first or self._logging_step(trainer):
            return
        self.counter = SyncCounter()
        self.counter.__enter__()
        if self.cuda_error and pl_module.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._close(trainer.global_step - 1)

    def on_exception(self, trainer, pl_module, exception):
        self._close(trainer.global_step)

    def _close(self, step: int) -> None:
        if self.counter is None:
            return
        if self.cuda_error and torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
        self.counter.__exit__(None, None, None)
        self.calls += [(step, what, where) for what, where in self.counter.calls]
        self.counter = None
        self.steps_checked += 1
