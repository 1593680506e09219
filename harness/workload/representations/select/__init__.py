"""Select: DHE for a chosen set of features, plain tables for the rest.

By default the `num_largest` largest tables (five: C3, C12, C21, C16 and C4 on the Kaggle shape) use
DHE, which removes most of the memory while keeping most lookups a cheap row read.

>>> from harness.core.spec import WorkloadSpec
>>> from harness.workload.representations.dhe import Config as DheConfig
>>> dhe = DheConfig(k=1024, decoder=[1024, 128], m=1_000_000, hash="multiply_shift", encoding="uniform",
...                 activation="none", batch_norm=False, seed=0)
>>> config = Config(layout="fused", storage="fp32", features=None, num_largest=5, dhe=dhe)
>>> spec = WorkloadSpec.from_shape("kaggle", 1.0, representation=config)
>>> [f"C{t + 1}" for t in selected(spec)]
['C3', 'C4', 'C12', 'C16', 'C21']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from harness.core.errors import ConfigError
from harness.core.precision import compute_bytes
from harness.core.schema import check_section
from harness.core.spec import feature_names
from harness.workload.representations import EmbeddingCost
from harness.workload.representations.dhe import Config as DheConfig
from harness.workload.representations.dhe import dhe_cost
from harness.workload.representations.table import check_table_dim, check_tables, storage_tags, table_cost


@dataclass
class Config:
    name: str = "select"
    layout: str = MISSING  # of the tables that stay
    storage: str = MISSING  # of the tables: fp32, fp16, int8 or int4 (the table representation's key)
    # Features that use DHE, by Criteo name (C1..C26); null: the `num_largest` largest tables.
    features: Optional[List[str]] = MISSING
    num_largest: int = MISSING
    dhe: DheConfig = field(default_factory=DheConfig)  # the dhe representation's keys (its YAML)

    def check(self) -> None:
        check_tables(self.layout, self.storage)
        if self.features is None and self.num_largest < 1:
            raise ConfigError("num_largest", f"must be >= 1, got {self.num_largest}")
        if self.features is not None and not self.features:
            raise ConfigError("features", "list at least one feature, or null for the largest tables")
        check_section(self.dhe, "dhe")


def check_spec(spec) -> None:
    cfg = spec.representation
    check_table_dim(cfg.storage, spec.embedding_dim)
    known = feature_names(spec.num_tables)
    if cfg.features is not None:
        unknown = [f for f in cfg.features if f not in known]
        if unknown:
            raise ConfigError("features", f"{unknown} not among this model's features C1..C{spec.num_tables}")
        if len(set(cfg.features)) != len(cfg.features):
            raise ConfigError("features", f"duplicates in {cfg.features}")
    elif cfg.num_largest > spec.num_tables:
        raise ConfigError("num_largest", f"{cfg.num_largest} exceeds the {spec.num_tables} tables")


def selected(spec) -> list[int]:
    """Sorted indices of the DHE features (ties among equal tables broken by position)."""
    cfg = spec.representation
    if cfg.features is not None:
        names = feature_names(spec.num_tables)
        return sorted(names.index(f) for f in cfg.features)
    by_size = sorted(range(spec.num_tables), key=lambda t: (-spec.table_rows[t], t))
    return sorted(by_size[: cfg.num_largest])


def feature_vectors(spec) -> int:
    return spec.num_tables


def cost(spec) -> EmbeddingCost:
    dhe_features = selected(spec)
    rows = tuple(r for t, r in enumerate(spec.table_rows) if t not in dhe_features)
    tables = table_cost(rows, spec.embedding_dim, spec.ids_per_lookup, spec.representation.storage)
    dhe = dhe_cost(len(dhe_features), spec.representation.dhe, spec.embedding_dim, spec.ids_per_lookup,
                   tuple(spec.table_rows[t] for t in dhe_features), spec.extras.get("zipf_exponent"),
                   compute_bytes(spec.precision))
    return tables + EmbeddingCost(**{**dhe.__dict__, "details": {**dhe.details, "dhe_features": [
        f"C{t + 1}" for t in dhe_features]}})


def run_tags(spec) -> dict[str, str]:
    return storage_tags(spec.representation)


def build(spec):
    from harness.workload.representations.dhe.module import DeepHashEmbedding
    from harness.workload.representations.mixed import MixedEmbedding
    from harness.workload.representations.table.module import build_tables

    dhe_features = selected(spec)
    rest = [t for t in range(spec.num_tables) if t not in dhe_features]
    parts = [(dhe_features, DeepHashEmbedding(dhe_features, spec.representation.dhe, spec.embedding_dim))]
    if rest:
        rows = tuple(spec.table_rows[t] for t in rest)
        parts.append((rest, build_tables(rows, spec.embedding_dim, spec.representation.layout)))
    return MixedEmbedding(parts)
