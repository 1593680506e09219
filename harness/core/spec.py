"""Framework-neutral description of a DLRM workload: shapes, MLP widths, representation params.

Nothing here imports torch: the spec is what the cost model, the dry run, every backend and the TF
port agree on. Its invariants (how the MLP widths fit the embedding) are checked here and only here; an
error names the config key the value comes from.

>>> spec = WorkloadSpec.from_shape("kaggle", scale=1.0)
>>> sum(spec.table_rows), spec.embedding_dim, spec.bottom_mlp, spec.top_mlp
(33762577, 16, (13, 512, 256, 64, 16), (512, 256, 1))
>>> spec.scaled(0.001).table_rows[:4]
(2, 2, 10132, 2203)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from harness.core.errors import ConfigError

NUM_DENSE = 13

# Criteo Kaggle (Display Advertising Challenge) cardinalities per categorical column C1..C26, as the DLRM
# reference preprocesses them.
KAGGLE_ROWS: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
# Criteo Terabyte cardinalities with DLRM's --max-ind-range=10,000,000 applied.
TERABYTE_ROWS: tuple[int, ...] = (
    9980333, 36084, 17217, 7378, 20134, 3, 7112, 1442, 61, 9758201, 1333352, 313829, 10, 2208, 11156,
    122, 4, 970, 14, 9994222, 7267859, 9946608, 415421, 12420, 101, 36,
)


@dataclass(frozen=True)
class DatasetShape:
    """Reference architecture of a Criteo-shaped dataset (MLPerf / DLRM reference configs)."""

    name: str
    table_rows: tuple[int, ...]
    embedding_dim: int
    bottom_mlp: tuple[int, ...]  # includes the 13 dense inputs, ends at embedding_dim
    top_mlp: tuple[int, ...]  # widths after the interaction, ends at 1 (the logit)


SHAPES: dict[str, DatasetShape] = {
    "kaggle": DatasetShape("kaggle", KAGGLE_ROWS, 16, (13, 512, 256, 64, 16), (512, 256, 1)),
    "terabyte": DatasetShape("terabyte", TERABYTE_ROWS, 64, (13, 512, 256, 64), (512, 512, 256, 1)),
}


def scale_rows(rows: tuple[int, ...], scale: float) -> tuple[int, ...]:
    """rows = max(2, ceil(card * scale)): at least two rows so every table still has a choice to make."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return tuple(max(2, math.ceil(card * scale)) for card in rows)


@dataclass(frozen=True)
class WorkloadSpec:
    """One DLRM: dense bottom MLP, one embedding per sparse feature, dot interaction, top MLP.

    `representation` is the validated config dataclass of the embedding representation (see
    `harness.workload.representations`); the spec itself does not know how it is implemented.
    """

    table_rows: tuple[int, ...]
    embedding_dim: int
    bottom_mlp: tuple[int, ...]
    top_mlp: tuple[int, ...]
    num_dense: int = NUM_DENSE
    ids_per_lookup: int = 1  # pooling factor L: Criteo is one-hot (1); multi-hot workloads use more
    representation: Any = None
    precision: str = "fp32"  # compute precision of the dense parts (harness/core/precision.py)
    shape_name: str = "custom"
    scale: float = 1.0
    extras: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.table_rows or any(int(r) < 1 for r in self.table_rows):
            raise ConfigError("dataset.scale", f"every table needs at least one row, got {self.table_rows}")
        if self.embedding_dim < 1:
            raise ConfigError("model.embedding_dim", f"must be >= 1, got {self.embedding_dim}")
        bottom, top = list(self.bottom_mlp), list(self.top_mlp)
        for key, widths in (("model.bottom_mlp", bottom), ("model.top_mlp", top)):
            if not widths or min(widths) < 1:
                raise ConfigError(key, f"widths must be positive integers, got {widths}")
        if len(bottom) < 2 or bottom[0] != self.num_dense:
            raise ConfigError(
                "model.bottom_mlp",
                f"must start at the {self.num_dense} dense features and have "
                f"at least one layer, got {bottom}",
            )
        if bottom[-1] != self.embedding_dim:
            raise ConfigError(
                "model.embedding_dim",
                f"{self.embedding_dim} does not match the bottom MLP's output {bottom[-1]} (model.bottom_mlp="
                f"{bottom}); the dense vector joins the dot interaction, so they must be equal",
            )
        if top[-1] != 1:
            raise ConfigError("model.top_mlp", f"must end at 1 (the logit), got {top}")
        if self.ids_per_lookup < 1:
            raise ConfigError("model.ids_per_lookup", f"must be >= 1, got {self.ids_per_lookup}")

    @classmethod
    def from_shape(cls, shape: str, scale: float = 1.0, **overrides: Any) -> "WorkloadSpec":
        ref = SHAPES[shape]
        fields: dict[str, Any] = dict(table_rows=scale_rows(ref.table_rows, scale),
                                      embedding_dim=ref.embedding_dim, bottom_mlp=ref.bottom_mlp,
                                      top_mlp=ref.top_mlp, shape_name=shape, scale=scale)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)

    def scaled(self, scale: float) -> "WorkloadSpec":
        base = SHAPES[self.shape_name].table_rows if self.shape_name in SHAPES else self.table_rows
        return replace(self, table_rows=scale_rows(base, scale), scale=scale)

    @property
    def num_tables(self) -> int:
        return len(self.table_rows)

    @property
    def total_rows(self) -> int:
        return sum(self.table_rows)


def interaction_width(num_vectors: int, dim: int) -> int:
    """Top-MLP input width of DLRM's dot interaction without self-pairs: pairs + the dense vector.

    `num_vectors` counts every vector entering the interaction (the dense one included).
    Kaggle, tables: 27 vectors -> 351 pairs + 16 = 367; hybrid: 53 -> 1378 + 16 = 1394.
    """
    return num_vectors * (num_vectors - 1) // 2 + dim


def feature_names(num_tables: int) -> list[str]:
    """Criteo's names for the categorical columns: C1 .. C26."""
    return [f"C{i + 1}" for i in range(num_tables)]
