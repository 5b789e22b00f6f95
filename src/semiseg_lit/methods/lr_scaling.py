"""Learning rate that follows the total batch size (``method.optim.scale_lr_with_batch``, opt-in).

A preset's learning rate was tuned for one batch: ``method.optim.base_batch_size`` (the method YAMLs set
it to the reference experiment's official global labeled batch, ``reference.labeled_batch_size``, and
otherwise to the batch of the method's own presets). When the switch is on, every parameter group's
learning rate is multiplied by one factor::

    B     = per-device labeled batch × devices × nodes × accumulate_grad_batches   (images per optimizer step)
    f     = B / base_batch_size              lr_scale_rule=linear (Goyal et al. 2017, "Accurate, Large
                                             Minibatch SGD", §2.1: the linear scaling rule)
    f     = sqrt(B / base_batch_size)        lr_scale_rule=sqrt   (Krizhevsky 2014, "One weird trick", §5;
                                             often used with Adam-type optimizers)
    lr_eff = f · method.optim.lr             (backbone / head multipliers kept: every group × f)

Batch sizes in ``data.*`` are global in this library, so moving the same config to more GPUs keeps ``B``;
``B`` changes with ``data.labeled_batch_size`` and ``trainer.accumulate_grad_batches``. Off by default, and
never on in the reference experiments (they keep the official values exactly; tests/test_presets.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from semiseg_lit.data.datamodule import per_device_batch_size

LR_SCALE_RULES = ("linear", "sqrt")


@dataclass(frozen=True)
class BatchLR:
    """The configured and the effective base learning rate of a run, and how the factor came about."""

    enabled: bool
    configured: float
    effective: float
    factor: float
    total_batch: int
    base_batch: int | None
    rule: str
    per_device: int
    world: int
    accumulate: int

    def describe(self) -> str:
        """The console line (``method.optim.*`` named, the arithmetic shown)."""
        batch = (f"total labeled batch {self.total_batch} = {self.per_device} per device x {self.world} device(s) "
                 f"x {self.accumulate} accumulated")
        if not self.enabled:
            return (f"learning rate {self.configured:g} as configured (method.optim.scale_lr_with_batch=false; "
                    f"{batch})")
        ratio = f"{self.total_batch} / {self.base_batch}"
        how = f"x {ratio}" if self.rule == "linear" else f"x sqrt({ratio})"
        return (f"learning rate: configured {self.configured:g}, effective {self.effective:g} = {self.configured:g} "
                f"{how} (method.optim.scale_lr_with_batch=true, lr_scale_rule={self.rule}, base_batch_size="
                f"{self.base_batch}; {batch}); every parameter group x {self.factor:g}")

    def hparams(self) -> dict[str, Any]:
        """For the loggers' hyperparameters."""
        return {"optim/lr_configured": self.configured, "optim/lr_effective": self.effective,
                "optim/lr_batch_factor": self.factor, "optim/total_batch_size": self.total_batch,
                "optim/base_batch_size": self.base_batch, "optim/scale_lr_with_batch": self.enabled,
                "optim/lr_scale_rule": self.rule}


def check_lr_scaling(optim: Any) -> None:
    """``ValueError`` naming the key for a bad ``method.optim.{scale_lr_with_batch, base_batch_size,
    lr_scale_rule}`` (checked when the method is built, before any work)."""
    rule = str(optim.get("lr_scale_rule", "linear"))
    if rule not in LR_SCALE_RULES:
        raise ValueError(f"method.optim.lr_scale_rule={rule!r}: expected linear (lr x B/base, Goyal et al. 2017) "
                         f"or sqrt (lr x sqrt(B/base))")
    if not bool(optim.get("scale_lr_with_batch", False)):
        return
    base = optim.get("base_batch_size")
    if base is None or isinstance(base, bool) or not isinstance(base, int) or base < 1:
        raise ValueError(f"method.optim.base_batch_size={base!r} with method.optim.scale_lr_with_batch=true: "
                         "expected the global labeled batch the learning rate method.optim.lr was tuned for (a "
                         "positive integer, e.g. method.optim.base_batch_size=16), or scale_lr_with_batch=false")


def lr_batch_factor(total_batch: int, base_batch: int, rule: str = "linear") -> float:
    """``B / base`` (linear) or ``sqrt(B / base)`` (sqrt)."""
    if rule not in LR_SCALE_RULES:
        raise ValueError(f"method.optim.lr_scale_rule={rule!r}: expected one of {', '.join(LR_SCALE_RULES)}")
    ratio = total_batch / base_batch
    return ratio if rule == "linear" else math.sqrt(ratio)


def resolve_batch_lr(optim: Any, labeled_batch_size: int, world: int, accumulate: int, virtual_ranks: int = 1,
                     sync_batchnorm: bool = False) -> BatchLR:
    """The run's :class:`BatchLR`: ``labeled_batch_size`` is ``data.labeled_batch_size`` (global), ``world`` the
    devices x nodes of the trainer, ``accumulate`` its ``accumulate_grad_batches``."""
    check_lr_scaling(optim)
    enabled = bool(optim.get("scale_lr_with_batch", False))
    # the data module refuses a batch that does not divide over the devices; off, nothing is checked here
    per = (per_device_batch_size("labeled", int(labeled_batch_size), int(world), virtual_ranks, sync_batchnorm)
           if enabled else int(labeled_batch_size) // max(1, int(world)))
    total = per * int(world) * int(accumulate)
    base = optim.get("base_batch_size")
    rule = str(optim.get("lr_scale_rule", "linear"))
    factor = lr_batch_factor(total, int(base), rule) if enabled else 1.0
    lr = float(optim.lr)
    return BatchLR(enabled=enabled, configured=lr, effective=lr * factor, factor=factor, total_batch=total,
                   base_batch=None if base is None else int(base), rule=rule, per_device=per, world=int(world),
                   accumulate=int(accumulate))
