"""TT-Rec (Yin et al., MLSys 2021): each large table as a chain of small tensor-train cores.

A table of N rows x D columns becomes cores G_k of shape r(k-1) x p(k) x q(k) x r(k), k = 1..c, with
prod p >= N, prod q = D, r(0) = r(c) = 1 and r(k) = rank otherwise. Row x, written in mixed radix
(i_1, ..., i_c) over p, is the chain product G_1[:, i_1] ... G_c[:, i_c]: c small GEMMs per lookup
instead of one row read. Tables below `min_rows` stay plain tables, as TT-Rec does.

>>> factor_rows(10_131_227, 3), factor_dim(16, 3)
([217, 217, 216], [2, 2, 4])
>>> tt = TTFactorization.of(10_131_227, 16, cores=3, rank=16)
>>> tt.ranks, tt.params, tt.flops_per_lookup
([1, 16, 16, 1], 131872, 2560)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import MISSING

from harness.core.errors import ConfigError
from harness.core.precision import compute_bytes
from harness.workload.representations import EmbeddingCost
from harness.workload.representations.table import INDEX_BYTES, table_cost

FP32 = 4


@dataclass
class Config:
    name: str = "tt"
    rank: int = MISSING  # TT rank of every inner bond
    cores: int = MISSING  # cores per table
    min_rows: int = MISSING  # tables with fewer rows stay plain tables
    layout: str = MISSING  # layout of the plain tables that stay (see the table representation)

    def check(self) -> None:
        if self.rank < 1:
            raise ConfigError("rank", f"must be >= 1, got {self.rank}")
        if self.cores < 2:
            raise ConfigError("cores", f"a tensor train needs at least 2 cores, got {self.cores}")
        if self.min_rows < 1:
            raise ConfigError("min_rows", f"must be >= 1, got {self.min_rows}")
        if self.layout not in ("fused", "per_table"):
            raise ConfigError("layout", f"must be fused or per_table, got {self.layout!r}")


def _prime_factors(n: int) -> list[int]:
    out, f = [], 2
    while f * f <= n:
        while n % f == 0:
            out.append(f)
            n //= f
        f += 1
    if n > 1:
        out.append(n)
    return out


def factor_dim(dim: int, cores: int) -> list[int]:
    """q with prod q = dim exactly, as balanced as the primes allow (largest prime to the smallest factor)."""
    factors = [1] * cores
    for prime in sorted(_prime_factors(dim), reverse=True):
        factors[factors.index(min(factors))] *= prime
    return sorted(factors)


def factor_rows(rows: int, cores: int) -> list[int]:
    """p with prod p >= rows, balanced (each within one of the others), with the smallest such product."""
    p = [max(1, math.floor(rows ** (1.0 / cores)))] * cores
    while math.prod(p) < rows:
        p[p.index(min(p))] += 1
    return sorted(p, reverse=True)


@dataclass(frozen=True)
class TTFactorization:
    rows: int
    p: list[int]
    q: list[int]
    ranks: list[int]

    @classmethod
    def of(cls, rows: int, dim: int, cores: int, rank: int) -> "TTFactorization":
        return cls(rows, factor_rows(rows, cores), factor_dim(dim, cores), [1] + [rank] * (cores - 1) + [1])

    @property
    def core_shapes(self) -> list[tuple[int, int, int, int]]:
        r = self.ranks
        return [(r[k], self.p[k], self.q[k], r[k + 1]) for k in range(len(self.p))]

    @property
    def params(self) -> int:
        return sum(math.prod(shape) for shape in self.core_shapes)

    @property
    def flops_per_lookup(self) -> int:
        """Left-to-right chain: step k multiplies [Q(k-1) x r(k-1)] by [r(k-1) x q(k) r(k)]."""
        flops, width = 0, self.q[0]
        for k in range(1, len(self.p)):
            flops += 2 * width * self.ranks[k] * self.q[k] * self.ranks[k + 1]
            width *= self.q[k]
        return flops

    @property
    def floats_read_per_lookup(self) -> int:
        """One slice r(k-1) x q(k) x r(k) of every core."""
        return sum(r0 * q * r1 for r0, _, q, r1 in self.core_shapes)

    def describe(self) -> str:
        return f"rows {self.rows}: p={self.p} q={self.q} ranks={self.ranks} ({self.params:,} params)"


def split_tables(spec) -> tuple[list[int], list[int]]:
    """(indices of TT tables, indices of plain tables) under the representation's `min_rows`."""
    threshold = spec.representation.min_rows
    tt = [t for t, rows in enumerate(spec.table_rows) if rows >= threshold]
    return tt, [t for t in range(spec.num_tables) if t not in tt]


def factorizations(spec) -> list[TTFactorization]:
    cfg = spec.representation
    tt, _ = split_tables(spec)
    return [TTFactorization.of(spec.table_rows[t], spec.embedding_dim, cfg.cores, cfg.rank) for t in tt]


def run_tags(spec) -> dict[str, str]:
    """How many tables are in TT form: small tables stay plain (below `min_rows`), and at a small scale
    that can be all of them."""
    tt, _ = split_tables(spec)
    return {"tt_tables": f"{len(tt)} of {spec.num_tables}"}


def same_model_as(spec) -> tuple[str, str] | None:
    """(`table`, why) when no table reaches `min_rows`: the model built is then exactly the table model."""
    tt, _ = split_tables(spec)
    if tt:
        return None
    largest = max(spec.table_rows)
    return "table", (f"its largest table has {largest:,} rows, below representation.min_rows="
                     f"{spec.representation.min_rows:,}, so every table stays plain")


def feature_vectors(spec) -> int:
    return spec.num_tables


def cost(spec) -> EmbeddingCost:
    tt, plain = split_tables(spec)
    facts = factorizations(spec)
    per_bag = spec.ids_per_lookup
    plain_cost = table_cost(tuple(spec.table_rows[t] for t in plain), spec.embedding_dim, per_bag)
    tt_cost = EmbeddingCost(
        param_bytes=sum(f.params for f in facts) * compute_bytes(spec.precision),  # cores in compute dtype
        flops_per_sample=per_bag * sum(f.flops_per_lookup for f in facts)
        + len(facts) * (per_bag - 1) * spec.embedding_dim,
        bytes_read_per_sample=per_bag
        * sum(f.floats_read_per_lookup * compute_bytes(spec.precision) + INDEX_BYTES for f in facts),
        activation_floats_per_sample=per_bag
        * sum(f.floats_read_per_lookup + 2 * spec.embedding_dim * f.ranks[1] for f in facts),
        details={
            "tt_tables": [f"C{t + 1}" for t in tt],
            "tt_factorization": {f"C{t + 1}": f.describe() for t, f in zip(tt, facts)},
            "tt_dense_equivalent_bytes": sum(f.rows for f in facts) * spec.embedding_dim * FP32,
        },
    )
    return plain_cost + tt_cost


def build(spec):
    from harness.workload.representations.tt.module import build_tt

    return build_tt(spec)
