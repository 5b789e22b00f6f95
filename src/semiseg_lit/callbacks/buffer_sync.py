"""Averages BatchNorm running statistics over DDP ranks where they are used: before every validation and
when training ends (before the final checkpoint and evaluation).

Without SyncBatchNorm every rank updates the running statistics of its networks (student, teacher,
ELN) from its own batches. DDP broadcasts rank 0's buffers at the start of each training forward, so
the ranks agree during training, but after the last step (and after the last step before a validation
that does not go through the DDP wrapper, e.g. ``trainer.validate``) each rank holds its own values:
the ranks would evaluate different networks and the checkpoint (rank 0's) would not be the network
behind the other ranks' share of the metrics. Averaging at these points makes all ranks identical
(and uses every rank's data); it costs one all-reduce of the BN statistics per validation, none per
training step. A no-op on a single process.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn


def batchnorm_statistics(module: nn.Module) -> list[torch.Tensor]:
    """``running_mean`` / ``running_var`` of every BatchNorm layer of ``module`` that tracks them."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out += [b for b in (m.running_mean, m.running_var) if b is not None]
    return out


@torch.no_grad()
def average_over_ranks_(tensors: list[torch.Tensor], strategy: Any) -> None:
    """Replace each tensor by its mean over the ranks of ``strategy`` (one all-reduce per dtype/device)."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        flat = strategy.reduce(flat, reduce_op="mean")
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


class SyncBatchNormStatistics(Callback):
    """Average the BN running statistics of the whole LightningModule over ranks (module docstring)."""

    def sync(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size <= 1:
            return
        stats = batchnorm_statistics(pl_module)
        if stats:
            average_over_ranks_(stats, trainer.strategy)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sync(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sync(trainer, pl_module)
