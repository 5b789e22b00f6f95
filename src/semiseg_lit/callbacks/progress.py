"""Console progress: a rich progress bar that reads well on long step-based runs.

Shows ``Training`` with ``step / max_steps`` (the training streams are infinite, so Lightning's
``Epoch 0/-2`` is meaningless), the training loss, the learning rate of the first parameter group
(the backbone: ``optim.lr × backbone_lr_mult`` after the schedule), the current stage for staged
methods (ELN: a ``stage(step)`` method), and whatever the method logs with ``prog_bar=True``
(``val/miou``).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

__all__ = ["TrainingProgressBar", "progress_items"]


def progress_items(loss: float | None, lr: float | None, stage: int | None) -> dict[str, str]:
    """The extra progress-bar fields, formatted: ``loss`` (4 decimals), ``lr`` (2-digit exponent), ``stage``."""
    items: dict[str, str] = {}
    if loss is not None:
        items["loss"] = f"{loss:.4f}"
    if lr is not None:
        items["lr"] = f"{lr:.2e}"
    if stage is not None:
        items["stage"] = str(stage)
    return items


class TrainingProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        description = "Training"
        return f"{description:{max(len(description), len(self.validation_description))}}"

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        loss = trainer.callback_metrics.get("train/loss")
        lr = None
        if trainer.optimizers and trainer.optimizers[0].param_groups:
            lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        stage_fn = getattr(pl_module, "stage", None)
        stage = int(stage_fn(int(trainer.global_step))) if callable(stage_fn) else None
        return {**progress_items(None if loss is None else float(loss), lr, stage), **items}
