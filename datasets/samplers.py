"""Samplers for evaluation: each rank reads a disjoint shard, every sample exactly once (no padding)."""
from __future__ import annotations

from typing import Iterator, Sized

import torch


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
