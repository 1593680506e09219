"""Plain embedding tables: one row per id, sum-pooled per feature (the memory-bound end of MP-Rec).

Cost per lookup: read L rows of D fp32 values and their int64 ids; (L-1) x D additions for pooling.

>>> from harness.core.spec import WorkloadSpec
>>> spec = WorkloadSpec.from_shape("kaggle", 1.0, representation=Config(layout="fused"))
>>> cost(spec).param_bytes
2160804928
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from harness.core.errors import ConfigError
from harness.workload.representations import EmbeddingCost

FP32 = 4
INDEX_BYTES = 8
LAYOUTS = ("fused", "per_table")


@dataclass
class Config:
    name: str = "table"
    # Values come from conf/representation/table.yaml.
    # fused: one weight with all tables stacked and one embedding_bag call with per-table row offsets;
    # per_table: one nn.EmbeddingBag per feature (26 calls). benchmarks/table_path.py measures both;
    # fused won at every query size on the CPU (docs/performance.md), so it is the default.
    layout: str = MISSING

    def check(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError("layout", f"must be one of {LAYOUTS}, got {self.layout!r}")


def feature_vectors(spec) -> int:
    return spec.num_tables


def table_cost(rows: tuple[int, ...], dim: int, ids_per_lookup: int) -> EmbeddingCost:
    """Cost of plain tables for the given row counts (shared with representations that keep some tables)."""
    lookups = len(rows) * ids_per_lookup
    return EmbeddingCost(
        param_bytes=sum(rows) * dim * FP32,
        flops_per_sample=len(rows) * (ids_per_lookup - 1) * dim,
        bytes_read_per_sample=lookups * (dim * FP32 + INDEX_BYTES),
        activation_floats_per_sample=lookups * dim,
        details={"table_rows": sum(rows), "tables": len(rows)},
    )


def cost(spec) -> EmbeddingCost:
    return table_cost(spec.table_rows, spec.embedding_dim, spec.ids_per_lookup)


def build(spec):
    from harness.workload.representations.table.module import build_tables

    return build_tables(spec.table_rows, spec.embedding_dim, spec.representation.layout)
