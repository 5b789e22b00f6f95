"""CutMix image bank callback (AEL adaptive CutMix, ael.md §4 "ACM").

``bank[c, i] = 1`` ⇔ unlabeled image ``i`` was last seen (in its augmented crop, by the teacher)
showing class ``c`` over at least ``area_thresh`` of the crop. It lives on the training device
and is updated in the training step from the teacher's argmax on both the random and the
bank-drawn unlabeled images. With ``sync=True`` the (index, class-presence) rows of every rank are
all-gathered (B·C bytes per rank and step, not the B·H·W predictions), so all ranks hold the same
bank (indices refer to one sorted unlabeled list, identical on every rank).

The bank-drawn images are loaded by the DataLoader's workers, not synchronously in the training
loop: the ``bank`` stream's :class:`~semiseg_lit.data.samplers.CutMixBankSampler` (in the main
process) draws ``class ~ softmax(1 - conf)`` and an image from ``bank[class]``. Because the
loader prefetches, the sampler reads a CPU snapshot of ``(conf, bank)`` taken ``lag`` steps
earlier; snapshots are kept in a ring and checkpointed, so the draws do not depend on the number
of workers and a resumed run draws exactly what the uninterrupted one did. The device→host copy
of the small bank per step is asynchronous on CUDA (pinned buffers, an event waited on only when
the sampler reads the snapshot ``lag`` steps later), so it costs no host sync.

Emulated GPUs (``method.ael.virtual_ranks``): the confidence snapshot is ``[G, C]`` (one row per group
of the device batch) and the sampler draws each group's images from that group's row. The image bank
itself is one (``sync=True``: shared by every emulated GPU).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from semiseg_lit.ops.cutmix import class_presence, write_cutmix_bank
from semiseg_lit.ops.virtual_ranks import device_rows


class CutMixBank(Callback):
    def __init__(self, num_classes: int, num_images: int, area_thresh: float = 0.01, lag: int = 8,
                 sync: bool = True, groups: int = 1):
        if num_images <= 0:
            raise ValueError("the CutMix bank needs a non-empty unlabeled set")
        if lag < 1:
            raise ValueError(f"method.ael.cutmix_bank_lag={lag}: expected >= 1")
        self.num_classes, self.num_images = int(num_classes), int(num_images)
        self.area_thresh, self.lag, self.sync = float(area_thresh), int(lag), bool(sync)
        self.groups = int(groups)
        self.bank = torch.zeros(num_classes, num_images, dtype=torch.bool)
        # ring of CPU snapshots: slot s % (lag+1) holds (step s, conf [G, C] after step s, bank after step s)
        self.snap_steps = torch.full((lag + 1,), -1, dtype=torch.long)
        self.snap_conf = torch.zeros(lag + 1, self.groups, num_classes)
        self.snap_bank = torch.zeros(lag + 1, num_classes, num_images, dtype=torch.bool)
        self.initial_conf = torch.zeros(self.groups, num_classes)
        self.first_virtual_rank = 0
        self._strategy = None
        self._copied: list[Any] = [None] * (lag + 1)  # CUDA: event marking the end of each slot's copy

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.bank = self.bank.to(pl_module.device)
        self._strategy = trainer.strategy
        pl_module.cutmix_bank = self
        self.first_virtual_rank = int(trainer.global_rank) * self.groups
        if self.bank.is_cuda and not self.snap_bank.is_pinned():  # asynchronous device->host snapshots
            self.snap_conf, self.snap_bank = self.snap_conf.pin_memory(), self.snap_bank.pin_memory()
        bank_cb = getattr(pl_module, "confidence_bank", None)
        if bank_cb is not None:
            self.initial_conf = bank_cb.bank.detach().cpu().float().view(self.groups, self.num_classes).clone()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        for slot in range(self.lag + 1):
            self._wait(slot)
        return {"bank": self.bank.cpu().clone(), "snap_steps": self.snap_steps.clone(),
                "snap_conf": self.snap_conf.clone(), "snap_bank": self.snap_bank.clone(),
                "initial_conf": self.initial_conf.clone(), "first_virtual_rank": self.first_virtual_rank}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        bank = state_dict["bank"]
        if tuple(bank.shape) != (self.num_classes, self.num_images):
            raise ValueError(f"checkpoint CutMix bank has shape {tuple(bank.shape)}, expected "
                             f"({self.num_classes}, {self.num_images}): another dataset or partition?")
        self.bank = bank.to(self.bank.device)
        initial, snap_conf = state_dict["initial_conf"], state_dict["snap_conf"]
        first = state_dict.get("first_virtual_rank")
        if initial.dim() == 1:  # a checkpoint from before virtual ranks: one confidence row
            initial, snap_conf, first = initial[None], snap_conf[:, None], None
        self.initial_conf = device_rows(initial, first, self.first_virtual_rank, self.groups, "CutMix bank")
        if state_dict["snap_steps"].shape == self.snap_steps.shape:
            rows = device_rows(snap_conf.transpose(0, 1), first, self.first_virtual_rank, self.groups, "CutMix bank")
            self.snap_steps.copy_(state_dict["snap_steps"])
            self.snap_conf.copy_(rows.transpose(0, 1))
            self.snap_bank.copy_(state_dict["snap_bank"])

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def update(self, indices: torch.Tensor, pred: torch.Tensor) -> None:
        """Record the classes the teacher sees in each image: ``indices [B]``, ``pred [B,H,W]``.

        With ``sync`` only the per-image presence rows ``[B, C]`` are all-gathered (not the predictions).
        """
        if indices.shape != pred.shape[:1]:
            raise ValueError(f"indices: expected shape ({pred.shape[0]},), got {tuple(indices.shape)}")
        present = class_presence(pred, self.num_classes, self.area_thresh)
        if self.sync and self._strategy is not None and self._strategy.world_size > 1:
            indices = self._strategy.all_gather(indices).flatten(0, 1)
            present = self._strategy.all_gather(present.to(torch.uint8)).flatten(0, 1).bool()
        write_cutmix_bank(self.bank, indices, present)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step - 1
        slot = step % (self.lag + 1)
        conf = pl_module.confidence_bank.bank if getattr(pl_module, "confidence_bank", None) else None
        # the device→host copy of the step (small: C floats + C×N bools); on CUDA it is asynchronous
        # (pinned buffers + an event), and the sampler reads it `lag` steps later: no host sync here
        asynchronous = self.bank.is_cuda
        self._wait(slot)  # the copy `lag + 1` steps ago into this slot (long finished)
        if conf is not None:
            self.snap_conf[slot].copy_(conf.detach().float().view(self.groups, -1), non_blocking=asynchronous)
        self.snap_bank[slot].copy_(self.bank, non_blocking=asynchronous)
        self.snap_steps[slot] = step
        if asynchronous:
            self._copied[slot] = torch.cuda.Event()
            self._copied[slot].record()

    def _wait(self, slot: int) -> None:
        """Block until the asynchronous copy into ``slot`` (if any) has landed."""
        event, self._copied[slot] = self._copied[slot], None
        if event is not None:
            event.synchronize()

    # ------------------------------------------------------------------ read by the sampler
    def snapshot_for(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(conf [G, C], bank [C, N]) as they were after step ``step - lag`` (initial state before that)."""
        src = step - self.lag
        if src < 0:
            return self.initial_conf, torch.zeros(self.num_classes, self.num_images, dtype=torch.bool)
        slot = src % (self.lag + 1)
        if int(self.snap_steps[slot]) != src:
            raise RuntimeError(
                f"CutMix bank snapshot of step {src} is not available when drawing step {step}: the data loader "
                f"prefetches more than method.ael.cutmix_bank_lag={self.lag} steps ahead; raise the lag or lower "
                "data.num_workers")
        self._wait(slot)
        return self.snap_conf[slot], self.snap_bank[slot]
