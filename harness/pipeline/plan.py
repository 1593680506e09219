"""The plan of one job: its validated config, the workload spec, the analytic cost and the adapter.

`plan` is cheap and never allocates the model or imports torch: it is all a dry run does, and what a
sweep checks for every job before the first one starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import backends
import harness
from backends.base import Backend
from harness.core.keys import run_key
from harness.core.paths import PathLabel, variant
from harness.core.schema import RunConfig
from harness.core.spec import WorkloadSpec
from harness.pipeline.config import load_config, resolved_backend, workload_spec
from harness.tracking.environment import git_revision
from harness.tracking.store import KIND_TAG, SWEEP_TAG
from harness.workload.cost import PathCost, path_cost
from harness.workload.representations import label, same_model_as
from harness.workload.representations import run_tags as representation_tags

# `job_timeout_s: auto`'s allowances (Plan.job_timeout): building, data, peaks and evaluation of a
# Kaggle-scale path take minutes on 2 cores; a training step of the largest shapes well under a second.
_AUTO_SETUP_S = 600.0
_AUTO_TRAIN_STEP_S = 1.0


@dataclass
class Plan:
    run: RunConfig
    spec: WorkloadSpec
    cost: PathCost
    adapter: Backend
    capacity_bytes: int | None
    capacity_source: str

    @property
    def path(self) -> str:
        """The path's label (harness/core/paths.py), e.g. `dhe+cache@cpu`, `table:int8@cuda+graphs/bf16`,
        `dhe[k=512]@cpu`: fp32, eager paths of the default model carry none of these, as before they were
        choices."""
        return str(PathLabel(label(self.run.representation, model_variant(self.run)), self.adapter.name,
                             self.adapter.mode(), self.run.precision.name))

    @property
    def run_name(self) -> str:
        """What the MLflow UI lists: the path and its workload, e.g.
        `table@cpu synthetic_kaggle x0.01 q1-4096`."""
        sizes = self.run.workload.query_sizes
        q = f"q{min(sizes)}" if len(sizes) == 1 else f"q{min(sizes)}-{max(sizes)}"
        return f"{self.path} {self.run.dataset.name} x{self.run.dataset.scale:g} {q}"

    def run_key(self) -> str:
        return run_key(self.run.as_dict())

    def job_timeout(self) -> float | None:
        """Seconds an isolated job's work may run before it is killed and recorded FAILED: `job_timeout_s`,
        or for `auto` a bound no healthy job reaches: 3x (setup, every size's attempts at their full time
        budget, and training at a generous second a step), so a hung job ends instead of holding its slot.

        >>> from harness.core.conf import compose
        >>> p = plan(compose(["workload.query_sizes=[1,64]", "+backend=cpu", "train.steps=100"]))
        >>> p.job_timeout()          # 3 x (600 + 2 sizes x 4 attempts x (0.2 + 10 + 1) + 100 x 1.0)
        2368.8
        """
        value = self.run.job_timeout_s
        if value != "auto":
            return value
        measure, stability = self.run.measure, self.run.measure.stability
        attempt_s = measure.warmup_s + measure.max_time_s + stability.retry_pause_s
        sizes_s = len(self.run.workload.query_sizes) * (stability.retries + 1) * attempt_s
        return 3 * (_AUTO_SETUP_S + sizes_s + self.run.train.steps * _AUTO_TRAIN_STEP_S)

    def run_tags(self) -> dict[str, str]:
        """The tags a path's run is created with (harness/tracking: searched by run_key and kind)."""
        run = self.run
        sha, dirty = git_revision()
        tags = {
            "path": self.path,
            "representation": run.representation.name,
            "backend": self.adapter.name,
            "precision": run.precision.name,
            "mode": self.adapter.mode(),
            "dataset": run.dataset.name,
            "harness_version": harness.__version__,
            "git_sha": sha,
            "git_dirty": str(dirty).lower(),
            "run_key": self.run_key(),
            KIND_TAG: "latency",
        }
        if run.tracking.parent_run_id:
            tags[SWEEP_TAG] = run.tracking.parent_run_id
        return {**tags, **representation_tags(self.spec)}

    def notes(self) -> list[str]:
        """What a user must know about what was measured (said with the summary, and recorded as tags)."""
        twin = same_model_as(self.spec)
        if not twin:
            return []
        name, why = twin
        return [f"{self.path} is exactly the {name} model at dataset.scale={self.run.dataset.scale}: {why} "
                f"(tag same_model_as={name}; the analysis leaves it out of the mapping where "
                f"{name}@{self.adapter.name} was measured)"]

    def fits(self, query_size: int) -> bool | None:
        if self.capacity_bytes is None:
            return None
        return self.cost.fits(self.capacity_bytes, query_size, self.run.workload.memory_headroom)

    def dry_run_report(self) -> dict[str, Any]:
        sizes = self.run.workload.query_sizes
        largest = max(sizes)
        return {
            "path": self.path,
            "representation": self.run.representation.name,
            "backend": self.adapter.name,
            "precision": self.run.precision.name,
            "mode": self.adapter.mode(),
            "dataset": self.run.dataset.name,
            "scale": self.run.dataset.scale,
            "num_tables": self.spec.num_tables,
            "total_rows": self.spec.total_rows,
            "embedding_dim": self.spec.embedding_dim,
            **self.cost.summary(),
            "embedding_details": self.cost.embedding.details,
            "query_sizes": sizes,
            "flops_per_query": {q: self.cost.flops(q) for q in sizes},
            "bytes_read_per_query": {q: self.cost.bytes_read(q) for q in sizes},
            "memory_needed_bytes": self.cost.memory_needed(largest),
            "device_capacity_bytes": self.capacity_bytes,
            "capacity_source": self.capacity_source,
            "memory_headroom": self.run.workload.memory_headroom,
            "fits_device": self.fits(largest),
            "fits_device_per_query_size": {q: self.fits(q) for q in sizes},
            "run_key": self.run_key(),
        }


# What a path's label leaves out of its variant: said by the label otherwise (name, `:storage`), or not a
# property of the model measured (where a cache's popularity is counted from).
_NOT_VARIANT = ("name", "storage", "cache.sample_rows")


@lru_cache(maxsize=None)
def _defaults(representation: str) -> tuple[dict, dict]:
    """The representation's and the model's settings as conf/ has them (composed once per process)."""
    from harness.core.conf import compose
    from harness.core.schema import plain

    composed = compose([f"representation={representation}"])
    return plain(composed.representation), plain(composed.model)


def model_variant(run: RunConfig) -> str:
    """The label's variant: the representation's and the model's settings that differ from conf/'s."""
    rep_defaults, model_defaults = _defaults(run.representation.name)
    settings = {**dataclasses.asdict(run.representation), **dataclasses.asdict(run.model)}
    defaults = {**rep_defaults, **model_defaults}
    for key in _NOT_VARIANT:
        head, _, tail = key.partition(".")
        for node in (settings, defaults):
            if tail and isinstance(node.get(head), dict):
                node[head] = {k: v for k, v in node[head].items() if k != tail}
            elif not tail:
                node.pop(head, None)
    return variant(settings, defaults)


def plan(cfg: Any) -> Plan:
    """Validate the config, resolve the backend and compute the analytic cost; allocates nothing."""
    run = load_config(cfg)
    run.backend = resolved_backend(run)
    adapter = backends.adapter_class(run.backend.name)(run.backend)
    spec = workload_spec(run)
    capacity, source = adapter.capacity_bytes()
    return Plan(run, spec, path_cost(spec), adapter, capacity, source)
