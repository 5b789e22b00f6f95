"""EMA teacher callback: owns the update of ``pl_module.teacher`` from ``pl_module.student``.

The teacher network itself lives on the LightningModule (so ``training_step`` can use it, and it
is moved to the device and saved with the module's state dict); it has ``requires_grad=False``,
so it is neither in the optimizer nor in DDP's gradient all-reduce. The student's parameters are
identical on every rank after each DDP step, hence so is the teacher. The callback's own state
(number of updates, settings) is part of every checkpoint.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from semiseg_lit.ops.ema import ema_decay, ema_update_


class EMATeacher(Callback):
    """Args:
        decay: the EMA cap ``d_max`` (AEL 0.99, ELN 0.995).
        warmup: use ``d = min(1 - 1/(step+1), d_max)`` (AEL/U2PL); ``False`` = constant decay (ELN).
        average_buffers: average BN running statistics too (otherwise the teacher keeps its own).
        start_step: first global step at which the teacher is updated (ELN: the start of stage 3;
            the method copies student → teacher at that step).
    """

    def __init__(self, decay: float = 0.99, warmup: bool = True, average_buffers: bool = False,
                 start_step: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.average_buffers, self.start_step = bool(average_buffers), int(start_step)
        self.updates = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step - 1  # the optimizer step that just happened
        if step < self.start_step or getattr(pl_module, "teacher", None) is None:
            return
        d = ema_decay(step - self.start_step, self.decay, self.warmup)
        ema_update_(pl_module.teacher, pl_module.student, d, self.average_buffers)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "decay": self.decay, "warmup": self.warmup,
                "average_buffers": self.average_buffers, "start_step": self.start_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.updates = int(state_dict.get("updates", 0))
