"""Plain embedding tables: one row per id, sum-pooled per feature (the memory-bound end of MP-Rec).

Cost per lookup: read L rows (D values in the table's storage: fp32, fp16, or int8 or int4 with a row
scale and bias) and their int64 ids; (L-1) x D additions for pooling.

>>> from harness.core.spec import WorkloadSpec
>>> spec = WorkloadSpec.from_shape("kaggle", 1.0, representation=Config(layout="fused", storage="fp32"))
>>> cost(spec).param_bytes
2160804928
>>> spec = WorkloadSpec.from_shape("kaggle", 1.0, representation=Config(layout="fused", storage="int8"))
>>> cost(spec).param_bytes                    # 24 bytes a row instead of 64
810301848
>>> spec = WorkloadSpec.from_shape("kaggle", 1.0, representation=Config(layout="fused", storage="int4"))
>>> cost(spec).param_bytes                    # 12: 8 bytes of 4-bit values, an fp16 scale and bias
405150924
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from harness.core.errors import ConfigError
from harness.core.precision import STORAGES, row_bytes
from harness.workload.representations import EmbeddingCost

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
    # How rows are stored (harness/core/precision.py): fp32, fp16, int8 rows with an fp32 scale and bias
    # each or int4 rows with an fp16 scale and bias each (FBGEMM's layouts), quantized from the (trained)
    # fp32 table and dequantized in the lookup.
    storage: str = MISSING

    def check(self) -> None:
        check_tables(self.layout, self.storage)


def check_tables(layout: str, storage: str) -> None:
    """The table keys' rules, shared by every representation that keeps tables."""
    if layout not in LAYOUTS:
        raise ConfigError("layout", f"must be one of {LAYOUTS}, got {layout!r}")
    if storage not in STORAGES:
        raise ConfigError("storage", f"must be one of {STORAGES}, got {storage!r}")
    if storage != "fp32" and layout != "fused":
        raise ConfigError("storage",
                          f"{storage} tables need layout=fused (the per_table layout is fp32 only)")


def check_spec(spec) -> None:
    check_table_dim(spec.representation.storage, spec.embedding_dim)


def check_table_dim(storage: str, dim: int) -> None:
    """The rules of the tables' storage that depend on the model: two 4-bit values share a byte."""
    if storage == "int4" and dim % 2:
        raise ConfigError("storage", f"int4 rows pack two values a byte: the embedding dim must be even, "
                                     f"got {dim} (use int8)")


def feature_vectors(spec) -> int:
    return spec.num_tables


def table_cost(rows: tuple[int, ...], dim: int, ids_per_lookup: int, storage: str = "fp32") -> EmbeddingCost:
    """Cost of plain tables for the given row counts (shared with representations that keep some tables)."""
    lookups = len(rows) * ids_per_lookup
    details: dict[str, int | str] = {"table_rows": sum(rows), "tables": len(rows)}
    if storage != "fp32":
        details["table_storage"] = storage
    return EmbeddingCost(
        param_bytes=sum(rows) * row_bytes(storage, dim),
        flops_per_sample=len(rows) * (ids_per_lookup - 1) * dim,
        bytes_read_per_sample=lookups * (row_bytes(storage, dim) + INDEX_BYTES),
        activation_floats_per_sample=lookups * dim,
        details=details,
    )


def cost(spec) -> EmbeddingCost:
    return table_cost(spec.table_rows, spec.embedding_dim, spec.ids_per_lookup, spec.representation.storage)


def run_tags(spec) -> dict[str, str]:
    return storage_tags(spec.representation)


def storage_tags(config) -> dict[str, str]:
    """The tables' storage as a tag, where it is not fp32 (fp32 runs keep the tags they always had)."""
    return {} if config.storage == "fp32" else {"table_storage": config.storage}


def build(spec):
    from harness.workload.representations.table.module import build_tables

    return build_tables(spec.table_rows, spec.embedding_dim, spec.representation.layout)
