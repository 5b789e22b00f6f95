"""Seeded, infinite, rank-sharded training streams.

Each training stream (labeled, unlabeled, copy-paste partners) is an endless sequence of
``(dataset_index, sample_seed)`` pairs. Pass ``e`` of a stream is a permutation of the dataset
drawn from ``(seed, stream_id, e)``; position ``k`` of the global stream goes to rank
``k % world_size``. Hence:

* the labeled stream cycles independently of the unlabeled one (each reshuffles when it runs
  out), and with ``drop_last`` batching a batch never has size 1;
* every rank sees a disjoint shard of the same global order (identical on all ranks without
  communication);
* the stream is a pure function of its position, so resuming at step ``s`` restarts it at
  ``s × batch_size`` and reproduces the uninterrupted run (the per-sample seed also fixes the
  augmentation, see ``transforms.reseed``).

Emulated GPUs (``method.ael.virtual_ranks``): with ``G`` groups of ``b`` items per device batch, the
device batch of rank ``r`` is the concatenation of the batches that virtual ranks ``r·G … r·G + G - 1``
would get from a stream sharded over ``W·G`` ranks. Item ``j`` of group ``g`` at step ``s`` is global
position ``(s·b + j)·W·G + r·G + g``; so the images (and their augmentations) of a virtual rank do not
depend on how the virtual ranks are laid over devices. ``G = 1`` is the plain sharding above.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def virtual_rank_position(local: int, rank: int, world_size: int, groups: int = 1, group_batch: int = 1) -> int:
    """Global stream position of the ``local``-th item of rank ``rank``'s stream (module docstring):
    ``(s·b + j)·W·G + r·G + g`` with ``(s, g, j)`` = (step, group, item) of ``local`` in batches of ``G·b``."""
    step, within = divmod(local, groups * group_batch)
    group, item = divmod(within, group_batch)
    return (step * group_batch + item) * (world_size * groups) + rank * groups + group


def sample_seed(seed: int, stream_id: int, position: int) -> int:
    """A 31-bit seed for the sample at global ``position`` of a stream (splitmix-style hash)."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, stream_id, position & 0xFFFFFFFF, position >> 32])
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


class InfiniteStreamSampler(Sampler):
    """Endless seeded stream of ``(index, sample_seed)`` for one rank.

    Args:
        size: number of items in the dataset (> 0).
        seed: base seed (the run's ``seed``).
        stream_id: distinguishes the labeled / unlabeled / partner streams.
        rank, world_size: this process's shard.
        start: number of items of THIS rank's shard already consumed (resume offset).
        groups, group_batch: emulated GPUs per device and items per group (module docstring).
    """

    def __init__(self, size: int, seed: int, stream_id: int, rank: int = 0, world_size: int = 1,
                 start: int = 0, groups: int = 1, group_batch: int = 1):
        if size <= 0:
            raise ValueError(f"cannot build a training stream over an empty dataset (stream {stream_id})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.size, self.seed, self.stream_id = size, seed, stream_id
        self.rank, self.world_size, self.start = rank, world_size, start
        self.groups, self.group_batch = int(groups), int(group_batch)

    def _permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.stream_id, epoch])
        return rng.permutation(self.size)

    def global_position(self, local_position: int) -> int:
        return virtual_rank_position(local_position, self.rank, self.world_size, self.groups, self.group_batch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        local = self.start
        cached_epoch, perm = -1, None
        while True:
            pos = self.global_position(local)
            epoch, offset = divmod(pos, self.size)
            if epoch != cached_epoch:
                perm, cached_epoch = self._permutation(epoch), epoch
            yield int(perm[offset]), sample_seed(self.seed, self.stream_id, pos)
            local += 1


class ShardSampler(Sampler):
    """Evaluation sampler: rank ``r`` gets items ``r, r+W, r+2W, …`` with NO padding, so a
    dataset-level confusion matrix summed over ranks counts every image exactly once (Lightning's
    default DistributedSampler repeats samples to even out the shards, libraries.md §D.4)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def worker_init(worker_id: int) -> None:
    """Keep each DataLoader worker single-threaded in OpenCV/torch (the workers are the parallelism), and
    let Ctrl-C reach the main process only: it ends training with a checkpoint (callbacks/preemption.py)
    and needs its workers alive until then (a terminal sends SIGINT to the whole process group)."""
    import signal

    import cv2

    cv2.setNumThreads(0)
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class CutMixBankSampler(Sampler):
    """AEL's bank-drawn unlabeled images (ael.md §4 ACM step 2) as a seeded stream.

    For every position: ``class ~ softmax(1 - conf)`` over all classes, then an image uniformly
    among those whose CutMix-bank row has that class (uniformly among all images when none has).
    ``bank_source()`` returns an object with ``snapshot_for(step) -> (conf [C], bank [C, N])``
    (the :class:`~semiseg_lit.callbacks.cutmix_bank.CutMixBank` callback): the state of a fixed
    number of steps earlier, so prefetching workers cannot change the draws. Yields
    ``(index, sample_seed, class)``. With ``groups`` emulated GPUs per device, ``conf`` is ``[G, C]``
    and the items of group ``g`` are drawn from ``conf[g]``, at the virtual rank's stream position.
    """

    stream_id = 4

    def __init__(self, bank_source, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0, groups: int = 1):
        self.bank_source, self.batch_size, self.seed = bank_source, int(batch_size), int(seed)
        self.rank, self.world_size, self.start = rank, world_size, start
        if groups < 1 or self.batch_size % groups:
            raise ValueError(f"bank stream: batch {batch_size} per device does not split into {groups} groups")
        self.groups, self.group_batch = int(groups), self.batch_size // int(groups)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        local = self.start
        while True:
            step = local // self.batch_size
            conf, bank = self.bank_source().snapshot_for(step)
            group = (local % self.batch_size) // self.group_batch
            pos = virtual_rank_position(local, self.rank, self.world_size, self.groups, self.group_batch)
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.stream_id, pos & 0xFFFFFFFF, pos >> 32])
            z = 1.0 - conf.reshape(self.groups, -1)[group].double().numpy()
            p = np.exp(z - z.max())
            cls = int(rng.choice(len(p), p=p / p.sum()))
            row = np.flatnonzero(bank[cls].numpy())
            index = int(rng.choice(row)) if len(row) else int(rng.integers(bank.shape[1]))
            yield index, sample_seed(self.seed, self.stream_id, pos), cls
            local += 1
