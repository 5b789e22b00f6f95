"""Supervised baseline: labeled images only.

``L = CE_or_OHEM(main, y) + w_aux · CE_or_OHEM(aux, y)`` (the aux term only when the model has an
aux head), SGD + poly LR from ``SegMethod``. With the same augmentation config it is the
augmentation-matched baseline of the accuracy benchmark (data.md §4.1 (b)).
"""

from __future__ import annotations

import torch

from semiseg_lit.methods.base import SegMethod


class SupervisedMethod(SegMethod):
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch["labeled"]["image"], batch["labeled"]["mask"]
        out = self.student.forward_all(x, aux=True)
        terms = {"sup": self.supervised_loss(out.logits, y)}
        if out.aux is not None:
            terms["aux"] = self.cfg.method.loss.aux_weight * self.supervised_loss(out.aux, y)
        loss = sum(terms.values())
        self.track_finite(loss, terms, self.global_step)
        self.log_losses({"loss": loss, **terms}, batch_size=x.shape[0])
        return loss
