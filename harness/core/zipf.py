"""Power-law (Zipf) id sampling over a bounded range, with hot ids scattered by a seeded permutation.

numpy's `zipf` needs an exponent > 1 and is unbounded; recommendation ids need exponents around 1
(Criteo's are near 1.05) over a fixed table, so this samples the bounded law P(rank k) ~ k^-s, k = 1..n:
exactly over the first `HEAD` ranks (where almost all the mass and all the cache behaviour is), and by
inverting the integral of x^-s over the tail (midpoint rule), which is accurate to well under 1% there.

>>> import numpy as np
>>> sampler = ZipfSampler(rows=1000, exponent=1.05, seed=0)
>>> ids = sampler.sample(np.random.default_rng(0), 10_000)
>>> bool(ids.min() >= 0 and ids.max() < 1000)
True
"""

from __future__ import annotations

import math

import numpy as np

HEAD = 4096


class ZipfSampler:
    """Draw ids in [0, rows) with P(rank k) ~ k^-exponent; rank k maps to id perm(k) (seeded, bijective)."""

    def __init__(self, rows: int, exponent: float, seed: int) -> None:
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        if exponent < 0:
            raise ValueError(f"zipf exponent must be >= 0, got {exponent}")
        self.rows = int(rows)
        self.exponent = float(exponent)
        head = min(self.rows, HEAD)
        weights = np.arange(1, head + 1, dtype=np.float64) ** -self.exponent
        self._head_cdf = np.cumsum(weights)
        self._head_mass = float(self._head_cdf[-1])
        self._tail_start = head + 0.5
        self._tail_mass = self._integral(self._tail_start, self.rows + 0.5) if self.rows > head else 0.0
        # An affine map r -> (a*r + b) mod rows with gcd(a, rows) = 1 is a bijection: a permutation that
        # needs no memory, so a 10M-row table costs nothing to scatter. a*r < 2^63 for rows < 3e9.
        rng = np.random.default_rng([seed, self.rows, 0x5A1F])
        a = int(rng.integers(1, max(2, self.rows)))
        while math.gcd(a, self.rows) != 1:
            a = a % self.rows + 1
        self._mult = a
        self._shift = int(rng.integers(0, self.rows))

    def _integral(self, lo: float, hi: float) -> float:
        s = self.exponent
        if abs(s - 1.0) < 1e-12:
            return math.log(hi / lo)
        return (hi ** (1 - s) - lo ** (1 - s)) / (1 - s)

    def _invert_tail(self, mass: np.ndarray) -> np.ndarray:
        s, lo = self.exponent, self._tail_start
        if abs(s - 1.0) < 1e-12:
            return lo * np.exp(mass)
        return (lo ** (1 - s) + mass * (1 - s)) ** (1 / (1 - s))

    def probability_of_rank(self, rank: np.ndarray) -> np.ndarray:
        """P(rank) for 1-based ranks, under the same law the sampler draws from (for tests and caches)."""
        rank = np.asarray(rank, dtype=np.float64)
        return rank ** -self.exponent / (self._head_mass + self._tail_mass)

    def ranks(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """0-based popularity ranks (0 = hottest)."""
        u = rng.random(size) * (self._head_mass + self._tail_mass)
        out = np.searchsorted(self._head_cdf, u, side="right").astype(np.int64)
        tail = u >= self._head_mass
        if tail.any():
            x = self._invert_tail(u[tail] - self._head_mass)
            out[tail] = np.clip(np.floor(x + 0.5).astype(np.int64), len(self._head_cdf) + 1, self.rows) - 1
        return np.minimum(out, self.rows - 1)

    def id_of_rank(self, rank: np.ndarray) -> np.ndarray:
        return (np.asarray(rank, dtype=np.int64) * self._mult + self._shift) % self.rows

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.id_of_rank(self.ranks(rng, size))


def top_share(rows: int, exponent: float, top: int) -> float:
    """Probability mass of the `top` most popular of `rows` ids under the bounded Zipf law: the hit rate
    of a cache holding exactly those ids (no sampling; the same law the sampler draws from)."""
    if top >= rows:
        return 1.0
    if top <= 0:
        return 0.0
    sampler = ZipfSampler(rows, exponent, seed=0)
    total = sampler._head_mass + sampler._tail_mass
    if top <= len(sampler._head_cdf):
        return float(sampler._head_cdf[top - 1] / total)
    return float((sampler._head_mass + sampler._integral(sampler._tail_start, top + 0.5)) / total)
