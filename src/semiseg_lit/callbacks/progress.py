"""Console progress: a rich progress bar that reads well on long step-based runs.

Shows ``Training`` with ``step / max_steps`` (the training streams are infinite, so Lightning's
``Epoch 0/-2`` is meaningless), the training loss, the learning rate of the first parameter group
(the backbone: ``optim.lr × backbone_lr_mult`` after the schedule), the current stage for staged
methods (ELN: a ``stage(step)`` method), and whatever the method logs with ``prog_bar=True``
(``val/miou``).

:class:`ParameterSummary` replaces Lightning's model summary table: one line per top-level module
(name, type, parameters, trainable or frozen) and the totals, without the FLOPs column (always 0: the
project sets no ``example_input_array``) and the train/eval module counts.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelSummary, RichProgressBar
from pytorch_lightning.utilities.model_summary import get_human_readable_count

__all__ = ["TrainingProgressBar", "ParameterSummary", "progress_items", "parameter_summary"]

log = logging.getLogger(__name__)


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


def parameter_summary(module: pl.LightningModule) -> str:
    """``name (Type): N params [trainable|frozen]`` per direct child that has parameters, then the totals."""
    lines = []
    total = trainable = 0
    for name, child in module.named_children():
        n = sum(p.numel() for p in child.parameters())
        if not n:
            continue
        n_train = sum(p.numel() for p in child.parameters() if p.requires_grad)
        state = "trainable" if n_train == n else "frozen" if n_train == 0 else f"{get_human_readable_count(n_train)} trainable"
        lines.append(f"  {name} ({type(child).__name__}): {get_human_readable_count(n)} params, {state}")
        total, trainable = total + n, trainable + n_train
    lines.append(f"  total {get_human_readable_count(total)} params, {get_human_readable_count(trainable)} trainable "
                 f"({total * 4 / 1e6:.1f} MB in float32)")
    return "model:\n" + "\n".join(lines)


class ParameterSummary(ModelSummary):
    """Lightning's model summary, reduced to what a user reads (module docstring)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            log.info(parameter_summary(pl_module))
