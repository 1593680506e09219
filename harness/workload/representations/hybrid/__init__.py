"""Hybrid (MP-Rec): every feature contributes both its table vector and its DHE vector.

The interaction sees 2T + 1 vectors (top-MLP input 1394 on the Kaggle shape, 1442 on Terabyte): the best
quality of the family, at the memory of the tables plus the compute of DHE.

>>> from harness.core.spec import WorkloadSpec, interaction_width
>>> interaction_width(2 * 26 + 1, 16), interaction_width(2 * 26 + 1, 64)
(1394, 1442)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from harness.core.precision import compute_bytes
from harness.core.schema import check_section
from harness.workload.representations import EmbeddingCost
from harness.workload.representations.dhe import Config as DheConfig
from harness.workload.representations.dhe import dhe_cost
from harness.workload.representations.table import check_table_dim, check_tables, storage_tags, table_cost


@dataclass
class Config:
    name: str = "hybrid"
    layout: str = MISSING  # of the tables
    storage: str = MISSING  # of the tables: fp32, fp16, int8 or int4 (the table representation's key)
    dhe: DheConfig = field(default_factory=DheConfig)  # the dhe representation's keys (its YAML)

    def check(self) -> None:
        check_tables(self.layout, self.storage)
        check_section(self.dhe, "dhe")


def check_spec(spec) -> None:
    check_table_dim(spec.representation.storage, spec.embedding_dim)


def feature_vectors(spec) -> int:
    return 2 * spec.num_tables


def cost(spec) -> EmbeddingCost:
    tables = table_cost(spec.table_rows, spec.embedding_dim, spec.ids_per_lookup, spec.representation.storage)
    return tables + dhe_cost(spec.num_tables, spec.representation.dhe, spec.embedding_dim,
                             spec.ids_per_lookup, spec.table_rows, spec.extras.get("zipf_exponent"),
                             compute_bytes(spec.precision))


def run_tags(spec) -> dict[str, str]:
    return storage_tags(spec.representation)


def build(spec):
    from harness.workload.representations.hybrid.module import HybridEmbedding

    return HybridEmbedding(spec)
