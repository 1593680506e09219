"""Pools of pre-generated batches per query size, cycled by the timing loop.

Generating inputs inside the timed region would time the generator; one fixed batch would keep every
row hot in cache. A pool of distinct Zipf batches, built before timing and cycled, lets caches see the
reuse a real id stream gives them. Index tensors are contiguous int64, built once per batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from harness.data.synthetic import SyntheticCriteo


class Batch(NamedTuple):
    """One query: `model(*batch)` runs it."""

    dense: torch.Tensor  # [B, 13] float32
    ids: torch.Tensor  # [B, T, L] int64


def pool_size(query_size: int, pool_samples: int, min_batches: int = 4, max_batches: int = 256) -> int:
    """Enough batches to hold about `pool_samples` samples, within [min_batches, max_batches]."""
    return max(min_batches, min(max_batches, math.ceil(pool_samples / query_size)))


def build_pool(generator: SyntheticCriteo, query_size: int, batches: int) -> list[Batch]:
    pool = []
    for index in range(batches):
        dense, ids = generator.batch(index, query_size, split="timing")
        pool.append(Batch(torch.from_numpy(dense), torch.from_numpy(ids)))
    return pool


class Pools:
    """The pools a run's ladder cycles: for each query size, about `pool_samples` distinct samples of the
    dataset's timing split as host batches, built before that size is timed. `pools(query_size)` is the
    `make_pool` that `run_ladder` (harness/pipeline/timing.py) takes.
    """

    def __init__(self, dataset, pool_samples: int) -> None:
        self.dataset = dataset
        self.pool_samples = pool_samples

    def __call__(self, query_size: int) -> list[Batch]:
        batches = self.dataset.pool(query_size, pool_size(query_size, self.pool_samples))
        return [Batch(torch.from_numpy(dense), torch.from_numpy(ids)) for dense, ids in batches]
