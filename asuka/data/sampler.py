"""A sampler whose position is two integers, so that a resumed run sees exactly the data it would have seen.

It yields keys ``(epoch, index)``: the dataset derives all per-sample randomness from ``(seed, epoch, index)``, so
neither the dataloader workers nor the number of processes change what a sample is. Each rank takes every
``world_size``-th element of one seeded permutation per epoch (the tail is padded by wrapping, as
``DistributedSampler`` does, so every rank has the same number of batches).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class ResumableShardedSampler(Sampler):
    """Infinite stream of ``(epoch, index)`` keys for one rank, starting at ``(start_epoch, start_offset)``.

    ``start_offset`` counts this rank's samples already consumed in ``start_epoch``.
    """

    def __init__(
        self,
        dataset_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start_epoch: int = 0,
        start_offset: int = 0,
    ) -> None:
        if dataset_len <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.dataset_len = dataset_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.start_epoch = start_epoch
        self.start_offset = start_offset

    @property
    def per_rank(self) -> int:
        """Samples each rank draws per epoch."""
        return -(-self.dataset_len // self.world_size)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's dataset indices for ``epoch``, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.dataset_len)
        else:
            order = np.arange(self.dataset_len)
        total = self.per_rank * self.world_size
        order = np.resize(order, total)  # wrap the tail so every rank has per_rank samples
        return order[self.rank :: self.world_size]

    def position_after(self, consumed: int) -> tuple[int, int]:
        """(epoch, offset) after this rank consumed ``consumed`` samples from the start of training."""
        return consumed // self.per_rank, consumed % self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = self.start_epoch, self.start_offset
        while True:
            for index in self.epoch_indices(epoch)[offset:]:
                yield epoch, int(index)
            epoch, offset = epoch + 1, 0
