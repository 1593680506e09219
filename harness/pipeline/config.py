"""A composed config validated into a `RunConfig`, and the run's workload spec derived from it.

The fixed sections are typed by harness/core/schema.py; the three that select an implementation are
typed by their own registry (backends for `backend`, representations for `representation`, data sources
for `dataset`), so each adapter, representation and dataset brings its schema. Any error is a
`ConfigError` naming its key, raised before a model is built or a store is touched.

>>> from harness.core.conf import compose
>>> run = load_config(compose(["workload.query_sizes=[1,64]"]))
>>> run.workload.query_sizes, run.representation.layout, run.backend.name
([1, 64], 'fused', 'auto')
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

import backends
from harness.core.errors import ConfigError
from harness.core.schema import RunConfig, container, typed
from harness.core.spec import SHAPES, WorkloadSpec
from harness.data import sources
from harness.workload import representations


def load_config(cfg: DictConfig | dict) -> RunConfig:
    """Validate a composed config; raises ConfigError naming the first bad key."""
    node = container(cfg)
    backend = node.pop("backend", None)
    representation = node.pop("representation", None)
    dataset = node.pop("dataset", None)
    run = typed(RunConfig, node)
    run.dataset = sources.typed_config(dataset)
    run.backend = backends.typed_config(backend)
    run.representation = representations.typed_config(representation)
    cache = representations.cache_config(run.representation)
    if getattr(run.backend, "graphs", False) and cache is not None and cache.enabled:
        # A graph replays fixed kernels; MP-Cache's lookup decides per query which ids hit (host syncs).
        raise ConfigError("backend.graphs", "CUDA graphs cannot capture an MP-Cache lookup (it branches on "
                                            "which ids hit); measure dhe+cache eagerly or with compile=true")
    workload_spec(run)  # the model's rules (widths against the embedding dim), checked before any work
    return run


def from_record(config: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded `config/resolved.yaml`, with the keys added since it was recorded at the values
    that reproduce what it measured (runs before precision was a choice were fp32 with fp32 tables)."""
    config = {**config, "precision": config.get("precision") or {"name": "fp32"}}
    rep = dict(config.get("representation") or {})
    fields = (getattr(representations.get(rep["name"]).Config, "__dataclass_fields__",
                      {}) if "name" in rep else {})
    if "storage" in fields and "storage" not in rep:
        rep["storage"] = "fp32"
    config["representation"] = rep
    backend = dict(config.get("backend") or {})
    if backend.get("name") == "cuda" and "graphs" not in backend:
        backend["graphs"] = False
    if backend.get("name") == "cpu" and "allocator" not in backend:
        backend["allocator"] = "retain"  # the default since issue 24, left out of run keys (core/keys.py)
    config["backend"] = backend
    return config


def workload_spec(run: RunConfig) -> WorkloadSpec:
    """The framework-neutral spec of the run's model: the shape's reference architecture where the
    model keys are null. Its rules are WorkloadSpec's and the representation's; errors name the key."""
    shape = SHAPES[run.dataset.shape]
    model = run.model
    dim = shape.embedding_dim if model.embedding_dim is None else model.embedding_dim
    bottom = shape.bottom_mlp if model.bottom_mlp is None else tuple(model.bottom_mlp)
    top = shape.top_mlp if model.top_mlp is None else tuple(model.top_mlp)
    if model.bottom_mlp is None and dim != bottom[-1]:
        bottom = (*bottom[:-1], dim)  # a new dim with the reference MLP: resize its last layer
    spec = WorkloadSpec.from_shape(
        run.dataset.shape,
        run.dataset.scale,
        embedding_dim=dim,
        bottom_mlp=bottom,
        top_mlp=top,
        ids_per_lookup=model.ids_per_lookup,
        representation=run.representation,
        precision=run.precision.name,
        # The id popularity law, where the data follows a known one (the cost of a DHE cache uses it).
        extras={"zipf_exponent": run.dataset.zipf_exponent} if run.dataset.kind == "synthetic" else {},
    )
    representations.check_spec(spec)
    check_dataset = getattr(run.dataset, "check_spec", None)  # a dataset's rules for the model (Criteo's)
    if check_dataset is not None:
        check_dataset(spec)
    return spec


def resolved_backend(run: RunConfig) -> Any:
    """`backend.name=auto` resolved to the first available backend, typed by that adapter's schema."""
    name = backends.resolve_name(run.backend.name)
    if name == run.backend.name:
        return run.backend
    return backends.resolve_auto(run.backend, name)
