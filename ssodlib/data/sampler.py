"""An infinite, seeded batch sampler that mixes labeled and unlabeled images at a fixed ratio.

Batches are a pure function of ``(seed, batch number, rank)``: each source is walked through
epoch-wise permutations (``torch.randperm`` seeded with ``seed`` and the epoch, identical on every
rank), each rank takes every ``world_size``-th index of a permutation padded by wrap-around (as
``DistributedSampler`` does), so ranks see disjoint images in an epoch. Resuming a run at batch ``k``
is ``start_batch=k``: no sampler state needs saving beyond the iteration count.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.distributed as dist


class ShardedStream:
    """The infinite index stream of one source on one rank."""

    def __init__(self, *, size: int, seed: int, rank: int, world_size: int) -> None:
        if size <= 0:
            raise ValueError("a data source of the batch sampler is empty")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_rank = math.ceil(size / world_size)
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def _shard(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.size, generator=g)
            padded = torch.cat([perm, perm[: self.per_rank * self.world_size - self.size]])
            self._epoch, self._perm = epoch, padded[self.rank:: self.world_size]
        return self._perm

    def take(self, start: int, count: int) -> list[int]:
        """Indices at stream positions ``start .. start + count - 1``."""
        out = []
        for pos in range(start, start + count):
            out.append(int(self._shard(pos // self.per_rank)[pos % self.per_rank]))
        return out


class MixedBatchSampler:
    """Yields lists of indices into ``ConcatDataset([labeled, unlabeled])``: ``labeled_per_batch``
    labeled indices (``0 .. num_labeled - 1``) then ``unlabeled_per_batch`` unlabeled ones (offset by
    ``num_labeled``). Ratio 1:4 is ``labeled_per_batch=1, unlabeled_per_batch=4``.

    ``rank`` and ``world_size`` default to torch.distributed's when it is initialised.
    """

    def __init__(self, *, num_labeled: int, num_unlabeled: int, labeled_per_batch: int = 1,
                 unlabeled_per_batch: int = 1, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, start_batch: int = 0) -> None:
        if labeled_per_batch < 0 or unlabeled_per_batch < 0 or labeled_per_batch + unlabeled_per_batch == 0:
            raise ValueError("a batch needs at least one image")
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if distributed else 1)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        self.num_labeled, self.num_unlabeled = num_labeled, num_unlabeled
        self.labeled_per_batch, self.unlabeled_per_batch = labeled_per_batch, unlabeled_per_batch
        self.seed, self.start_batch = seed, start_batch
        shard = dict(rank=self.rank, world_size=self.world_size)
        self.labeled = ShardedStream(size=num_labeled, seed=2 * seed, **shard) if labeled_per_batch else None
        self.unlabeled = ShardedStream(size=num_unlabeled, seed=2 * seed + 1, **shard) if unlabeled_per_batch else None

    def batch(self, k: int) -> list[int]:
        """The ``k``-th batch of this rank."""
        out = []
        if self.labeled is not None:
            out += self.labeled.take(k * self.labeled_per_batch, self.labeled_per_batch)
        if self.unlabeled is not None:
            out += [self.num_labeled + i for i in self.unlabeled.take(k * self.unlabeled_per_batch,
                                                                       self.unlabeled_per_batch)]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start_batch
        while True:
            yield self.batch(k)
            k += 1
