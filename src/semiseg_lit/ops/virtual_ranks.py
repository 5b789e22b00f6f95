"""Emulated GPUs ("virtual ranks", ``method.ael.virtual_ranks``, ael.md §7 and §"per-GPU state").

The official AEL run trains on ``V = 8`` GPUs, and several pieces of its step act per GPU: the
confidence bank, OHEM, the copy-paste and CutMix class draws, the AES noise. To reproduce that on
fewer devices, each device's batch is split into ``G = V / world_size`` equal consecutive groups
and every per-GPU piece acts per group: group ``g`` of device ``r`` is virtual rank ``v = r·G + g``.

Layout rules used everywhere (so that a run does not depend on how the ``V`` virtual ranks are laid
over devices):

* a batch ``[B, ...]`` of a device is ``G`` consecutive groups of ``B / G`` items;
* per-group state is a tensor whose first dimension is ``G`` (e.g. the bank ``[G, C]``);
* the randomness of virtual rank ``v`` at step ``s`` is one generator seeded from ``(seed, s, v)``,
  consumed in the same order by every group (:func:`rand_per_group`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "virtual_rank_seed",
    "virtual_rank_generators",
    "rand_per_group",
    "class_confidence_sums_per_group",
    "roll_within_groups",
    "device_rows",
    "groups_per_device",
]


def virtual_rank_seed(seed: int, step: int, virtual_rank: int) -> int:
    """The seed of one step of one emulated GPU: ``(seed·1000003 + step·7919 + v) mod 2^63``
    (with one group per device ``v`` is the real rank: the seed of a run without emulation)."""
    return (int(seed) * 1_000_003 + int(step) * 7919 + int(virtual_rank)) % (2**63)


def virtual_rank_generators(seed: int, step: int, first_virtual_rank: int, groups: int,
                            device: torch.device | str) -> list[torch.Generator]:
    """One generator per group of this device: virtual ranks ``first … first + groups - 1``."""
    gens = []
    for v in range(first_virtual_rank, first_virtual_rank + groups):
        g = torch.Generator(device=device)
        g.manual_seed(virtual_rank_seed(seed, step, v))
        gens.append(g)
    return gens


def rand_per_group(generators: Sequence[torch.Generator], shape: Sequence[int],
                   device: torch.device | str) -> Tensor:
    """``U[0,1)`` draws ``[G, *shape]``: row ``g`` from ``generators[g]`` (the draw that emulated GPU
    would make). One RNG call per group (``G`` small kernel launches; independent streams cannot be
    fused into one call), no host sync."""
    return torch.stack([torch.rand(tuple(shape), generator=g, device=device) for g in generators])


def class_confidence_sums_per_group(probs: Tensor, target: Tensor, groups: int, num_classes: int,
                                    ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Summable per-group form of the bank statistic (ael.md §3, ``cal_category_confidence``).

    For group ``g`` (images ``B/G·g … B/G·(g+1) - 1``): ``sums[g, c] = Σ_{pixels with y=c} p_c`` and
    ``counts[g, c] = #{y = c}``, so ``conf = sums / (counts + 1e-12)`` is that GPU's statistic.
    Pixels labeled ``ignore_index`` or outside ``[0, C)`` match no class. One ``index_add`` over
    ``G·C`` bins. Returns float32 ``([G, C], [G, C])``.
    """
    b = target.shape[0]
    if groups < 1 or b % groups:
        raise ValueError(f"class_confidence_sums_per_group: batch {b} does not split into {groups} equal groups")
    if probs.dim() != 4 or probs.shape[1] != num_classes or target.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(f"probs/target: expected [B, {num_classes}, H, W] / [B, H, W], got "
                         f"{tuple(probs.shape)} / {tuple(target.shape)}")
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    t = torch.where(valid, target, 0).long()
    p_gt = probs.float().gather(1, t.unsqueeze(1)).squeeze(1)
    group = (torch.arange(b, device=target.device) // (b // groups)).view(b, 1, 1)
    bins = (group * num_classes + t).flatten()
    w = valid.float().flatten()
    sums = torch.zeros(groups * num_classes, device=probs.device).index_add_(0, bins, p_gt.flatten() * w)
    counts = torch.zeros(groups * num_classes, device=probs.device).index_add_(0, bins, w)
    return sums.view(groups, num_classes), counts.view(groups, num_classes)


def roll_within_groups(x: Tensor, groups: int, shifts: int = 1) -> Tensor:
    """``x.roll(shifts, 0)`` inside each of the ``groups`` consecutive chunks of the batch (the partner
    of each image comes from its own emulated GPU's batch)."""
    b = x.shape[0]
    if groups < 1 or b % groups:
        raise ValueError(f"roll_within_groups: batch {b} does not split into {groups} equal groups")
    return x.reshape(groups, b // groups, *x.shape[1:]).roll(shifts, 1).reshape(x.shape)


def device_rows(stored: Tensor, stored_first: int | None, first: int, groups: int, what: str) -> Tensor:
    """The rows of per-GPU state that this device needs from a checkpoint's rows.

    ``stored [R, ...]`` holds virtual ranks ``stored_first … stored_first + R - 1`` (``stored_first=None``:
    a checkpoint from before virtual ranks, one shared row). This device emulates ``first … first + groups - 1``.
    * old single row: broadcast to every group;
    * the needed rows lie inside the stored ones (e.g. a one-device run of all ``V``, resumed on ``V/G``
      devices): those rows;
    * ``R == groups`` otherwise: the stored rows as they are (a multi-device checkpoint is rank 0's state,
      loaded by every rank; exact when the state is synchronised across ranks);
    * else a ``ValueError`` naming ``method.ael.virtual_ranks``.
    """
    rows = stored.shape[0]
    if stored_first is None:
        if rows != 1:
            raise ValueError(f"checkpoint {what}: {rows} rows without a virtual-rank layout")
        return stored.expand(groups, *stored.shape[1:]).clone()
    lo = first - int(stored_first)
    if 0 <= lo and lo + groups <= rows:
        return stored[lo:lo + groups].clone()
    if rows == groups:
        return stored.clone()
    raise ValueError(
        f"checkpoint {what} holds emulated GPUs {stored_first}..{int(stored_first) + rows - 1}, but this process "
        f"emulates {first}..{first + groups - 1} (method.ael.virtual_ranks / world size = {groups} per device): "
        "resume with the method.ael.virtual_ranks and number of devices of the run that wrote it")


def groups_per_device(virtual_ranks: int, world_size: int, key: str = "method.ael.virtual_ranks") -> int:
    """Emulated GPUs per device, ``G = virtual_ranks / world_size`` (1 when ``virtual_ranks <= 1``:
    no emulation, one group per device). A ``ValueError`` naming the key when it does not divide."""
    v, w = int(virtual_ranks), int(world_size)
    if v <= 1:
        return 1
    if v % w:
        raise ValueError(f"{key}={v} (GPUs emulated in all) is not a multiple of the world size "
                         f"{w}: use a multiple of {w} (each device emulates virtual_ranks / world size GPUs), e.g. "
                         "the reference's 8 on 1, 2, 4 or 8 devices")
    return v // w
