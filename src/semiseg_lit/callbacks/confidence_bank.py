"""Confidence bank callback (AEL, ael.md §3): owns the per-class confidence ``conf[C]``.

The bank lives on the training device. The method calls :meth:`ConfidenceBank.update` inside its
training step, right after the student's labeled forward pass (the reference updates it there, so
the equalization sampling of the same step already uses the new values; the copy-paste and CutMix
class draws at the start of the step use the previous state):

    conf_c(batch) = Σ_{pixels with y=c} p_c / #{y=c}           (student softmax on labeled pixels)
    bank_c ← τ·bank_c + (1-τ)·conf_c                            (absent classes → 0)

``τ`` is ``method.ael.bank_momentum`` as resolved by the method: the reference's 0.999, or ``auto``
(:func:`semiseg_lit.ops.confidence.bank_momentum_for_schedule`: time constant ``max_steps / 16``
steps, at most 1000 = the reference).

With ``sync=True`` the per-class sums and counts are all-reduced over DDP ranks before the
division, so every rank holds the same bank (the statistic of the global batch); ``sync=False``
keeps one bank per rank, as the reference's 8 unsynchronised GPUs do.

Emulated GPUs (``method.ael.virtual_ranks``, :mod:`semiseg_lit.ops.virtual_ranks`): the bank is
``[G, C]``, one row per group of the device batch. ``sync=False``: row ``g`` is updated from group
``g``'s labeled crops only (one reference GPU each); ``sync=True``: the sums and counts of all groups
and ranks are added, so every row of every rank holds the global statistic. The bank (all rows, with
their virtual ranks) is saved in every checkpoint and logged as one curve per class, the mean over
the rows (``bank/<class>``), next to the statistic it tracks: ``bank/<class>_measured`` is ``conf_c`` of
the logged step's labeled batch (mean over the rows holding the class; NaN, a gap in the curve, when no
labeled pixel of the class is in the batch). A bank that works converges onto its ``_measured`` curve
within a few time constants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from semiseg_lit.ops.confidence import update_confidence_bank
from semiseg_lit.ops.virtual_ranks import class_confidence_sums_per_group, device_rows


def class_confidence_sums(probs: torch.Tensor, target: torch.Tensor, num_classes: int,
                          ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_{y=c} p_c, #{y=c})`` per class, float32 ``[C]`` each (the summable form of §3's statistic)."""
    sums, counts = class_confidence_sums_per_group(probs, target, 1, num_classes, ignore_index)
    return sums[0], counts[0]


class ConfidenceBank(Callback):
    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, momentum: float = 0.999,
                 absent: str = "zero", init: str = "random", sync: bool = True, seed: int = 0,
                 ignore_index: int = 255, log_every_n_steps: int = 20, groups: int = 1):
        if absent not in ("zero", "keep"):
            raise ValueError(f"method.ael.bank_absent={absent!r}: expected 'zero' or 'keep'")
        if init not in ("random", "zeros", "ones"):
            raise ValueError(f"method.ael.bank_init={init!r}: expected random | zeros | ones")
        self.num_classes, self.momentum, self.absent = int(num_classes), float(momentum), absent
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.sync, self.ignore_index, self.log_every = bool(sync), int(ignore_index), int(log_every_n_steps)
        self.groups = int(groups)
        # initial values (reference: torch.rand(C) after seeding), identical on every (emulated) rank
        gen = torch.Generator().manual_seed(int(seed))
        init_row = {"random": torch.rand(num_classes, generator=gen), "zeros": torch.zeros(num_classes),
                    "ones": torch.ones(num_classes)}[init]
        self.bank = init_row.expand(self.groups, num_classes).clone()  # [G, C]
        self.first_virtual_rank = 0
        self._strategy = None
        self.measured: torch.Tensor | None = None  # conf_c of the last update, [C], NaN where absent

    # ------------------------------------------------------------------ lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.bank = self.bank.to(pl_module.device)
        self._strategy = trainer.strategy
        self.first_virtual_rank = int(trainer.global_rank) * self.groups
        pl_module.confidence_bank = self

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.detach().cpu().clone(), "first_virtual_rank": self.first_virtual_rank}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        bank = state_dict["bank"]
        if bank.shape[-1] != self.num_classes or bank.dim() not in (1, 2):
            raise ValueError(f"checkpoint confidence bank has shape {tuple(bank.shape)}, expected "
                             f"[{self.groups}, {self.num_classes}] ({self.num_classes} classes)")
        if bank.dim() == 1:  # a checkpoint from before virtual ranks: one bank
            bank, first = bank[None], None
        else:
            first = int(state_dict.get("first_virtual_rank", 0))
        rows = device_rows(bank, first, self.first_virtual_rank, self.groups, "confidence bank")
        self.bank = rows.to(self.bank.device, torch.float32)

    # ------------------------------------------------------------------ the update
    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Fold one labeled batch (student softmax ``[B,C,H,W]``, labels ``[B,H,W]``) into the bank:
        row ``g`` from the ``g``-th of ``G`` equal groups of the batch (``sync``: from all of them, all ranks)."""
        sums, counts = class_confidence_sums_per_group(probs, target, self.groups, self.num_classes,
                                                       self.ignore_index)
        if self.sync:
            sums, counts = sums.sum(0, keepdim=True), counts.sum(0, keepdim=True)
            if self._strategy is not None and self._strategy.world_size > 1:
                packed = self._strategy.reduce(torch.stack([sums, counts]), reduce_op="sum")
                sums, counts = packed[0], packed[1]
            sums, counts = sums.expand(self.groups, -1), counts.expand(self.groups, -1)
        conf = sums / (counts + 1e-12)
        present = counts > 0
        self.bank = update_confidence_bank(self.bank, conf, present, self.momentum, self.absent)
        n = present.sum(0)
        self.measured = torch.where(n > 0, (conf * present).sum(0) / n.clamp_min(1), float("nan"))
        return self.bank

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.log_every and trainer.global_step % self.log_every == 0:
            mean = self.bank.mean(0)  # over the emulated GPUs of this device
            values = {f"bank/{n}": v for n, v in zip(self.class_names, mean)}
            if self.measured is not None:
                values.update({f"bank/{n}_measured": v for n, v in zip(self.class_names, self.measured)})
            pl_module.log_dict(values, on_step=True, on_epoch=False)
