"""AEL confidence bank: per-class confidence statistic, EMA update and sampling weights (ael.md §3).

The bank ``conf[C]`` estimates how well the student does on each class. It is turned into
* ACP class probabilities ``softmax(sqrt(1 - conf))`` over the pasteable classes,
* ACM class probabilities ``softmax(1 - conf)`` over all classes (paper Eq. 9),
* AES keep-rates ``((1 - conf) / max(1 - conf))^beta`` (paper Eq. 10).

A bank is ``[C]`` or ``[G, C]``: one row per emulated GPU (``method.ael.virtual_ranks``); every
function below acts on each row independently (the classes are the last dimension).

All statistics are computed in float32 on the input's device, without host syncs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from semiseg_lit.ops.ema import decay_for_schedule, resolve_schedule_decay

__all__ = [
    "class_confidence",
    "update_confidence_bank",
    "bank_momentum_for_schedule",
    "resolve_bank_momentum",
    "copy_paste_class_probs",
    "cutmix_class_probs",
    "equalization_keep_rate",
    "sample_classes",
]

_EPS = 1e-12  # the reference's guard in every normaliser (utils.py:337, loss_helper.py:75)


def _check_bank(bank: Tensor, name: str = "bank") -> None:
    if bank.dim() not in (1, 2):
        raise ValueError(f"{name}: expected a tensor [C] or [G, C] (one row per emulated GPU), "
                         f"got shape {tuple(bank.shape)}")
    if not bank.is_floating_point():
        raise ValueError(f"{name}: expected a floating tensor, got dtype {bank.dtype}")


def class_confidence(
    probs: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Per-class mean probability of the ground-truth class over a labeled batch (ael.md §3).

    ``conf_c = Σ_{pixels with y=c} p_c / (#{y=c} + 1e-12)``, pooled over all pixels of the batch
    (pixel-weighted, as the reference ``cal_category_confidence``, utils.py:337; the paper's Eq. 4
    averages per image). Classes absent from ``target`` get ``conf_c = 0``. Pixels labeled
    ``ignore_index`` or outside ``[0, C)`` match no class.

    Args:
        probs: softmax probabilities ``[B, C, H, W]`` (any float dtype; reduced in float32).
        target: labels ``[B, H, W]`` (int64).
        num_classes: ``C``.
        ignore_index: label value that never matches a class.

    Returns:
        ``(conf [C] float32, present [C] bool)``.
    """
    if probs.dim() != 4 or probs.shape[1] != num_classes:
        raise ValueError(f"probs: expected [B, {num_classes}, H, W], got shape {tuple(probs.shape)}")
    if target.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(f"target: expected shape {tuple(probs.shape[:1] + probs.shape[2:])} "
                         f"(probs without C), got {tuple(target.shape)}")
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    p_gt = probs.detach().float().gather(1, safe_target.unsqueeze(1)).squeeze(1)
    # bin C collects every invalid pixel and is dropped
    bins = torch.where(valid, safe_target, torch.full_like(safe_target, num_classes)).flatten()
    sums = torch.zeros(num_classes + 1, dtype=torch.float32, device=probs.device)
    sums.scatter_add_(0, bins, p_gt.flatten())
    # scatter_add, not bincount: CUDA's bincount reads min/max back to the host (a sync per call)
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=probs.device)
    counts = counts.scatter_add_(0, bins, torch.ones_like(bins))[:num_classes].float()  # exact integer counts
    conf = sums[:num_classes] / (counts + _EPS)
    return conf, counts > 0


def update_confidence_bank(
    bank: Tensor,
    conf: Tensor,
    present: Tensor,
    momentum: float = 0.999,
    absent: Literal["zero", "keep"] = "zero",
) -> Tensor:
    """EMA update of the confidence bank (ael.md §3, "update").

    ``bank_c ← τ·bank_c + (1-τ)·conf_c`` for every class (``absent="zero"``: the reference,
    absent classes have ``conf_c = 0`` and are pulled toward 0), or only for present classes
    (``absent="keep"``: absent classes keep their value). Returns a new tensor.
    """
    _check_bank(bank)
    if conf.shape != bank.shape or present.shape != bank.shape:
        raise ValueError(f"conf/present: expected shape {tuple(bank.shape)} like bank, got "
                         f"{tuple(conf.shape)} / {tuple(present.shape)}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum}: expected a value in [0, 1]")
    if absent not in ("zero", "keep"):
        raise ValueError(f"absent={absent!r}: expected 'zero' or 'keep'")
    conf = conf.to(bank.dtype)
    updated = momentum * bank + (1.0 - momentum) * conf
    if absent == "keep":
        updated = torch.where(present.to(torch.bool), updated, bank)
    return updated


# the official momentum 0.999 is a time constant of 1 / (1 - 0.999) = 1000 steps; `auto` uses a time
# constant of max_steps / 16 steps, capped there (so every schedule of >= 16000 steps, every reference
# AEL schedule (18600-52480 steps) included, gets exactly 0.999)
BANK_REFERENCE_MOMENTUM = 0.999
BANK_TIME_CONSTANT_FRACTION = 1.0 / 16.0


def bank_momentum_for_schedule(max_steps: int) -> float:
    """``method.ael.bank_momentum=auto``: the EMA momentum whose time constant follows the schedule.

    ``T = clip(max_steps / 16, 1, 1000)`` steps and ``τ = 1 - 1/T``: the bank forgets its initial
    values (weight ``τ^max_steps ≈ exp(-16)``) and tracks the measured confidence with a lag of
    ~1/16 of the run. Capped at the official ``τ = 0.999`` (``T = 1000``), which every schedule of at
    least 16000 steps (all reference ones) gets exactly. Examples: 400 steps -> 0.96 (T = 25),
    800 -> 0.98, 4000 -> 0.996. Issue 16: with 0.999 a 400-step run keeps ``0.999^400 = 67 %`` of the
    random initial bank.
    """
    return decay_for_schedule(max_steps, BANK_TIME_CONSTANT_FRACTION, BANK_REFERENCE_MOMENTUM)


def resolve_bank_momentum(value: object, max_steps: int) -> float:
    """``method.ael.bank_momentum`` (``auto`` or a number in [0, 1)) as a float for a run of ``max_steps``
    steps; ``ValueError`` naming the key otherwise."""
    return resolve_schedule_decay(value, max_steps, "method.ael.bank_momentum", BANK_TIME_CONSTANT_FRACTION,
                                  BANK_REFERENCE_MOMENTUM, "the confidence bank")


def _ignore_mask(ignore_classes: Tensor | Sequence[int], num_classes: int, device: torch.device) -> Tensor:
    """Bool mask ``[C]`` from a bool mask or a list of class indices; validates what it can without syncing."""
    if isinstance(ignore_classes, Tensor) and ignore_classes.dtype == torch.bool:
        if ignore_classes.shape != (num_classes,):
            raise ValueError(f"ignore_classes: expected a bool mask of shape ({num_classes},), "
                             f"got {tuple(ignore_classes.shape)}")
        mask = ignore_classes.to(device)
        if ignore_classes.device.type == "cpu" and bool(ignore_classes.all()):  # CPU: no device sync
            raise ValueError("ignore_classes: every class is ignored, nothing left to paste")
        return mask
    # an index tensor is read on the host (a config-sized list; pass a bool mask to avoid the copy)
    indices = [int(i) for i in (ignore_classes.tolist() if isinstance(ignore_classes, Tensor) else ignore_classes)]
    bad = [i for i in indices if not 0 <= i < num_classes]
    if bad:
        raise ValueError(f"ignore_classes: indices {bad} outside [0, {num_classes})")
    if len(set(indices)) == num_classes:
        raise ValueError("ignore_classes: every class is ignored, nothing left to paste")
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    if indices:
        mask[torch.tensor(indices, dtype=torch.long, device=device)] = True
    return mask


def copy_paste_class_probs(bank: Tensor, ignore_classes: Tensor | Sequence[int] = ()) -> Tensor:
    """ACP class probabilities ``p_c = exp(sqrt(1-conf_c)) / Σ_{c' not ignored} exp(sqrt(1-conf_c'))``.

    Ignored classes get ``p_c = 0`` (ael.md §3 "ACP class draw", train.py:228; the reference ignores
    ``[0, 1, 2, 8, 10]``). ``ignore_classes`` is a bool mask ``[C]`` or a list of class indices.
    Returns float32 of the bank's shape (``[C]`` or ``[G, C]``).
    """
    _check_bank(bank)
    ignored = _ignore_mask(ignore_classes, bank.shape[-1], bank.device)
    z = (1.0 - bank.float()).clamp_min(0.0).sqrt()
    z = z.masked_fill(ignored, float("-inf"))
    return torch.softmax(z, dim=-1)


def cutmix_class_probs(bank: Tensor) -> Tensor:
    """ACM class probabilities ``p_c = softmax_c(1 - conf_c)`` over all classes (paper Eq. 9, utils.py:209)."""
    _check_bank(bank)
    return torch.softmax(1.0 - bank.float(), dim=-1)


def equalization_keep_rate(bank: Tensor, beta: float = 1.0) -> Tensor:
    """AES keep-rate ``s_c = ((1-conf_c) / (max_c'(1-conf_c') + 1e-12))^β`` (paper Eq. 10, loss_helper.py:75).

    The least confident class is kept with rate ≈ 1; ``1 - conf`` is clamped at 0 so that a bank
    value above 1 cannot produce NaN for fractional β. The max is per row of a ``[G, C]`` bank.
    Returns float32 of the bank's shape.
    """
    _check_bank(bank)
    s = (1.0 - bank.float()).clamp_min(0.0)
    return (s / (s.amax(dim=-1, keepdim=True) + _EPS)).pow(beta)


def sample_classes(
    probs: Tensor, num_samples: int, generator: torch.Generator | None = None, noise: Tensor | None = None
) -> Tensor:
    """Draw ``num_samples`` classes i.i.d. from ``probs [C]`` by inverse CDF (with replacement).

    ``idx = searchsorted(cumsum(p)/Σp, u, right)``, ``u ~ U[0,1)``: the algorithm of
    ``np.random.choice(C, p=p)``, so passing the reference's uniforms as ``noise [num_samples]``
    reproduces its draws. Zero-probability classes are never drawn. Returns int64 ``[num_samples]``.
    With ``probs [G, C]`` (one row per emulated GPU) and ``noise [G, num_samples]`` row ``g`` is drawn
    from ``probs[g]``: int64 ``[G, num_samples]``.
    """
    if probs.dim() not in (1, 2):
        raise ValueError(f"probs: expected a tensor [C] or [G, C], got shape {tuple(probs.shape)}")
    if num_samples < 0:
        raise ValueError(f"num_samples={num_samples}: expected >= 0")
    expected = (*probs.shape[:-1], num_samples)
    if noise is None:
        noise = torch.rand(expected, generator=generator, device=probs.device)
    elif noise.shape != expected:
        raise ValueError(f"noise: expected shape {expected}, got {tuple(noise.shape)}")
    cdf = probs.float().cumsum(-1)
    cdf = cdf / cdf[..., -1:]
    idx = torch.searchsorted(cdf.contiguous(), noise.to(cdf.device, torch.float32).contiguous(), right=True)
    return idx.clamp_max(probs.shape[-1] - 1)
