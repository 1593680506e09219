"""What a path's run records, as functions of the plan and the ladder's results (docs/reading-results.md).

- before any work: the resolved config as params, the analytic cost as metrics (step 0) and as
  `cost.json` (the dry run's report), `config/resolved.yaml`, `environment.json`, `device.json`;
- per query size (step = query size): latency percentiles with the 95 % intervals of p50 and p99,
  throughput, first call, achieved GFLOP/s and GB/s and their share of the device's measured peaks, the
  adapter's own metrics, the host's load while it was timed, `reliable` (0 where a stability rule still
  failed after the retries: tag `unreliable` says why) and `attempts`;
- the raw samples of every timed iteration of every attempt, `samples/latency_raw.csv`.
"""

from __future__ import annotations

import csv
import io
import logging

from omegaconf import OmegaConf

from backends.base import DeviceInfo
from harness.core import trust
from harness.core.precision import gemm_peak_metric
from harness.pipeline.plan import Plan
from harness.pipeline.stability import Ladder
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
    """Rows read and malformed lines skipped, for datasets read from files: training's pass where one ran
    (not the held-out or timing passes read after it), else the latest."""
    stats = getattr(dataset, "training_stats", None) or getattr(dataset, "stats", None)
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
    stats = result.timed.as_dict()
    for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms"):
        rows.append((f"latency_{key}", stats[key], q))
    for quantile in ("p50", "p99"):  # a side too few calls bound is open: no figure, and a flag saying so
        sides = [(f"latency_{quantile}_ci_{side}_ms", stats[f"{quantile}_ci_{side}_ms"])
                 for side in ("low", "high")]
        rows += [(key, value, q) for key, value in sides if value == value]
        rows.append((f"latency_{quantile}_ci_open", float(any(value != value for _, value in sides)), q))
    mean_s = result.timed.mean_ms / 1e3
    rows += [("latency_cv", stats["cv"], q), ("latency_robust_cv", stats["robust_cv"], q),
             ("samples_per_s", stats["samples_per_s"], q), ("iterations", stats["n"], q),
             ("warmup_iterations", result.warmup_iters, q), ("first_call_ms", result.first_call_ms, q),
             ("achieved_gflops", cost.flops(q) / mean_s / 1e9, q),
             ("achieved_gbps", cost.bytes_read(q) / mean_s / 1e9, q)]
    if result.device_stats is not None:
        device = result.device_stats.as_dict()
        rows += [(f"device_latency_{k}", device[k], q) for k in ("p50_ms", "p99_ms", "mean_ms")]
    rows += [(key, value, q) for key, value in result.extra.items()]
    if result.load is not None:
        rows += [(key, value, q) for key, value in result.load.metrics().items()]
    gemm_peak = peaks.get(gemm_peak_metric(precision))
    if gemm_peak:
        rows.append(("fraction_of_gemm_peak", cost.flops(q) / mean_s / 1e9 / gemm_peak, q))
    if peaks.get("gather_gbps"):
        rows.append(("fraction_of_gather_bandwidth", cost.bytes_read(q) / mean_s / 1e9 / peaks["gather_gbps"],
                     q))
    return rows


# The metrics a user compares paths by first, also logged under this prefix: MLflow's chart view puts a
# prefixed section before the unprefixed "Model metrics", so they open at the top, the other ~40 below.
# Keys stay under 30 characters: a chart card's title shows about that many at 1600 px (scripts/ui_look.py).
COMPARE = "compare/"


def comparison_rows(results: list[QuerySizeResult], cost: PathCost,
                    accuracy: float | None) -> list[MetricRow]:
    """p50 and p99 latency and samples/s per query size, parameter bytes, and where quality was measured
    the accuracy and correct predictions per second (accuracy x samples/s, the mapping's score)."""
    rows: list[MetricRow] = [(f"{COMPARE}param_bytes", cost.param_bytes, 0)]
    if accuracy is not None:
        rows.append((f"{COMPARE}accuracy", accuracy, 0))
    for r in results:
        if not r.feasible:
            continue
        q = r.query_size
        rows += [(f"{COMPARE}latency_p50_ms", r.timed.p50_ms, q), (f"{COMPARE}latency_p99_ms", r.timed.p99_ms,
                                                                   q), (f"{COMPARE}samples_per_s",
                                                                        r.timed.samples_per_s, q)]
        if accuracy is not None:
            rows.append((f"{COMPARE}correct_preds_per_s", accuracy * r.timed.samples_per_s, q))
    return rows


def raw_samples_csv(results: list[QuerySizeResult], used: set[int] | None = None) -> str:
    """Every timed iteration: query size, iteration, host latency, device latency (where measured), the
    attempt it belongs to and whether that attempt is the one the run's figures summarize."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["query_size", "iteration", "latency_s", "device_latency_s", "attempt", "used"])
    for r in results:
        device = r.device_latencies_s
        in_use = int(used is None or id(r) in used)
        for i, latency in enumerate(r.latencies_s):
            writer.writerow([r.query_size, i, repr(latency), repr(device[i]) if i < len(device) else "",
                             r.attempt, in_use])
    return out.getvalue()


def reliability_rows(ladder: Ladder) -> list[MetricRow]:
    """`reliable` (1 or 0) and `attempts` per feasible size."""
    return [row for r in ladder.results if r.feasible
            for row in (("reliable", float(ladder.reliable(r.query_size)), r.query_size),
                        ("attempts", float(len(ladder.attempts.get(r.query_size, [r]))), r.query_size))]


def not_measurable(ladder: Ladder, device_kind: str) -> list[str]:
    """What could not be measured about interference here (said in a tag, never recorded as zero)."""
    missing: list[str] = []
    for r in ladder.results:
        if r.load is not None:
            missing += [m for m in r.load.unmeasurable() if m not in missing]
    if device_kind != "cpu" and not any("device_other_processes" in r.extra for r in ladder.results):
        missing.append(f"other users of the {device_kind} (the adapter cannot tell)")
    return missing


def record_ladder(recorder: RunRecorder, p: Plan, ladder: Ladder, peaks: dict[str, float],
                  extra_rows: list[MetricRow], accuracy: float | None, device_kind: str) -> None:
    """The ladder's metrics per size, `fits_device` per size, the comparison metrics, reliability, raw
    samples of every attempt, infeasible and unreliable sizes as tags."""
    results = ladder.results
    rows = [row for r in results for row in size_metrics(r, p.cost, peaks, p.run.precision.name)] + extra_rows
    rows += comparison_rows(results, p.cost, accuracy)
    # The fit rule's inputs and verdict per size (harness/core/fit.py); no verdict where the capacity is
    # unknown.
    rows += [
        ("memory_needed_bytes", float(p.cost.memory_needed(r.query_size)), r.query_size) for r in results
    ]
    verdicts = {r.query_size: p.fits(r.query_size) for r in results}
    rows += [("fits_device", float(fit), q) for q, fit in verdicts.items() if fit is not None]
    rows += reliability_rows(ladder)
    recorder.log_metric_rows(rows)
    every = [a for q in (r.query_size for r in results) for a in ladder.attempts.get(q, [])] or results
    recorder.log_text(raw_samples_csv(every, {id(r) for r in results}), "samples/latency_raw.csv")
    tags = {}
    infeasible = [r.query_size for r in results if not r.feasible]
    if infeasible:
        tags["infeasible_query_sizes"] = ",".join(map(str, infeasible))
    if ladder.reasons:
        tags[trust.TAG] = trust.describe(ladder.reasons)
    missing = not_measurable(ladder, device_kind)
    if missing:
        tags[trust.NOT_MEASURABLE_TAG] = "not measurable here: " + ", ".join(missing)
    if tags:
        recorder.set_tags(tags)
