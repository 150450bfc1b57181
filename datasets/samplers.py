"""Samplers: the training order (resumable mid-epoch, every item with its own random seed) and the evaluation
shards (each rank reads a disjoint shard, every sample exactly once, no padding)."""
from __future__ import annotations

import itertools
from typing import Iterator, Sized

import torch

import utils


class TrainSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (shuffled per epoch, any world size) whose items are (index, seed) pairs, and which can
    start partway through an epoch.

    seed = utils.item_seed(run seed, epoch, index): every random draw made for an item (frame sampling,
    augmentation, the choice of a substitute for an unreadable video) comes from it (SSv2Dataset draws inside
    utils.seeded_rngs(seed)), not from whichever DataLoader worker happened to load the item. So an epoch resumed
    at any step (set_epoch(epoch, start)) loads exactly the items and draws of the uninterrupted one, and the draws
    do not depend on the number of workers.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas, rank, shuffle=True, seed=seed)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch``, skipping this rank's first ``start`` items (a resumed epoch)."""
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in itertools.islice(super().__iter__(), self.start, None):
            yield index, utils.item_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ... of a dataset: disjoint shards, no padding, every sample exactly once.

    (DistributedSampler pads the last shard with repeated samples, which would count some videos twice.)
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"ShardSampler: rank {rank} is not in [0, {num_replicas})")
        self.n, self.num_replicas, self.rank = len(dataset), num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))
