"""Confidence bank callback (AEL, ael.md §3): owns the per-class confidence ``conf[C]``.

The bank lives on the training device. The method calls :meth:`ConfidenceBank.update` inside its
training step, right after the student's labeled forward pass (the reference updates it there, so
the equalization sampling of the same step already uses the new values; the copy-paste and CutMix
class draws at the start of the step use the previous state):

    conf_c(batch) = Σ_{pixels with y=c} p_c / #{y=c}           (student softmax on labeled pixels)
    bank_c ← τ·bank_c + (1-τ)·conf_c                            (τ = 0.999; absent classes → 0)

With ``sync=True`` the per-class sums and counts are all-reduced over DDP ranks before the
division, so every rank holds the same bank (the statistic of the global batch); ``sync=False``
keeps one bank per rank, as the reference's 8 unsynchronised GPUs do. The bank is saved in every
checkpoint and logged as one curve per class (``bank/<class>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from semiseg_lit.ops.confidence import update_confidence_bank


def class_confidence_sums(probs: torch.Tensor, target: torch.Tensor, num_classes: int,
                          ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_{y=c} p_c, #{y=c})`` per class, float32 ``[C]`` each (the summable form of §3's statistic)."""
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    t = torch.where(valid, target, 0)
    p_gt = probs.float().gather(1, t.unsqueeze(1)).squeeze(1)
    w = valid.float()
    sums = torch.zeros(num_classes, device=probs.device).index_add_(0, t.flatten(), (p_gt * w).flatten())
    counts = torch.zeros(num_classes, device=probs.device).index_add_(0, t.flatten(), w.flatten())
    return sums, counts


class ConfidenceBank(Callback):
    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, momentum: float = 0.999,
                 absent: str = "zero", init: str = "random", sync: bool = True, seed: int = 0,
                 ignore_index: int = 255, log_every_n_steps: int = 20):
        if absent not in ("zero", "keep"):
            raise ValueError(f"method.ael.bank_absent={absent!r}: expected 'zero' or 'keep'")
        if init not in ("random", "zeros", "ones"):
            raise ValueError(f"method.ael.bank_init={init!r}: expected random | zeros | ones")
        self.num_classes, self.momentum, self.absent = int(num_classes), float(momentum), absent
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.sync, self.ignore_index, self.log_every = bool(sync), int(ignore_index), int(log_every_n_steps)
        # initial values (reference: torch.rand(C) after seeding), identical on every rank
        gen = torch.Generator().manual_seed(int(seed))
        self.bank = {"random": torch.rand(num_classes, generator=gen), "zeros": torch.zeros(num_classes),
                     "ones": torch.ones(num_classes)}[init]
        self._strategy = None

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.bank = self.bank.to(pl_module.device)
        self._strategy = trainer.strategy
        pl_module.confidence_bank = self

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.detach().cpu().clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        bank = state_dict["bank"]
        if bank.shape != (self.num_classes,):
            raise ValueError(f"checkpoint confidence bank has {bank.shape[0]} classes, expected {self.num_classes}")
        self.bank = bank.to(self.bank.device, torch.float32)

    # ------------------------------------------------------------------ the update
    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Fold one labeled batch (student softmax ``[B,C,H,W]``, labels ``[B,H,W]``) into the bank."""
        sums, counts = class_confidence_sums(probs, target, self.num_classes, self.ignore_index)
        if self.sync and self._strategy is not None and self._strategy.world_size > 1:
            packed = self._strategy.reduce(torch.stack([sums, counts]), reduce_op="sum")
            sums, counts = packed[0], packed[1]
        conf = sums / (counts + 1e-12)
        self.bank = update_confidence_bank(self.bank, conf, counts > 0, self.momentum, self.absent)
        return self.bank

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.log_every and trainer.global_step % self.log_every == 0:
            pl_module.log_dict({f"bank/{n}": v for n, v in zip(self.class_names, self.bank)}, on_step=True,
                               on_epoch=False)
