"""DHE, Deep Hash Embedding (Kang et al., KDD 2021), as MP-Rec uses it: compute, not memory.

Per table, k hashes turn an id into k buckets in [0, m): `hash: universal`, the DHE paper's
((a_i x + b_i) mod p) mod m, or `hash: multiply_shift`, floor(((a_i x + b_i) mod 2^32) m / 2^32) on the id's
low 32 bits (a 32-bit multiply and a shift: 2.5x cheaper to compute, and the same accuracy on the planted
data, docs/performance.md). A dense
code ((h / (m - 1)) * 2 - 1 for `uniform`, Box-Muller pairs for `gaussian`) goes through a small MLP
decoder (k -> hidden... -> D). No table at all: megabytes of decoder weights and ~0.27 MFLOPs per lookup
for the 1024-128-16 decoder, which is why the hardware choice matters.

>>> from harness.core.spec import WorkloadSpec
>>> params = DheParams(k=1024, decoder=[1024, 128], m=1_000_000, hash="multiply_shift", encoding="uniform",
...                    activation="none", batch_norm=False, seed=0)
>>> c = dhe_cost(26, params, dim=16, ids_per_lookup=1)
>>> c.param_bytes, c.flops_per_sample, c.details["dhe_decoder_params_per_table"]
(13859456, 6922240, 133264)
>>> first_prime_above(1_000_000)
1000003
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import List, Optional

import numpy as np
from omegaconf import MISSING

from harness.core.errors import ConfigError
from harness.core.precision import compute_bytes
from harness.core.zipf import top_share
from harness.workload.representations import EmbeddingCost

FP32 = 4
INDEX_BYTES = 8
ENCODINGS = ("uniform", "gaussian")
HASHES = ("universal", "multiply_shift")
ACTIVATIONS = ("none", "sigmoid", "mish")
MAX_BUCKETS = 1 << 26  # p^2 + p < 2^53 for the first prime above 2^26


@dataclass
class CacheConfig:
    """MP-Cache: decoder outputs of each table's hottest ids
    (harness/workload/representations/dhe/cache.py)."""

    rows: int = MISSING  # hot ids cached per table; 0: no cache
    bytes: Optional[int] = MISSING  # or a total byte budget over the DHE tables (overrides rows)
    sample_rows: int = MISSING  # rows of a Criteo file counted for popularity when this run did not train

    def check(self) -> None:
        if self.rows < 0:
            raise ConfigError("cache.rows", f"must be >= 0, got {self.rows}")
        if self.bytes is not None and self.bytes <= 0:
            raise ConfigError("cache.bytes", f"must be > 0 or null, got {self.bytes}")
        if self.sample_rows < 1:
            raise ConfigError("cache.sample_rows", f"must be >= 1, got {self.sample_rows}")

    @property
    def enabled(self) -> bool:
        return self.rows > 0 or self.bytes is not None

    def rows_per_table(self, tables: int, dim: int) -> int:
        """Cached ids per table: `rows`, or what `bytes` buys (a vector and an int64 key per id)."""
        if self.bytes is not None:
            return max(1, self.bytes // (max(1, tables) * (dim * FP32 + INDEX_BYTES)))
        return self.rows


@dataclass
class DheParams:
    """The DHE part of a representation (the `dhe` representation's keys, `dhe.*` in hybrid/select)."""

    k: int = MISSING  # hashes per id = width of the dense code
    decoder: List[int] = MISSING  # [k, hidden...]; the output width (the embedding dim) is appended
    m: int = MISSING  # hash buckets; p is the first prime above m (universal)
    hash: str = MISSING  # the hash family: universal | multiply_shift
    encoding: str = MISSING  # uniform | gaussian
    activation: str = MISSING  # on the decoder's output: none | sigmoid | mish
    batch_norm: bool = MISSING  # BatchNorm after each hidden layer
    seed: int = MISSING  # draws the hash coefficients a, b
    # The YAML sets every cache key; a DHE config built in code has no cache unless given one.
    cache: CacheConfig = field(default_factory=lambda: CacheConfig(rows=0, bytes=None, sample_rows=1_000_000))

    def check(self) -> None:
        self.cache.check()
        if self.k < 1:
            raise ConfigError("k", f"must be >= 1, got {self.k}")
        if not self.decoder or min(self.decoder) < 1:
            raise ConfigError("decoder", f"widths must be positive, got {self.decoder}")
        if self.decoder[0] != self.k:
            raise ConfigError(
                "k",
                f"is {self.k} but the decoder's first width is {self.decoder[0]}: the code of k hashes is "
                "the decoder's input, so they must be equal",
            )
        if not 2 <= self.m <= MAX_BUCKETS:
            raise ConfigError(
                "m",
                f"must be in [2, {MAX_BUCKETS:,}], got {self.m:,}: the universal hash computes "
                "a (x mod p) + b < p^2 exactly in float64 (53-bit mantissa), which bounds p and so m; "
                "multiply_shift's 32-bit limbs hold to the same bound",
            )
        if self.hash not in HASHES:
            raise ConfigError("hash", f"must be one of {HASHES}, got {self.hash!r}")
        if self.encoding not in ENCODINGS:
            raise ConfigError("encoding", f"must be one of {ENCODINGS}, got {self.encoding!r}")
        if self.encoding == "gaussian" and self.k % 2:
            raise ConfigError(
                "k",
                f"the gaussian encoding turns hashes into pairs (Box-Muller), so k must be "
                f"even, got {self.k}",
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError("activation", f"must be one of {ACTIVATIONS}, got {self.activation!r}")

    def widths(self, dim: int) -> list[int]:
        return [*self.decoder, dim]


@dataclass
class Config(DheParams):
    name: str = "dhe"


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


@lru_cache(maxsize=None)
def first_prime_above(m: int) -> int:
    n = m + 1
    while not _is_prime(n):
        n += 1
    return n


def hash_coefficients(seed: int, feature: int, k: int, m: int,
                      family: str = "universal") -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of feature `feature`'s k hashes, the same in every process: universal, a in [1, p) and
    b in [0, p); multiply_shift, a odd and b any in [0, 2^32) (an even a would lose the id's top bit)."""
    if family == "multiply_shift":
        rng = np.random.default_rng([seed, feature, 0x5417])
        odd = rng.integers(0, 1 << 31, k, dtype=np.int64) * 2 + 1
        return odd, rng.integers(0, 1 << 32, k, dtype=np.int64)
    p = first_prime_above(m)
    rng = np.random.default_rng([seed, feature, 0xD4E])
    return rng.integers(1, p, k, dtype=np.int64), rng.integers(0, p, k, dtype=np.int64)


def dhe_cost(num_tables: int, params: DheParams, dim: int, ids_per_lookup: int,
             table_rows: tuple[int, ...] = (), zipf_exponent: float | None = None,
             number_bytes: int = FP32) -> EmbeddingCost:
    """Cost of `num_tables` DHE tables; with a cache, its bytes count as memory and the expected hits
    (from the Zipf law when `zipf_exponent` is known, else none assumed) skip the decoder's FLOPs.
    Decoder weights and cached vectors take `number_bytes` each (the compute precision's); a cache's
    rows per table are what `cache.bytes` buys in fp32, so every precision caches the same ids."""
    widths = params.widths(dim)
    pairs = list(zip(widths[:-1], widths[1:]))
    per_table = sum(i * o + o for i, o in pairs)
    bn_floats = 4 * sum(widths[1:-1]) if params.batch_norm else 0  # gamma, beta, running mean and var
    flops_lookup = 2 * sum(i * o for i, o in pairs)
    decoder_bytes = num_tables * (per_table + bn_floats) * number_bytes
    hit_rates = [0.0] * num_tables
    cache_bytes = 0
    details = {}
    if params.cache.enabled:
        rows = params.cache.rows_per_table(num_tables, dim)
        sizes = list(table_rows) or [rows] * num_tables
        cached = [min(rows, n) for n in sizes]
        cache_bytes = sum(cached) * (dim * number_bytes + INDEX_BYTES)
        if zipf_exponent is not None:
            hit_rates = [top_share(n, zipf_exponent, c) for n, c in zip(sizes, cached)]
        details = {"cache_rows_per_table": rows, "cache_bytes": cache_bytes,
                   "cache_expected_hit_rate": sum(hit_rates) / max(1, num_tables),
                   "cache_hit_rate_basis": "zipf law" if zipf_exponent is not None else "unknown: 0 assumed"}
    misses = sum(1.0 - h for h in hit_rates) * ids_per_lookup
    hits = sum(hit_rates) * ids_per_lookup
    lookups = num_tables * ids_per_lookup
    return EmbeddingCost(
        param_bytes=decoder_bytes + cache_bytes,
        flops_per_sample=int(round(misses * flops_lookup)) + num_tables * (ids_per_lookup - 1) * dim,
        bytes_read_per_sample=lookups * INDEX_BYTES + int(round(hits * dim * number_bytes)),
        bytes_read_per_query=decoder_bytes,
        activation_floats_per_sample=lookups * sum(widths),
        details={
            "dhe_tables": num_tables,
            "dhe_decoder": "-".join(map(str, widths)),
            "dhe_decoder_params_per_table": per_table,
            "dhe_flops_per_lookup": flops_lookup,
            "dhe_hash": params.hash,
            "dhe_p": first_prime_above(params.m),
            **details,
        },
    )


def feature_vectors(spec) -> int:
    return spec.num_tables


def cost(spec) -> EmbeddingCost:
    return dhe_cost(spec.num_tables, spec.representation, spec.embedding_dim, spec.ids_per_lookup,
                    spec.table_rows, spec.extras.get("zipf_exponent"), compute_bytes(spec.precision))


def build(spec):
    from harness.workload.representations.dhe.module import DeepHashEmbedding

    return DeepHashEmbedding(range(spec.num_tables), spec.representation, spec.embedding_dim)

