"""Stop on a NaN/inf loss without a host sync per training step.

``FiniteGuard.track`` latches, on the training device, the first step whose total loss is not
finite, its value and which loss terms were not finite (a few tiny device ops, no ``.item()``).
``FiniteGuard.check`` reads the latch (one host sync) and raises ``FloatingPointError`` naming the
step and the terms. ``SegMethod`` calls ``check`` every ``trainer.log_every_n_steps`` steps (where
Lightning syncs for logging anyway), before every validation, before every checkpoint is written
and at the end of training, so a non-finite state is never saved: the last good checkpoint is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MAX_TERMS = 32  # loss-term slots; a method has fewer than ten terms


class FiniteGuard:
    def __init__(self) -> None:
        self.names: dict[str, int] = {}  # term name -> slot (same order on every rank: same code path)
        self._step: torch.Tensor | None = None  # first non-finite step, -1 while none
        self._value: torch.Tensor | None = None  # the total loss at that step
        self._terms: torch.Tensor | None = None  # [MAX_TERMS] bool: term non-finite at that step

    @torch.no_grad()
    def track(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int) -> None:
        """Latch ``step`` if ``loss`` is not finite and no earlier step was (device ops only)."""
        loss = loss.detach()
        if self._step is None or self._step.device != loss.device:
            self._step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._value = torch.zeros((), dtype=torch.float32, device=loss.device)
            self._terms = torch.zeros(MAX_TERMS, dtype=torch.bool, device=loss.device)
        hit = ~torch.isfinite(loss) & (self._step < 0)
        for name, value in terms.items():
            slot = self.names.setdefault(name, len(self.names))
            if slot < MAX_TERMS:
                self._terms[slot] |= hit & ~torch.isfinite(value.detach()).all()
        self._value = torch.where(hit, loss.float(), self._value)
        self._step = torch.where(hit, step, self._step)

    def check(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Raise ``FloatingPointError`` if a non-finite loss was latched (on any rank when ``gather``,
        e.g. ``LightningModule.all_gather``, is given: every rank then raises together). One sync."""
        if self._step is None:
            return
        packed = torch.cat([self._step.float().reshape(1), self._value.reshape(1), self._terms.float()])
        if gather is not None:
            packed = gather(packed)
        rows = packed.reshape(-1, packed.shape[-1]).tolist()  # [world, 2 + MAX_TERMS], the host sync
        bad = [row for row in rows if row[0] >= 0]
        if not bad:
            return
        row = min(bad, key=lambda r: r[0])
        names = [name for name, slot in self.names.items() if slot < MAX_TERMS and row[2 + slot]]
        raise FloatingPointError(
            f"non-finite loss at step {int(row[0])}: {row[1]} (terms: {names or 'total only'}); training "
            "stopped, the last good checkpoint is kept")
