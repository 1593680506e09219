"""Criteo-shaped synthetic data with a planted, learnable signal, addressed by sample index.

Features: 13 heavy-tailed dense counts (log1p'd, as DLRM preprocesses Criteo) and one id per table drawn
from a Zipf law (hot ids scattered by a seeded permutation). Labels come from a planted model:

    logit = dense_weight * <w, standardised dense>
          + interaction_weight * sum over field pairs (i < j) of <v_i(id_i), v_j(id_j)> / norm
          + bias,          label ~ Bernoulli(sigmoid(logit))   (logistic noise)

where v_t(id) is a hidden vector per (field, id) derived from a seeded hash (no table is stored, so a
10M-row field costs nothing), and `bias` is calibrated so the positive rate is near Criteo's 0.25. The
DLRM dot interaction can represent exactly this, so quality differences between representations are
real, not noise.

Every sample has a global index; samples are generated in blocks of `BLOCK` from a generator seeded by
(seed, block), so any range is reproducible in any process without generating what precedes it. Splits
are disjoint index ranges.

>>> gen = SyntheticCriteo(table_rows=(100, 5000), seed=3, signal_fields=(0, 1))
>>> dense, ids, labels = gen.samples("train", start=70, count=4)
>>> dense.shape, ids.shape, labels.shape
((4, 13), (4, 2, 1), (4,))
>>> bool((gen.samples("train", 72, 2)[1] == ids[2:]).all())   # sample 72 is sample 72, however cut
True
"""

from __future__ import annotations

import math

import numpy as np

from harness.core.zipf import ZipfSampler

BLOCK = 1024
# Disjoint regions of the sample index space.
SPLIT_OFFSETS = {"train": 0, "test": 1 << 40, "timing": 2 << 40}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mix (Steele et al.), vectorised; uint64 arithmetic wraps as intended."""
    z = (x + _GOLDEN).astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class SyntheticCriteo:
    """Samples of a Criteo-shaped workload with `len(table_rows)` categorical fields."""

    def __init__(
        self,
        table_rows: tuple[int, ...],
        num_dense: int = 13,
        zipf_exponent: float = 1.05,
        seed: int = 0,
        ids_per_lookup: int = 1,
        signal_fields: tuple[int, ...] = tuple(range(8)),
        latent_dim: int = 8,
        dense_weight: float = 1.0,
        interaction_weight: float = 1.5,
        positive_rate: float = 0.25,
    ) -> None:
        self.table_rows = tuple(int(r) for r in table_rows)
        self.num_dense = num_dense
        self.zipf_exponent = zipf_exponent
        self.seed = seed
        self.ids_per_lookup = ids_per_lookup
        self.samplers = [ZipfSampler(rows, zipf_exponent, seed * 1000 + t)
                         for t, rows in enumerate(self.table_rows)]
        shape_rng = np.random.default_rng([seed, 0xD15E])
        # Criteo's integer columns are counts with medians from ~1 to ~1e4 and long right tails; a lognormal
        # per column with a share of missing values (read as 0, as DLRM does) mimics that.
        self._log_median = shape_rng.uniform(0.0, 6.0, num_dense)
        self._log_sigma = shape_rng.uniform(0.8, 2.0, num_dense)
        self._missing = shape_rng.uniform(0.0, 0.45, num_dense)
        # The planted model.
        self.signal_fields = tuple(f for f in signal_fields if f < len(self.table_rows))
        self.latent_dim = latent_dim
        self.dense_weight = dense_weight
        self.interaction_weight = interaction_weight
        w = shape_rng.normal(size=num_dense)
        self._dense_w = w / np.linalg.norm(w)
        pairs = len(self.signal_fields) * (len(self.signal_fields) - 1) // 2
        self._pair_norm = math.sqrt(max(1, pairs) * latent_dim)
        self._dense_mean = np.zeros(num_dense)
        self._dense_std = np.ones(num_dense)
        self._bias = 0.0
        self._calibrate(positive_rate)

    # ------------------------------------------------------------------ features

    def _dense(self, rng: np.random.Generator, n: int) -> np.ndarray:
        counts = np.floor(np.exp(rng.normal(self._log_median, self._log_sigma, (n, self.num_dense))))
        counts[rng.random((n, self.num_dense)) < self._missing] = 0.0
        return np.log1p(counts).astype(np.float32)

    def _ids(self, rng: np.random.Generator, n: int) -> np.ndarray:
        per = n * self.ids_per_lookup
        cols = [s.sample(rng, per).reshape(n, self.ids_per_lookup) for s in self.samplers]
        return np.ascontiguousarray(np.stack(cols, axis=1))

    def hidden_vectors(self, field: int, ids: np.ndarray) -> np.ndarray:
        """v_field(id): [len(ids), latent_dim], unit-variance entries, from a seeded hash of (field, id)."""
        key = (np.asarray(ids, dtype=np.uint64) * np.uint64(0x100000001B3)
               + np.uint64((self.seed * 1_000_003 + field) & 0xFFFFFFFFFFFF))
        lanes = key[:, None] * np.uint64(self.latent_dim) + np.arange(self.latent_dim, dtype=np.uint64)
        u = (splitmix64(lanes) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        return (u * 2.0 - 1.0) * math.sqrt(3.0)

    def _logit(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        z = (dense - self._dense_mean) / self._dense_std
        logit = self.dense_weight * (z @ self._dense_w)
        if len(self.signal_fields) > 1:
            # Pooled hidden vector per field (one id per bag on Criteo).
            vecs = [
                self.hidden_vectors(f, ids[:, f, :].reshape(-1)).reshape(len(ids), -1, self.latent_dim).sum(1)
                for f in self.signal_fields
            ]
            total = sum(vecs)
            # sum_{i<j} <v_i, v_j> = (|sum v|^2 - sum |v|^2) / 2
            pairs = 0.5 * ((total * total).sum(1) - sum((v * v).sum(1) for v in vecs))
            logit = logit + self.interaction_weight * pairs / self._pair_norm
        return logit + self._bias

    def _calibrate(self, positive_rate: float) -> None:
        """Standardise the dense part and solve for the bias that gives `positive_rate` (deterministic)."""
        rng = np.random.default_rng([self.seed, 0xCA11B])
        dense = self._dense(rng, 16384).astype(np.float64)
        ids = self._ids(rng, 16384)
        self._dense_mean, self._dense_std = dense.mean(0), dense.std(0) + 1e-6
        raw = self._logit(dense, ids)
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            rate = np.mean(1.0 / (1.0 + np.exp(-(raw + mid))))
            lo, hi = (mid, hi) if rate < positive_rate else (lo, mid)
        self._bias = 0.5 * (lo + hi)

    # ------------------------------------------------------------------ samples

    def _block(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0xB10C, index])
        dense = self._dense(rng, BLOCK)
        ids = self._ids(rng, BLOCK)
        p = 1.0 / (1.0 + np.exp(-self._logit(dense.astype(np.float64), ids)))
        labels = (rng.random(BLOCK) < p).astype(np.float32)
        return dense, ids, labels

    def samples(self, split: str, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dense [n, 13] float32, ids [n, T, L] int64, labels [n] float32) of samples start..start+count."""
        first = SPLIT_OFFSETS[split] + start
        blocks = range(first // BLOCK, (first + count - 1) // BLOCK + 1)
        parts = [self._block(b) for b in blocks]
        lo = first - blocks[0] * BLOCK
        dense, ids, labels = (np.concatenate([p[i] for p in parts])[lo : lo + count] for i in range(3))
        return dense, ids, labels

    def batch(self, index: int, size: int, split: str = "timing") -> tuple[np.ndarray, np.ndarray]:
        """(dense, ids) of batch `index` of `size` samples in `split`."""
        dense, ids, _ = self.samples(split, index * size, size)
        return dense, ids
