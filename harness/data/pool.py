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
