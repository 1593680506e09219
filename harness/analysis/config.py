"""The config of `python -m harness.analysis` (conf/analysis.yaml), typed and checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING

from harness.analysis import mapping as mp
from harness.core import prices
from harness.core.errors import ConfigError
from harness.core.schema import TrackingConfig, check_section


@dataclass
class AnalysisConfig:
    experiment_name: str = MISSING
    parent_run_id: Optional[str] = MISSING  # only this sweep's runs
    targets_ms: List[float] = MISSING
    percentile: str = MISSING
    rank_by: str = MISSING
    prices_file: Optional[str] = MISSING  # $/hour per device (null: conf/prices.yaml): the cheapest paths
    output_dir: Optional[str] = MISSING  # null: <results_dir>/<experiment>/analysis
    log_to_mlflow: bool = MISSING
    plots: bool = MISSING
    devices: Dict[str, Optional[float]] = MISSING  # nominal capacities in bytes; null: this machine's RAM
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self) -> None:
        if not self.targets_ms or min(self.targets_ms) <= 0:
            raise ConfigError("targets_ms", f"must be positive latency targets, got {self.targets_ms}")
        if self.percentile not in mp.PERCENTILES:
            raise ConfigError("percentile", f"must be one of {mp.PERCENTILES}, got {self.percentile!r}")
        if self.rank_by not in mp.RANKINGS:
            raise ConfigError("rank_by", f"must be one of {mp.RANKINGS}, got {self.rank_by!r}")
        prices.load(self.prices_file)  # a bad price table is refused before any run is read
        check_section(self.tracking, "tracking")

    def settings(self) -> mp.MappingSettings:
        return mp.MappingSettings(tuple(self.targets_ms), self.percentile, self.rank_by)
