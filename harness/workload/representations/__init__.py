"""Registry of embedding representations.

A representation is a package under this folder whose `__init__` is torch-free and exposes:

- `Config`: a dataclass; its fields are the YAML keys under `representation:` (conf/representation/<name>.yaml);
  `Config.check(spec_rows)` raises `ValueError` naming the field for values that cannot work.
- `feature_vectors(spec) -> int`: how many vectors it feeds to the dot interaction (tables: one per feature).
- `cost(spec) -> EmbeddingCost`: analytic parameter bytes, FLOPs and bytes read per sample.
- `build(spec) -> torch.nn.Module`: the torch module (imports torch lazily), mapping ids [B, T, L] -> [B, V, D].

Adding one is a new package here, one line in `REGISTRY` and one YAML (docs/adding-a-representation.md).
The torch-free split keeps `dry_run=true` fast: planning a run never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

REGISTRY: dict[str, str] = {
    "table": "harness.workload.representations.table",
}


@dataclass(frozen=True)
class EmbeddingCost:
    """Analytic cost of the embedding part of a model, per sample (one query row, all features)."""

    param_bytes: int
    flops_per_sample: int
    bytes_read_per_sample: int
    details: dict = field(default_factory=dict)


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> ModuleType:
    """The representation package for `name`; a clear error for an unknown one."""
    try:
        module_path = REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"representation.name={name!r} is not a known representation; choose one of {names()} "
            "(conf/representation/)"
        ) from None
    return importlib.import_module(module_path)
