"""The typed run configuration: the dataclasses Hydra's YAML becomes, and `typed`, which makes it so.

Values come only from `conf/` (every field here is MISSING until YAML fills it); these classes declare
types and check values before any model is built or any store is touched. A section's `check` raises
`ConfigError` naming its own key; `typed` and `check_section` put it under the section's key, so a user
reads `config key 'workload.query_sizes': ...`. The `backend`, `representation` and `dataset` sections
are typed by the dataclass their `name` or `kind` selects (harness/pipeline/config.py), so each adapter,
representation and dataset brings its own schema.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.core.errors import ConfigError
from harness.core.precision import PRECISIONS


@dataclass
class ModelConfig:
    # null = the dataset shape's reference architecture; how the widths fit together is WorkloadSpec's rule.
    embedding_dim: Optional[int] = MISSING
    bottom_mlp: Optional[List[int]] = MISSING  # includes the 13 dense inputs, ends at embedding_dim
    top_mlp: Optional[List[int]] = MISSING  # after the interaction, ends at 1
    ids_per_lookup: int = MISSING
    # No check here: how these values fit together is WorkloadSpec's rule (harness/core/spec.py), checked
    # once when the run's spec is made.


@dataclass
class WorkloadConfig:
    query_sizes: List[int] = MISSING
    memory_headroom: float = MISSING  # fraction of device memory kept free when judging what fits

    def check(self) -> None:
        if not self.query_sizes:
            raise ConfigError("query_sizes", "must list at least one query size")
        bad = [q for q in self.query_sizes if q < 1]
        if bad:
            raise ConfigError("query_sizes", f"query sizes must be >= 1, got {bad}")
        if len(set(self.query_sizes)) != len(self.query_sizes):
            raise ConfigError("query_sizes", f"duplicates in {self.query_sizes}")
        if not 0 <= self.memory_headroom < 1:
            raise ConfigError("memory_headroom", f"must be in [0, 1), got {self.memory_headroom}")


@dataclass
class StabilityConfig:
    """When a query size's measurement is trusted (harness/pipeline/stability.py, docs/measurement.md)."""

    max_other_cores: float = MISSING  # other processes' CPU on the run's cores beyond what it left spare
    max_steal_cores: float = MISSING  # CPU the hypervisor gave other guests, in cores
    max_robust_cv: float = MISSING  # 1.4826 x MAD / median of the timed calls
    order_tolerance: float = MISSING  # smaller size slower than a larger one beyond both p50 intervals + this
    peak_tolerance: float = MISSING  # achieved GFLOP/s above the measured GEMM peak by more than this
    retries: int = MISSING  # rounds of measuring a flagged size again (with a neighbour) before flagging it
    retry_pause_s: float = MISSING  # pause before each such round
    retry_budget: float = MISSING  # all re-measurement of a run, as a share of its first ladder's time

    def check(self) -> None:
        for key in ("max_other_cores", "max_steal_cores", "max_robust_cv", "order_tolerance",
                    "peak_tolerance", "retries", "retry_pause_s", "retry_budget"):
            if getattr(self, key) < 0:
                raise ConfigError(key, f"must be >= 0, got {getattr(self, key)}")


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
    stability: StabilityConfig = field(default_factory=StabilityConfig)

    def check(self) -> None:
        check_section(self.stability, "stability")
        for key in ("warmup_iters", "warmup_s", "min_time_s"):
            if getattr(self, key) < 0:
                raise ConfigError(key, f"must be >= 0, got {getattr(self, key)}")
        if self.min_iters < 1:
            raise ConfigError("min_iters", f"must be >= 1, got {self.min_iters}")
        if self.max_iters < self.min_iters:
            raise ConfigError("max_iters", f"must be >= min_iters ({self.min_iters}), got {self.max_iters}")
        if self.max_time_s < self.min_time_s:
            raise ConfigError("max_time_s",
                              f"must be >= min_time_s ({self.min_time_s}), got {self.max_time_s}")
        if self.pool_samples < 1:
            raise ConfigError("pool_samples", f"must be >= 1, got {self.pool_samples}")
        if not 0 < self.peaks_scale <= 1:
            raise ConfigError("peaks_scale", f"must be in (0, 1], got {self.peaks_scale}")


OPTIMIZERS = ("sgd", "adagrad")


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
        if self.steps < 0:
            raise ConfigError("steps", f"must be >= 0, got {self.steps}")
        for key in ("batch_size", "eval_every", "eval_samples", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("optimizer", f"must be sgd or adagrad, got {self.optimizer!r}")
        if not self.lr > 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")


@dataclass
class TrackingConfig:
    # null: $MLFLOW_TRACKING_URI if set, else sqlite:///<results_dir>/mlflow.db
    uri: Optional[str] = MISSING
    results_dir: str = MISSING
    parent_run_id: Optional[str] = MISSING  # set by a sweep for its jobs: recorded as their tag mprec.sweep
    retry_s: float = MISSING  # how long one MLflow call retries a locked or unreachable store
    request_timeout_s: int = MISSING  # one HTTP request to a tracking server (MLFLOW_HTTP_REQUEST_TIMEOUT)

    def check(self) -> None:
        if not self.results_dir.strip():
            raise ConfigError("results_dir", "must not be empty")
        if self.uri is not None and not self.uri.strip():
            raise ConfigError("uri", "must be null or a tracking URI such as sqlite:///results/mlflow.db")
        if self.retry_s < 0:
            raise ConfigError("retry_s", f"must be >= 0 seconds (0: no retries), got {self.retry_s}")
        if self.request_timeout_s < 1:
            raise ConfigError("request_timeout_s", f"must be >= 1 second, got {self.request_timeout_s}")


@dataclass
class PrecisionConfig:
    # The path's compute precision (conf/precision/, harness/core/precision.py): fp32, bf16, fp16 or tf32.
    # Training stays fp32; a reduced-precision path is evaluated (and timed) in its own precision.
    name: str = MISSING

    def check(self) -> None:
        if self.name not in PRECISIONS:
            raise ConfigError("name", f"must be one of {PRECISIONS} (precision=<name>), got {self.name!r}")


FAULTS = ("none", "raise", "kill", "hang")


@dataclass
class DebugConfig:
    # Inject a failure once the run has started, to test that sweeps survive it: none, raise (an
    # exception), kill (SIGKILL of the worker, as the OOM killer does) or hang (until job_timeout_s);
    # or per job of a sweep, "raise@3,kill@4,hang@5" (by hydra.job.num; other jobs run normally; quote it
    # on the command line so Hydra does not read the commas as a sweep: 'debug.fault="raise@3,kill@4"').
    fault: str = MISSING
    # Plant a reading of other processes' CPU (in cores) at query sizes, e.g. {64: 1.5}: that size is
    # then flagged unreliable on a quiet machine, every attempt (tests, and to see what a flag looks like).
    interference: Optional[Dict[int, float]] = MISSING
    # Plant the reading of the machine's looks before the ladder and before each re-measurement round
    # (cores used by other processes), e.g. 1.5: a steady neighbour; 0: quiet (null: the machine is read).
    machine_load: Optional[float] = MISSING

    def check(self) -> None:
        fault_for_job(self.fault, 0)
        if self.machine_load is not None and self.machine_load < 0:
            raise ConfigError("machine_load", f"must be >= 0 cores or null, got {self.machine_load}")
        bad = {q: v for q, v in (self.interference or {}).items() if q < 1 or v < 0}
        if bad:
            raise ConfigError("interference", f"must map query sizes (>= 1) to cores (>= 0), got {bad}")

    def for_job(self, job_num: int | None) -> str:
        return fault_for_job(self.fault, job_num)


def fault_for_job(spec: str, job_num: int | None) -> str:
    """The fault `spec` assigns to job `job_num` (validating the whole spec)."""
    if "@" not in spec:
        if spec not in FAULTS:
            raise ConfigError("fault", f"must be one of {FAULTS} or like 'raise@3,kill@4', got {spec!r}")
        return spec
    chosen = "none"
    for entry in spec.split(","):
        kind, _, num = entry.strip().partition("@")
        if kind not in FAULTS or not num.isdigit():
            raise ConfigError("fault",
                              f"entry {entry!r} is not <fault>@<job number> with a fault in {FAULTS}")
        if job_num is not None and int(num) == job_num:
            chosen = kind
    return chosen


ISOLATION = ("auto", "always", "never")
SCOPES = ("sweep", "experiment")


@dataclass
class RunConfig:
    experiment_name: str = MISSING
    dry_run: bool = MISSING
    seed: int = MISSING
    force: bool = MISSING  # rerun a job even if its run key already has a FINISHED run
    isolate: str = MISSING  # run the work in a child process: auto (in multiruns), always or never
    # Kill the work after this long (isolated jobs only): seconds, `auto` (a generous bound from the plan,
    # harness/pipeline/plan.py `Plan.job_timeout`) or null (no bound, only when asked for)
    job_timeout_s: Any = MISSING
    analysis_after_sweep: bool = MISSING  # a multirun ends by writing the experiment's analysis
    analysis_scope: str = MISSING  # that analysis covers the sweep's own runs (sweep) or the experiment's
    serving_after_sweep: Optional[str] = MISSING  # a serving scenario to run at the end of a multirun
    backend: Any = None  # typed by the adapter that backend.name selects (harness/pipeline/config.py)
    representation: Any = None  # typed by the representation that representation.name selects
    dataset: Any = None  # typed by dataset.kind (harness/data/sources.py)
    model: ModelConfig = field(default_factory=ModelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def check(self) -> None:
        for name in ("precision", "workload", "measure", "train", "tracking", "debug"):
            check_section(getattr(self, name), name)
        if not self.experiment_name.strip():
            raise ConfigError("experiment_name", "must not be empty")
        if self.analysis_scope not in SCOPES:
            raise ConfigError("analysis_scope", f"must be one of {SCOPES}, got {self.analysis_scope!r}")
        if self.isolate not in ISOLATION:
            raise ConfigError("isolate", f"must be auto, always or never, got {self.isolate!r}")
        timeout = self.job_timeout_s
        if not (timeout is None or timeout == "auto" or (isinstance(timeout, (int, float))
                                                         and not isinstance(timeout, bool) and timeout > 0)):
            raise ConfigError("job_timeout_s", f"must be seconds (> 0), auto or null, got {timeout!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_section(section: Any, key: str) -> None:
    """Run `section.check()`, its errors named under `key`."""
    try:
        section.check()
    except ConfigError as exc:
        raise exc.within(key) from None


def typed(schema: type, node: Any, key: str = "", root: str = "") -> Any:
    """`node` (a dict or DictConfig) as an instance of the dataclass `schema`, checked.

    Unknown keys, wrong types and MISSING values are OmegaConf's errors; bad values are the schema's own
    `check`; both become a ConfigError whose key is under `key` (`root` names an error about the whole
    node, for a tool's own config such as the analysis').
    """
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as exc:
        inner = getattr(exc, "full_key", None) or ""
        message = str(getattr(exc, "msg", None) or exc).splitlines()[0]
        raise ConfigError(".".join(k for k in (key, inner) if k) or root, message) from None
    if hasattr(config, "check"):
        check_section(config, key)
    return config


def plain(node: Any) -> dict:
    """An OmegaConf mapping, resolved, as a plain dict (a list or a scalar here is a bug)."""
    value = OmegaConf.to_container(node, resolve=True)
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return value


def container(cfg: DictConfig | dict) -> dict:
    """A composed config as a plain dict, without Hydra's own `hydra` node (which, for a job composed
    ahead of launch, is not resolvable yet)."""
    if isinstance(cfg, DictConfig):
        mine = [str(k) for k in cfg.keys() if k != "hydra"]
        return plain(OmegaConf.masked_copy(cfg, mine))
    node = dict(cfg)
    node.pop("hydra", None)
    return node
