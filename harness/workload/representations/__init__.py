"""Registry of embedding representations.

A representation is a package under this folder whose `__init__` is torch-free and exposes:

- `Config`: a dataclass; its fields are the YAML keys under `representation:`
  (conf/representation/<name>.yaml),
  declared MISSING so values come only from the YAML; `Config.check()` raises `ConfigError("<field>", why)`
  (harness/core/errors.py) for values that cannot work, and an optional module-level `check_spec(spec)`
  does the same for values that depend on the model (the number of tables, say).
- `feature_vectors(spec) -> int`: how many vectors it feeds to the dot interaction (tables: one per feature).
- `cost(spec) -> EmbeddingCost`: analytic parameter bytes, FLOPs and bytes read per sample.
- `build(spec) -> torch.nn.Module`: the torch module (imports torch lazily), mapping ids [B, T, L] ->
  [B, V, D].
- optional `run_tags(spec) -> dict` (what was built, recorded as tags) and `same_model_as(spec)` ->
  (representation, why) or None: the representation whose model this spec's model exactly is (TT with no
  table in TT form is `table`).

Adding one is a new package here, one line in `REGISTRY` and one YAML (docs/adding-a-representation.md).
The torch-free split keeps `dry_run=true` fast: planning a run never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from harness.core.errors import ConfigError
from harness.core.precision import storage_label
from harness.core.schema import typed


class Representation(Protocol):
    """The contract of a representation package (the functions above; `Config` is its dataclass)."""

    Config: type

    def feature_vectors(self, spec) -> int: ...

    def cost(self, spec) -> "EmbeddingCost": ...

    def build(self, spec) -> Any: ...


REGISTRY: dict[str, str] = {
    "table": "harness.workload.representations.table",
    "tt": "harness.workload.representations.tt",
    "dhe": "harness.workload.representations.dhe",
    "hybrid": "harness.workload.representations.hybrid",
    "select": "harness.workload.representations.select",
}


@dataclass(frozen=True)
class EmbeddingCost:
    """Analytic cost of the embedding part of a model, per sample (one query row, all features)."""

    param_bytes: int
    flops_per_sample: int
    bytes_read_per_sample: int
    bytes_read_per_query: int = 0  # weights every query reads once, whatever its size (DHE decoders)
    activation_floats_per_sample: int = 0  # intermediates, for the memory estimate
    details: dict = field(default_factory=dict)

    def __add__(self, other: "EmbeddingCost") -> "EmbeddingCost":
        """Cost of two representations side by side (tables for some features, DHE for others)."""
        return EmbeddingCost(
            param_bytes=self.param_bytes + other.param_bytes,
            flops_per_sample=self.flops_per_sample + other.flops_per_sample,
            bytes_read_per_sample=self.bytes_read_per_sample + other.bytes_read_per_sample,
            bytes_read_per_query=self.bytes_read_per_query + other.bytes_read_per_query,
            activation_floats_per_sample=self.activation_floats_per_sample
            + other.activation_floats_per_sample,
            details={**self.details, **other.details},
        )


def cache_config(config):
    """The MP-Cache settings of a representation config (its own, or its DHE part's), or None."""
    cache = getattr(config, "cache", None)
    if cache is None and getattr(config, "dhe", None) is not None:
        cache = getattr(config.dhe, "cache", None)
    return cache


def label(config, variant: str = "") -> str:
    """The representation's name in a path: `dhe+cache` when a cache is on, `table:int8` when its tables
    are not stored in fp32, `dhe[k=512]` with the settings that differ from the defaults (`variant`,
    harness/core/paths.py)."""
    cache = cache_config(config)
    name = config.name + variant + storage_label(getattr(config, "storage", "fp32"))
    return f"{name}+cache" if cache is not None and cache.enabled else name


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> Representation | ModuleType:
    """The representation package for `name`; a clear error for an unknown one."""
    try:
        module_path = REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"representation.name={name!r} is not a known representation; choose one of {names()} "
            "(conf/representation/)"
        ) from None
    return importlib.import_module(module_path)


def typed_config(node: dict | None) -> Any:
    """The `representation` section as the Config dataclass its `name` selects, checked."""
    if not node or "name" not in node:
        raise ConfigError("representation.name", "missing: choose one with representation=<name>")
    try:
        module = get(node["name"])
    except KeyError as exc:
        raise ConfigError("representation.name", str(exc.args[0])) from None
    return typed(module.Config, node, "representation")


def same_model_as(spec) -> tuple[str, str] | None:
    """(representation, why) when this spec's model is exactly another representation's model (the
    representation's optional `same_model_as`), else None."""
    return getattr(get(spec.representation.name), "same_model_as", lambda s: None)(spec)


def run_tags(spec) -> dict[str, str]:
    """Tags that say what the representation built for this spec (its optional `run_tags`), and
    `same_model_as` when the model is exactly another representation's."""
    tags = dict(getattr(get(spec.representation.name), "run_tags", lambda s: {})(spec))
    twin = same_model_as(spec)
    if twin:
        tags["same_model_as"] = twin[0]
    return tags


def check_spec(spec) -> None:
    """The representation's own rules that depend on the model (its `check_spec`, if it has one)."""
    check = getattr(get(spec.representation.name), "check_spec", None)
    if check is not None:
        try:
            check(spec)
        except ConfigError as exc:
            raise exc.within("representation") from None
