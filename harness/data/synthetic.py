"""Criteo-shaped synthetic samples: heavy-tailed dense counts and Zipf-popular categorical ids.

Batches are addressed, not streamed: `batch(index, size)` draws from a generator seeded by
(seed, split, size, index), so batch i is the same in every process and never needs batches 0..i-1.

>>> gen = SyntheticCriteo(table_rows=(100, 5000), seed=3)
>>> dense, ids = gen.batch(7, size=4)
>>> dense.shape, ids.shape, dense.dtype.name, ids.dtype.name
((4, 13), (4, 2, 1), 'float32', 'int64')
>>> bool((gen.batch(7, size=4)[1] == ids).all())
True
"""

from __future__ import annotations

import numpy as np

from harness.data.zipf import ZipfSampler

SPLITS = {"train": 0, "test": 1, "timing": 2}


class SyntheticCriteo:
    """Features for a Criteo-shaped workload with `len(table_rows)` categorical columns."""

    def __init__(
        self,
        table_rows: tuple[int, ...],
        num_dense: int = 13,
        zipf_exponent: float = 1.05,
        seed: int = 0,
        ids_per_lookup: int = 1,
    ) -> None:
        self.table_rows = tuple(int(r) for r in table_rows)
        self.num_dense = num_dense
        self.zipf_exponent = zipf_exponent
        self.seed = seed
        self.ids_per_lookup = ids_per_lookup
        self.samplers = [ZipfSampler(rows, zipf_exponent, seed * 1000 + t) for t, rows in
                         enumerate(self.table_rows)]
        shape_rng = np.random.default_rng([seed, 0xD15E])
        # Criteo's integer columns are counts with medians from ~1 to ~1e4 and long right tails;
        # a lognormal per column with a share of missing values (read as 0, as DLRM does) mimics that.
        self._log_median = shape_rng.uniform(0.0, 6.0, num_dense)
        self._log_sigma = shape_rng.uniform(0.8, 2.0, num_dense)
        self._missing = shape_rng.uniform(0.0, 0.45, num_dense)

    def _rng(self, split: str, index: int, size: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[split], size, index])

    def dense(self, rng: np.random.Generator, size: int) -> np.ndarray:
        counts = np.floor(np.exp(rng.normal(self._log_median, self._log_sigma, (size, self.num_dense))))
        counts[rng.random((size, self.num_dense)) < self._missing] = 0.0
        return np.log1p(counts).astype(np.float32)

    def ids(self, rng: np.random.Generator, size: int) -> np.ndarray:
        per = size * self.ids_per_lookup
        cols = [sampler.sample(rng, per).reshape(size, self.ids_per_lookup) for sampler in self.samplers]
        return np.ascontiguousarray(np.stack(cols, axis=1))

    def batch(self, index: int, size: int, split: str = "timing") -> tuple[np.ndarray, np.ndarray]:
        """(dense [size, 13] float32, ids [size, T, L] int64) for batch `index` of `split`."""
        rng = self._rng(split, index, size)
        return self.dense(rng, size), self.ids(rng, size)
