"""From MLflow run records (harness.tracking.Store.load_runs) to the tidy table the mapping works on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.analysis.mapping import COLUMNS
from harness.core import trust
from harness.core.paths import PathLabel
from harness.core.precision import gemm_peak_metric, storage_label


def workload_of(params: dict) -> str:
    """Runs compare only within one workload: the same dataset at the same scale."""
    return f"{params.get('dataset.name', '?')} x{params.get('dataset.scale', '?')}"


def tidy(records: list[dict]) -> pd.DataFrame:
    """One row per (run, query size); a run with no per-size metrics (it failed early) keeps one row."""
    rows = []
    for rec in records:
        tags, params, metrics = rec["tags"], rec["params"], rec["metrics"]
        base = {
            "run_id": rec["run_id"], "status": rec["status"], "path": tags.get("path", "?"),
            "representation": tags.get("representation"), "backend": tags.get("backend"),
            "device": tags.get("device_name", tags.get("backend")), "workload": workload_of(params),
            "param_bytes": metrics.get("param_bytes", np.nan),
            "flops_per_sample": metrics.get("flops_per_sample", np.nan),
            "bytes_read_per_sample": metrics.get("bytes_read_per_sample", np.nan),
            "bytes_read_fixed": metrics.get("bytes_read_per_query_fixed", 0.0),
            "device_memory_bytes": metrics.get("device_memory_bytes", np.nan),
            # The GEMM peak of the path's own compute precision (bf16 paths: the bf16 GEMM's).
            "device_gemm_gflops": metrics.get(f"device_{gemm_peak_metric(tags.get('precision', 'fp32'))}", np.nan),
            "device_gemm_fp32_gflops": metrics.get("device_gemm_gflops", np.nan),
            "device_gemm_bf16_gflops": metrics.get("device_gemm_bf16_gflops", np.nan),
            "device_gather_gbps": metrics.get("device_gather_gbps", np.nan),
            "device_gather64_gbps": metrics.get("device_gather64_gbps", np.nan),
            "device_copy_gbps": metrics.get("device_copy_gbps", np.nan),
            "accuracy": metrics.get("accuracy", np.nan), "start_time": rec["start_time"],
            "quality_key": tags.get("quality_key"),
            "mode": tags.get("mode", "eager"), "family": PathLabel.parse(tags.get("path", "?")).family,
            # Compute precision and table storage (runs from before precision was a choice are fp32).
            "numerics": tags.get("precision", "fp32") + storage_label(tags.get("table_storage", "fp32")),
            "same_model_as": tags.get("same_model_as"),  # e.g. tt with no table in TT form: the table model
        }
        base["peaks_reliable"] = metrics.get("device_peaks_reliable", np.nan)
        reasons = trust.parse(tags.get(trust.TAG))
        per_size = rec["per_size"]
        sizes = sorted(set().union(*[set(v) for v in per_size.values()])) if per_size else []
        if not sizes:
            rows.append({**base, "query_size": np.nan})
            continue
        for q in sizes:
            get = lambda key: per_size.get(key, {}).get(q, np.nan)  # noqa: E731
            rows.append({**base, "query_size": q, "p50_ms": get("latency_p50_ms"), "p90_ms": get("latency_p90_ms"),
                         "p95_ms": get("latency_p95_ms"), "p99_ms": get("latency_p99_ms"),
                         "samples_per_s": get("samples_per_s"), "feasible": get("feasible"),
                         # 1 trusted, 0 flagged (why: the run's `unreliable` tag), NaN: recorded before it was judged
                         "reliable": get("reliable"), "unreliable_reason": reasons.get(int(q), "")})
    frame = pd.DataFrame(rows)
    for column in (*COLUMNS, "quality_key", "same_model_as", "numerics", "mode", "family", "device_gemm_fp32_gflops",
                   "device_gemm_bf16_gflops", "reliable", "unreliable_reason", "peaks_reliable"):
        if column not in frame:
            frame[column] = np.nan
    return frame


def join_quality(runs: pd.DataFrame) -> pd.DataFrame:
    """Fill each path's accuracy from the quality run of the same representation, workload and numerics.

    A run that trained (or reused a training) carries its accuracy; another run of the same
    representation and workload (another backend) takes it from there, preferring the same quality key.
    Numerics (compute precision and table storage) must match: a bf16 or int8 path is scored with the
    accuracy measured in its own precision, never the fp32 one. A path with no such run keeps no accuracy:
    it is never given one.
    """
    runs = runs.copy()
    rated = runs[runs["accuracy"].notna() & (runs["status"] == "FINISHED")].sort_values("start_time")
    if rated.empty:
        return runs
    by_key = rated.dropna(subset=["quality_key"]).groupby(["quality_key", "numerics"])["accuracy"].last().to_dict()
    by_rep = rated.groupby(["representation", "workload", "numerics"])["accuracy"].last().to_dict()
    missing = runs["accuracy"].isna()
    for i in runs.index[missing]:
        key, numerics = runs.at[i, "quality_key"], runs.at[i, "numerics"]
        accuracy = by_key.get((key, numerics)) if isinstance(key, str) else None
        if accuracy is None:
            accuracy = by_rep.get((runs.at[i, "representation"], runs.at[i, "workload"], numerics))
        if accuracy is not None:
            runs.at[i, "accuracy"] = accuracy
    return runs
