"""What a path's run records, as functions of the plan and the ladder's results (docs/reading-results.md).

- before any work: the resolved config as params, the analytic cost as metrics (step 0) and as
  `cost.json` (the dry run's report), `config/resolved.yaml`, `environment.json`, `device.json`;
- per query size (step = query size): latency percentiles, throughput, first call, achieved GFLOP/s and
  GB/s and their share of the device's measured peaks, the adapter's own metrics;
- the raw samples of every timed iteration, `samples/latency_raw.csv`.
"""

from __future__ import annotations

import csv
import io
import logging

from omegaconf import OmegaConf

from backends.base import DeviceInfo
from harness.core.precision import gemm_peak_metric
from harness.pipeline.plan import Plan
from harness.pipeline.timing import QuerySizeResult
from harness.tracking import RunRecorder
from harness.tracking.environment import capture
from harness.workload.cost import PathCost

log = logging.getLogger(__name__)

MetricRow = tuple[str, float, int]  # (key, value, step)


def record_plan(recorder: RunRecorder, p: Plan) -> None:
    """The config, the analytic cost and the environment: recorded before any work starts."""
    config = p.run.as_dict()
    recorder.log_params(config)
    recorder.log_metrics(p.cost.summary())
    recorder.log_dict(p.dry_run_report(), "cost.json")  # the plan, with the representation's details
    recorder.log_text(OmegaConf.to_yaml(OmegaConf.create(config)), "config/resolved.yaml")
    recorder.log_dict(capture(), "environment.json")


def record_device(recorder: RunRecorder, device: DeviceInfo) -> None:
    recorder.set_tags({"device_name": device.name, "device_kind": device.kind})
    recorder.log_dict(device.as_dict(), "device.json")


def record_reader_stats(recorder: RunRecorder, dataset) -> None:
    """Rows read and malformed lines skipped, for datasets read from files."""
    stats = getattr(dataset, "stats", None)
    if stats is None:
        return
    recorder.log_metrics({"data_rows_read": stats.rows, "data_malformed_lines": stats.malformed})
    if stats.malformed:
        where = ", ".join(f"line {line} ({why})" for line, why in stats.examples)
        log.warning("%d malformed lines skipped in %s; first: %s", stats.malformed, dataset.cfg.path, where)


def size_metrics(result: QuerySizeResult, cost: PathCost, peaks: dict[str, float],
                 precision: str = "fp32") -> list[MetricRow]:
    """One query size's metrics (step = its size); an infeasible size records `feasible=0` only. The GEMM
    fraction is of the peak in the path's compute precision (bf16 paths against the bf16 GEMM)."""
    q = result.query_size
    rows: list[MetricRow] = [("feasible", float(result.feasible), q)]
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
    gemm_peak = peaks.get(gemm_peak_metric(precision))
    if gemm_peak:
        rows.append(("fraction_of_gemm_peak", cost.flops(q) / mean_s / 1e9 / gemm_peak, q))
    if peaks.get("gather_gbps"):
        rows.append(("fraction_of_gather_bandwidth", cost.bytes_read(q) / mean_s / 1e9 / peaks["gather_gbps"], q))
    return rows


# The metrics a user compares paths by first, also logged under this prefix: MLflow's chart view puts a
# prefixed section before the unprefixed "Model metrics", so they open at the top, the other ~40 below.
COMPARE = "compare/"


def comparison_rows(results: list[QuerySizeResult], cost: PathCost, accuracy: float | None) -> list[MetricRow]:
    """p50 and p99 latency and samples/s per query size, parameter bytes, and where quality was measured
    the accuracy and correct predictions per second (accuracy x samples/s, the mapping's score)."""
    rows: list[MetricRow] = [(f"{COMPARE}param_bytes", cost.param_bytes, 0)]
    if accuracy is not None:
        rows.append((f"{COMPARE}accuracy", accuracy, 0))
    for r in results:
        if not r.feasible:
            continue
        q = r.query_size
        rows += [(f"{COMPARE}latency_p50_ms", r.stats.p50_ms, q), (f"{COMPARE}latency_p99_ms", r.stats.p99_ms, q),
                 (f"{COMPARE}samples_per_s", r.stats.samples_per_s, q)]
        if accuracy is not None:
            rows.append((f"{COMPARE}correct_predictions_per_s", accuracy * r.stats.samples_per_s, q))
    return rows


def raw_samples_csv(results: list[QuerySizeResult]) -> str:
    """Every timed iteration: query size, iteration, host latency, device latency (where measured)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["query_size", "iteration", "latency_s", "device_latency_s"])
    for r in results:
        device = r.device_latencies_s
        for i, latency in enumerate(r.latencies_s):
            writer.writerow([r.query_size, i, repr(latency), repr(device[i]) if i < len(device) else ""])
    return out.getvalue()


def record_ladder(recorder: RunRecorder, p: Plan, results: list[QuerySizeResult], peaks: dict[str, float],
                  extra_rows: list[MetricRow], accuracy: float | None) -> None:
    """The ladder's metrics per size, `fits_device` per size, the comparison metrics, raw samples,
    infeasible sizes as a tag."""
    rows = [row for r in results for row in size_metrics(r, p.cost, peaks, p.run.precision.name)] + extra_rows
    rows += comparison_rows(results, p.cost, accuracy)
    rows += [("fits_device", float(bool(p.fits(r.query_size))), r.query_size) for r in results]
    recorder.log_metric_rows(rows)
    recorder.log_text(raw_samples_csv(results), "samples/latency_raw.csv")
    infeasible = [r.query_size for r in results if not r.feasible]
    if infeasible:
        recorder.set_tags({"infeasible_query_sizes": ",".join(map(str, infeasible))})
