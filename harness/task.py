"""One Hydra job = one path (representation x backend x dataset): plan, measure, record.

`plan` is cheap and never allocates the model (it is all a dry run does); `measure_path` builds the
model, runs the latency ladder and records one MLflow run, which is ended FAILED with the error if
anything raises, so a crash never leaves a run RUNNING.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

import backends
import harness
from backends.base import Backend
from harness import environment
from harness.config import RunConfig, load_config, resolve_backend_config, workload_spec
from harness.measure import LadderSettings, QuerySizeResult
from harness.workload.cost import PathCost, path_cost
from harness.workload.spec import WorkloadSpec

log = logging.getLogger(__name__)

# Keys that say where results go or whether to run, not what is measured: left out of the run key.
_NOT_IN_RUN_KEY = ("tracking", "dry_run", "experiment_name", "force", "isolate", "job_timeout_s", "debug",
                   "analysis_after_sweep", "serving_after_sweep")


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
        from harness.workload.representations import label

        return f"{label(self.run.representation)}@{self.adapter.name}"

    def run_key(self) -> str:
        """Stable hash of what is measured (resolved config + harness version): a rerun's identity."""
        config = {k: v for k, v in self.run.as_dict().items() if k not in _NOT_IN_RUN_KEY}
        blob = json.dumps({"config": config, "harness": harness.__version__}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def fits(self, query_size: int) -> bool | None:
        if self.capacity_bytes is None:
            return None
        return self.cost.fits(self.capacity_bytes, query_size, self.run.workload.memory_headroom)

    def dry_run_report(self) -> dict[str, Any]:
        sizes = self.run.workload.query_sizes
        largest = max(sizes)
        report = {
            "path": self.path,
            "representation": self.run.representation.name,
            "backend": self.adapter.name,
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
        return report


def plan(cfg: Any) -> Plan:
    """Validate the config, resolve the backend and compute the analytic cost; allocates nothing."""
    run = load_config(cfg)
    name = backends.resolve_name(run.backend.name)
    if name != run.backend.name:  # auto: re-type the section with the chosen adapter's schema
        run.backend = resolve_backend_config(run.backend, name)
    adapter = backends.adapter_class(name)(run.backend)
    spec = workload_spec(run)
    capacity, source = adapter.capacity_bytes()
    return Plan(run, spec, path_cost(spec), adapter, capacity, source)


def _raw_samples_csv(results: list[QuerySizeResult]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["query_size", "iteration", "latency_s", "device_latency_s"])
    for r in results:
        device = r.device_latencies_s
        for i, latency in enumerate(r.latencies_s):
            writer.writerow([r.query_size, i, repr(latency), repr(device[i]) if i < len(device) else ""])
    return out.getvalue()


def _size_metrics(result: QuerySizeResult, cost: PathCost, peaks: dict[str, float]) -> list[tuple[str, float, int]]:
    q = result.query_size
    rows: list[tuple[str, float, int]] = [("feasible", float(result.feasible), q)]
    if not result.feasible:
        return rows
    stats = result.stats.as_dict()
    for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms"):
        rows.append((f"latency_{key}", stats[key], q))
    mean_s = result.stats.mean_ms / 1e3
    rows += [
        ("latency_cv", stats["cv"], q),
        ("samples_per_s", stats["samples_per_s"], q),
        ("iterations", stats["n"], q),
        ("warmup_iterations", result.warmup_iters, q),
        ("first_call_ms", result.first_call_s * 1e3, q),
        ("achieved_gflops", cost.flops(q) / mean_s / 1e9, q),
        ("achieved_gbps", cost.bytes_read(q) / mean_s / 1e9, q),
    ]
    if result.device_stats is not None:
        device = result.device_stats.as_dict()
        rows += [(f"device_latency_{k}", device[k], q) for k in ("p50_ms", "p99_ms", "mean_ms")]
    rows += [(key, value, q) for key, value in result.extra.items()]
    if peaks.get("gemm_gflops"):
        rows.append(("fraction_of_gemm_peak", cost.flops(q) / mean_s / 1e9 / peaks["gemm_gflops"], q))
    if peaks.get("gather_gbps"):
        rows.append(("fraction_of_gather_bandwidth", cost.bytes_read(q) / mean_s / 1e9 / peaks["gather_gbps"], q))
    return rows


def _log_reader_stats(dataset, recorder) -> None:
    stats = getattr(dataset, "stats", None)
    if stats is None:
        return
    recorder.log_metrics({"data_rows_read": stats.rows, "data_malformed_lines": stats.malformed})
    if stats.malformed:
        where = ", ".join(f"line {line} ({why})" for line, why in stats.examples)
        log.warning("%d malformed lines skipped in %s; first: %s", stats.malformed, dataset.cfg.path, where)


def inject_fault(fault: str) -> None:
    """debug.fault: fail on purpose once the run exists, the ways real jobs fail (reliability tests)."""
    if fault == "raise":
        raise RuntimeError("injected fault (debug.fault=raise)")
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    if fault == "hang":
        while True:
            time.sleep(3600)


def run_tags(p: Plan) -> dict[str, str]:
    run, adapter = p.run, p.adapter
    sha, dirty = environment.git_revision()
    tags = {
        "path": p.path,
        "representation": run.representation.name,
        "backend": adapter.name,
        "dataset": run.dataset.name,
        "harness_version": harness.__version__,
        "git_sha": sha,
        "git_dirty": str(dirty).lower(),
        "run_key": p.run_key(),
        "mprec.kind": "latency",
    }
    if run.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = run.tracking.parent_run_id
    return tags


def run_name(p: Plan) -> str:
    return f"{p.path.replace('@', '-')}-{p.run.dataset.name}"


def measure_path(p: Plan, run_id: str | None = None) -> dict[str, Any]:
    """Build, (train,) prepare and measure the path, recording one MLflow run; returns a small summary.

    `run_id` attaches to a run created by the job process (isolated jobs) instead of creating one.
    """
    from harness.data.pool import Batch, pool_size
    from harness.data.sources import open_dataset
    from harness.measure import run_ladder
    from harness.report import ladder_progress, print_summary
    from harness.tracking import RunRecorder

    run, spec, adapter = p.run, p.spec, p.adapter
    with RunRecorder(run.tracking, run.experiment_name, run_name(p), run_tags(p), run_id=run_id) as recorder:
        recorder.log_params(run.as_dict())
        recorder.log_metrics(p.cost.summary())
        recorder.log_dict(p.dry_run_report(), "cost.json")  # the plan, with the representation's details
        recorder.log_text(OmegaConf.to_yaml(OmegaConf.create(run.as_dict())), "config/resolved.yaml")
        recorder.log_dict(environment.capture(), "environment.json")
        adapter.require_available()
        device = adapter.device_info()
        recorder.set_tags({"device_name": device.name, "device_kind": device.kind})
        recorder.log_dict(device.as_dict(), "device.json")
        inject_fault(run.debug.fault)
        if p.fits(1) is False:
            raise MemoryError(
                f"{p.path} needs {p.cost.memory_needed(1):,} bytes but {device.name} has {p.capacity_bytes:,} "
                f"(with headroom {run.workload.memory_headroom}); lower dataset.scale or pick another path"
            )

        import torch

        from harness.workload.dlrm import build_model

        t0 = time.perf_counter()
        model = build_model(spec, seed=run.seed)
        build_s = time.perf_counter() - t0
        dataset = open_dataset(run.dataset, spec)
        from harness.cache_stage import IdCounter, attach_caches, cache_enabled

        counter = IdCounter(model) if cache_enabled(spec) else None
        if run.train.steps > 0:
            from harness.quality_stage import train_or_reuse

            train_or_reuse(run, model, dataset, recorder, observe=counter.observe if counter else None)
            _log_reader_stats(dataset, recorder)
        caches = attach_caches(model, spec, dataset, counter) if counter else None
        if caches:
            recorder.log_metrics(caches.summary())

        m = run.measure

        def make_pool(query_size: int) -> list[Batch]:
            batches = dataset.pool(query_size, pool_size(query_size, m.pool_samples))
            return [Batch(torch.from_numpy(dense), torch.from_numpy(ids)) for dense, ids in batches]

        t0 = time.perf_counter()
        adapter.prepare(model, make_pool(1)[0])
        prepare_s = time.perf_counter() - t0
        recorder.log_params({"backend_resolved": adapter.run_params()})
        recorder.log_metrics({"build_s": build_s, "prepare_s": prepare_s, "device_memory_bytes": device.memory_bytes,
                              **adapter.prepare_metrics()})
        peaks = {}
        if m.device_peaks:
            from harness.device_peaks import device_peaks

            peaks = device_peaks(adapter, device, run.tracking.results_dir, m.peaks_scale)
            recorder.log_metrics({f"device_{k}": v for k, v in peaks.items()})

        settings = LadderSettings(m.warmup_iters, m.warmup_s, m.min_iters, m.min_time_s, m.max_iters,
                                  m.max_time_s)
        sizes = run.workload.query_sizes
        with ladder_progress(p.path, len(sizes)) as advance:
            results = run_ladder(adapter, sizes, make_pool, settings, on_size_done=advance)
        rows = [row for r in results for row in _size_metrics(r, p.cost, peaks)]
        if caches:  # the same ladder without the cache, in the same run: its speedup, and hit rates
            from harness.cache_stage import cache_comparison

            rows += cache_comparison(caches, adapter, sizes, make_pool, settings, results)
        rows += [("fits_device", float(bool(p.fits(r.query_size))), r.query_size) for r in results]
        recorder.log_metric_rows(rows)
        recorder.log_text(_raw_samples_csv(results), "samples/latency_raw.csv")
        _log_reader_stats(dataset, recorder)
        infeasible = [r.query_size for r in results if not r.feasible]
        if infeasible:
            recorder.set_tags({"infeasible_query_sizes": ",".join(map(str, infeasible))})
        adapter.close()

    print_summary(
        f"{p.path} on {device.name} ({run.dataset.name}, scale {run.dataset.scale}, "
        f"{p.cost.param_bytes / 2**20:,.1f} MiB parameters)",
        results,
        footer=f"MLflow run {recorder.run_id} in experiment '{run.experiment_name}' at {recorder.uri}",
    )
    return {"run_id": recorder.run_id, "path": p.path, "run_key": p.run_key()}
