"""The config of `python -m harness.serving` (conf/serving.yaml, scenarios in conf/serving/), typed and
checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING

from harness.core.errors import ConfigError
from harness.core.schema import TrackingConfig, check_section
from harness.serving.policies import REGISTRY as POLICIES


@dataclass
class SizesConfig:
    kind: str = MISSING  # lognormal | mlperf (MLPerf DLRM's quantiles, shipped) | quantiles (from `file`)
    median: float = MISSING
    sigma: float = MISSING
    max: int = MISSING
    file: Optional[str] = MISSING  # quantiles: e.g. ../shared/data/mlperf_dlrm_query_size_quantiles.txt


@dataclass
class ScaledDevice:
    """A labelled stand-in device built from a measured one's profiles, when no real profile exists."""

    source: str = MISSING  # backend of the measured paths to scale (e.g. cpu)
    device: str = MISSING  # the stand-in's name, e.g. gpu-scaled
    per_sample_speedup: Dict[str, float] = MISSING  # representation -> how much faster per sample
    fixed_ms: float = MISSING  # added per query (launch and transfer overhead)
    label: str = MISSING


@dataclass
class LiveConfig:
    enabled: bool = MISSING
    policy: str = MISSING  # which policy routes the live queries
    qps: Optional[float] = MISSING  # null: 80% of the simulated max load of that policy
    duration_s: float = MISSING
    samples: int = MISSING  # distinct pre-built queries LoadGen draws from
    fault_path: Optional[str] = MISSING  # a path whose every call raises (fault-handling test)
    batching: bool = MISSING  # the devices batch queued queries (serving.batching's settings)


@dataclass
class BatchingConfig:
    """Device concurrency: a dynamic batcher per device (harness/serving/simulator.py: Batching)."""

    enabled: bool = MISSING  # true: every policy is also reported with batching (`<policy> +batching`)
    max_samples: int = MISSING  # the largest call a batcher builds (the profiles give its service time)
    devices: List[str] = MISSING  # the devices that batch; []: all but host CPUs (unless `cpu`)
    cpu: bool = MISSING  # host-CPU paths batch too (with devices: [])

    def check(self) -> None:
        if self.max_samples < 1:
            raise ConfigError("max_samples", f"must be >= 1, got {self.max_samples}")


@dataclass
class WhatIfConfig:
    """The what-if sweep over device speeds (harness/serving/whatif.py)."""

    enabled: bool = MISSING
    cpu_speedups: List[float] = MISSING  # host-CPU paths' latencies divided by each
    gpu_slowdowns: List[float] = MISSING  # every other device's latencies multiplied by each
    queries: int = MISSING  # simulated queries a point (fewer than the study's: a map, not a headline)

    def check(self) -> None:
        for key, values in (("cpu_speedups", self.cpu_speedups), ("gpu_slowdowns", self.gpu_slowdowns)):
            if not values or any(not v > 0 for v in values):
                raise ConfigError(key, f"values > 0, at least one, got {values}")
        if self.queries < 100:
            raise ConfigError("queries", f"must be >= 100, got {self.queries}")


@dataclass
class ServingConfig:
    experiment_name: str = MISSING
    # The command that records this study's measured paths, named when they are missing (null: a generic
    # hint).
    inputs_command: Optional[str] = MISSING
    profile_files: List[str] = MISSING
    scaled_devices: List[ScaledDevice] = MISSING
    # The workload (dataset x scale) whose runs are served: a profile never mixes workloads. None: the
    # experiment's only one (several: refused, naming them).
    workload: Optional[str] = MISSING
    paths: Optional[List[str]] = MISSING
    target_ms: float = MISSING
    percentile: float = MISSING
    sizes: SizesConfig = field(default_factory=SizesConfig)
    queries: int = MISSING
    load_points: int = MISSING
    policies: List[str] = MISSING
    mprec_slack: List[float] = MISSING  # one mprec (and mprec_split) policy per slack value
    split_min_size: int = MISSING
    seed: int = MISSING
    output_dir: Optional[str] = MISSING
    log_to_mlflow: bool = MISSING
    # The paper's claims table over the experiment's Kaggle and Terabyte workloads, a study per workload
    # (harness/serving/paper.py) instead of one study of `workload`.
    paper: bool = MISSING
    prices_file: Optional[str] = MISSING  # $/hour per device (null: conf/prices.yaml): $ per million correct
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    what_if: WhatIfConfig = field(default_factory=WhatIfConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self) -> None:
        if not self.target_ms > 0:
            raise ConfigError("target_ms", f"must be > 0, got {self.target_ms}")
        if not 0 < self.percentile < 100:
            raise ConfigError("percentile", f"must be in (0, 100), got {self.percentile}")
        if self.sizes.kind not in ("lognormal", "mlperf", "quantiles"):
            raise ConfigError("sizes.kind",
                              f"must be lognormal, mlperf or quantiles, got {self.sizes.kind!r}")
        if self.sizes.kind == "quantiles" and not self.sizes.file:
            raise ConfigError("sizes.file", "a quantile file is needed with sizes.kind=quantiles")
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown:
            raise ConfigError("policies", f"unknown {unknown}; known: {sorted(POLICIES)}")
        if not self.mprec_slack or any(not 0 < v <= 1 for v in self.mprec_slack):
            raise ConfigError("mprec_slack", f"values in (0, 1], got {self.mprec_slack}")
        if self.queries < 100:
            raise ConfigError("queries", f"must be >= 100, got {self.queries}")
        check_section(self.tracking, "tracking")
        check_section(self.batching, "batching")
        check_section(self.what_if, "what_if")
