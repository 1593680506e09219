"""Typed, validated run configuration: Hydra composes YAML, this module turns it into dataclasses.

Defaults live only in `conf/` (DESIGN.md); the dataclasses here declare types (values are MISSING until
YAML fills them) and check values, before any model is built or any store is touched. Every error names
the key it is about (`config key 'workload.query_sizes': ...`). The `backend` and `representation`
sections are typed by the dataclass of the adapter or representation their `name` selects, so each one
brings its own schema without this module knowing them all.

>>> run = load_config(compose(["workload.query_sizes=[1,64]"]))
>>> run.workload.query_sizes, run.representation.layout, run.backend.name
([1, 64], 'fused', 'auto')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import backends
from backends.base import BackendConfig
from harness.workload import representations
from harness.workload.spec import SHAPES, WorkloadSpec


class ConfigError(ValueError):
    """A config value that cannot work; `key` is its dotted path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key


@dataclass
class ModelConfig:
    # null = the dataset shape's reference architecture.
    embedding_dim: Optional[int] = MISSING
    bottom_mlp: Optional[List[int]] = MISSING  # includes the 13 dense inputs, ends at embedding_dim
    top_mlp: Optional[List[int]] = MISSING  # after the interaction, ends at 1
    ids_per_lookup: int = MISSING

    def check(self) -> None:
        if self.embedding_dim is not None and self.embedding_dim < 1:
            raise ValueError(f"embedding_dim: must be >= 1, got {self.embedding_dim}")
        for key in ("bottom_mlp", "top_mlp"):
            widths = getattr(self, key)
            if widths is not None and (not widths or min(widths) < 1):
                raise ValueError(f"{key}: widths must be positive integers, got {widths}")
        if self.ids_per_lookup < 1:
            raise ValueError(f"ids_per_lookup: must be >= 1, got {self.ids_per_lookup}")


@dataclass
class WorkloadConfig:
    query_sizes: List[int] = MISSING
    memory_headroom: float = MISSING  # fraction of device memory kept free when judging what fits

    def check(self) -> None:
        if not self.query_sizes:
            raise ValueError("query_sizes: must list at least one query size")
        bad = [q for q in self.query_sizes if q < 1]
        if bad:
            raise ValueError(f"query_sizes: query sizes must be >= 1, got {bad}")
        if len(set(self.query_sizes)) != len(self.query_sizes):
            raise ValueError(f"query_sizes: duplicates in {self.query_sizes}")
        if not 0 <= self.memory_headroom < 1:
            raise ValueError(f"memory_headroom: must be in [0, 1), got {self.memory_headroom}")


@dataclass
class MeasureConfig:
    warmup_iters: int = MISSING
    warmup_s: float = MISSING
    min_iters: int = MISSING
    min_time_s: float = MISSING
    max_iters: int = MISSING
    max_time_s: float = MISSING
    pool_samples: int = MISSING  # distinct samples per query size, cycled while timing
    device_peaks: bool = MISSING  # measure (once per device, cached) copy/gather bandwidth and GEMM peak
    peaks_scale: float = MISSING  # size of those microbenchmarks (1.0: 256 MB buffers, 2048^2 GEMM)

    def check(self) -> None:
        for key in ("warmup_iters", "warmup_s", "min_time_s"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.min_iters < 1:
            raise ValueError(f"min_iters: must be >= 1, got {self.min_iters}")
        if self.max_iters < self.min_iters:
            raise ValueError(f"max_iters: must be >= min_iters ({self.min_iters}), got {self.max_iters}")
        if self.max_time_s < self.min_time_s:
            raise ValueError(f"max_time_s: must be >= min_time_s ({self.min_time_s}), got {self.max_time_s}")
        if self.pool_samples < 1:
            raise ValueError(f"pool_samples: must be >= 1, got {self.pool_samples}")
        if not 0 < self.peaks_scale <= 1:
            raise ValueError(f"peaks_scale: must be in (0, 1], got {self.peaks_scale}")


@dataclass
class TrainConfig:
    steps: int = MISSING  # 0: no training; the path is measured for latency only
    batch_size: int = MISSING
    optimizer: str = MISSING  # sgd | adagrad
    lr: float = MISSING
    eval_every: int = MISSING
    eval_samples: int = MISSING
    log_every: int = MISSING
    reuse: bool = MISSING  # take the quality (and weights) of a finished run with the same quality key

    def check(self) -> None:
        for key in ("steps",):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("batch_size", "eval_every", "eval_samples", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.optimizer not in ("sgd", "adagrad"):
            raise ValueError(f"optimizer: must be sgd or adagrad, got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


@dataclass
class TrackingConfig:
    # null: $MLFLOW_TRACKING_URI if set, else sqlite:///<results_dir>/mlflow.db
    uri: Optional[str] = MISSING
    results_dir: str = MISSING
    parent_run_id: Optional[str] = MISSING  # set by a sweep for its jobs (the MLflow parent run)

    def check(self) -> None:
        if not self.results_dir.strip():
            raise ValueError("results_dir: must not be empty")
        if self.uri is not None and not self.uri.strip():
            raise ValueError("uri: must be null or a tracking URI such as sqlite:///results/mlflow.db")


@dataclass
class DebugConfig:
    # Inject a failure once the run has started, to test that sweeps survive it: none, raise (an
    # exception), kill (SIGKILL of the worker, as the OOM killer does) or hang (until job_timeout_s);
    # or per job of a sweep, "raise@3,kill@4,hang@5" (by hydra.job.num; other jobs run normally; quote it
    # on the command line so Hydra does not read the commas as a sweep: 'debug.fault="raise@3,kill@4"').
    fault: str = MISSING

    def check(self) -> None:
        fault_for_job(self.fault, 0)

    def for_job(self, job_num: int | None) -> str:
        return fault_for_job(self.fault, job_num)


FAULTS = ("none", "raise", "kill", "hang")


def fault_for_job(spec: str, job_num: int | None) -> str:
    """The fault `spec` assigns to job `job_num` (validating the whole spec)."""
    if "@" not in spec:
        if spec not in FAULTS:
            raise ValueError(f"fault: must be one of {FAULTS} or like 'raise@3,kill@4', got {spec!r}")
        return spec
    chosen = "none"
    for entry in spec.split(","):
        kind, _, num = entry.strip().partition("@")
        if kind not in FAULTS or not num.isdigit():
            raise ValueError(f"fault: entry {entry!r} is not <fault>@<job number> with a fault in {FAULTS}")
        if job_num is not None and int(num) == job_num:
            chosen = kind
    return chosen


@dataclass
class RunConfig:
    experiment_name: str = MISSING
    dry_run: bool = MISSING
    seed: int = MISSING
    force: bool = MISSING  # rerun a job even if its run key already has a FINISHED run
    isolate: str = MISSING  # run the work in a child process: auto (in multiruns), always or never
    job_timeout_s: Optional[float] = MISSING  # kill the work after this long (isolated jobs only)
    analysis_after_sweep: bool = MISSING  # a multirun ends by writing the experiment's analysis
    serving_after_sweep: Optional[str] = MISSING  # a serving scenario to run at the end of a multirun
    backend: Any = None  # typed below by the adapter that backend.name selects
    representation: Any = None  # typed below by the representation that representation.name selects
    dataset: Any = None  # typed below by dataset.kind (harness/data/sources.py)
    model: ModelConfig = field(default_factory=ModelConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ("model", "workload", "measure", "train", "tracking", "debug")


def _omegaconf_error(exc: OmegaConfBaseException, prefix: str = "") -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    message = str(getattr(exc, "msg", None) or exc).splitlines()[0]
    return ConfigError(f"{prefix}{key}".rstrip("."), message)


def _check(section: Any, prefix: str) -> None:
    try:
        section.check()
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        raise ConfigError(f"{prefix}.{key}", message) from None


def _typed(schema: type, node: dict, prefix: str) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _omegaconf_error(exc, prefix + ".") from None


def typed_backend_config(node: dict) -> BackendConfig:
    """Type the `backend` section; `auto` stays a bare BackendConfig until `resolve_backend_config`."""
    name = node.get("name", "auto")
    if name == "auto":
        schema: type = BackendConfig
    else:
        try:
            schema = backends.adapter_class(name).config_class
        except KeyError as exc:
            raise ConfigError("backend.name", str(exc.args[0])) from None
    config = _typed(schema, node, "backend")
    _check(config, "backend")
    return config


def resolve_backend_config(config: BackendConfig, name: str) -> BackendConfig:
    """`auto` resolved to `name`: that backend's YAML defaults with the inline values on top."""
    defaults_file = config_dir() / "backend" / f"{name}.yaml"
    node = OmegaConf.to_container(OmegaConf.load(defaults_file)) if defaults_file.is_file() else {}
    inline = {k: v for k, v in dataclasses.asdict(config).items() if k != "name" and v is not None}
    return typed_backend_config({**node, **inline, "name": name})


def typed_dataset_config(node: dict | None) -> Any:
    from harness.data.sources import KINDS

    if not node or "kind" not in node:
        raise ConfigError("dataset.kind", "missing: choose a dataset with dataset=<name> (conf/dataset/)")
    if node["kind"] not in KINDS:
        raise ConfigError("dataset.kind", f"unknown dataset kind {node['kind']!r}; known: {sorted(KINDS)}")
    config = _typed(KINDS[node["kind"]], node, "dataset")
    _check(config, "dataset")
    return config


def typed_representation_config(node: dict) -> Any:
    if not node or "name" not in node:
        raise ConfigError("representation.name", "missing: choose one with representation=<name>")
    try:
        module = representations.get(node["name"])
    except KeyError as exc:
        raise ConfigError("representation.name", str(exc.args[0])) from None
    config = _typed(module.Config, node, "representation")
    _check(config, "representation")
    return config


def load_config(cfg: DictConfig | dict) -> RunConfig:
    """Validate a composed config; raises ConfigError naming the first bad key."""
    if isinstance(cfg, DictConfig):
        # The hydra node is Hydra's own (and, for a job composed ahead of launch, not resolvable yet).
        mine = [k for k in cfg.keys() if k != "hydra"]
        container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, mine), resolve=True)
    else:
        container = dict(cfg)
        container.pop("hydra", None)
    backend_node = container.pop("backend", None) or {"name": "auto"}
    representation_node = container.pop("representation", None)
    dataset_node = container.pop("dataset", None)
    try:
        run = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), container))
    except OmegaConfBaseException as exc:
        raise _omegaconf_error(exc) from None
    for name in SECTIONS:
        _check(getattr(run, name), name)
    if not run.experiment_name.strip():
        raise ConfigError("experiment_name", "must not be empty")
    if run.isolate not in ("auto", "always", "never"):
        raise ConfigError("isolate", f"must be auto, always or never, got {run.isolate!r}")
    if run.job_timeout_s is not None and not run.job_timeout_s > 0:
        raise ConfigError("job_timeout_s", f"must be > 0 or null, got {run.job_timeout_s}")
    run.dataset = typed_dataset_config(dataset_node)
    run.backend = typed_backend_config(backend_node)
    run.representation = typed_representation_config(representation_node)
    workload_spec(run)  # cross-field checks (widths against the embedding dim)
    return run


def workload_spec(run: RunConfig) -> WorkloadSpec:
    """The framework-neutral spec of the run's model; errors name the model keys that disagree."""
    shape = SHAPES[run.dataset.shape]
    model = run.model
    dim = model.embedding_dim or shape.embedding_dim
    bottom = tuple(model.bottom_mlp) if model.bottom_mlp else shape.bottom_mlp
    top = tuple(model.top_mlp) if model.top_mlp else shape.top_mlp
    if model.bottom_mlp is None and model.embedding_dim is not None and bottom[-1] != dim:
        bottom = (*bottom[:-1], dim)  # a new dim with the reference MLP: resize its last layer
    if bottom[0] != 13:
        raise ConfigError("model.bottom_mlp", f"must start at the 13 dense features, got {list(bottom)}")
    if bottom[-1] != dim:
        raise ConfigError(
            "model.embedding_dim",
            f"{dim} does not match the bottom MLP's output {bottom[-1]} (model.bottom_mlp={list(bottom)}); "
            "the dense vector joins the dot interaction, so they must be equal",
        )
    if top[-1] != 1:
        raise ConfigError("model.top_mlp", f"must end at 1 (the logit), got {list(top)}")
    try:
        spec = WorkloadSpec.from_shape(
            run.dataset.shape,
            run.dataset.scale,
            embedding_dim=dim,
            bottom_mlp=bottom,
            top_mlp=top,
            ids_per_lookup=model.ids_per_lookup,
            representation=run.representation,
            # The id popularity law, where the data follows a known one (the cost of a DHE cache uses it).
            extras={"zipf_exponent": run.dataset.zipf_exponent} if run.dataset.kind == "synthetic" else {},
        )
    except ValueError as exc:
        raise ConfigError("model", str(exc)) from None
    check_spec = getattr(representations.get(run.representation.name), "check_spec", None)
    if check_spec is not None:
        try:
            check_spec(spec)
        except ValueError as exc:
            key, _, message = str(exc).partition(": ")
            raise ConfigError(f"representation.{key}", message) from None
    return spec


def load_section(cfg: DictConfig | dict, schema: type, validate: str, root: str) -> Any:
    """A tool's own config (analysis, serving) as its typed dataclass: merged onto the schema, then
    `validate` (the method name) run; any error becomes a ConfigError naming the key (`root` if none)."""
    node = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    node.pop("hydra", None)
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
        getattr(config, validate)()
    except OmegaConfBaseException as exc:
        raise ConfigError(getattr(exc, "full_key", "") or root, str(exc).splitlines()[0]) from None
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        raise ConfigError(key, message) from None
    return config


def config_dir() -> Path:
    """The Hydra config tree: `harness/conf` inside an installed wheel, else `conf/` of the checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no Hydra config tree (config.yaml) in {here / 'conf'} or {here.parent / 'conf'}")


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose the config tree outside a Hydra app (tests, benchmarks, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a running Hydra app: its search path is ours
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
