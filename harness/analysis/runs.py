"""From MLflow run records (harness.tracking.Store.load_runs) to the tidy table the mapping works on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.analysis.mapping import COLUMNS
from harness.core import trust
from harness.core.metrics import PER_SIZE
from harness.core.paths import PathLabel
from harness.core.precision import gemm_peak_metric, storage_label
from harness.tracking.store import OWNER_TAG


def workload_of(params: dict) -> str:
    """Runs compare only within one workload: the same dataset at the same scale."""
    return f"{params.get('dataset.name', '?')} x{params.get('dataset.scale', '?')}"


def run_columns(rec: dict) -> dict:
    """The columns a run contributes to each of its rows: identity, cost, device peaks, quality."""
    tags, params, metrics = rec["tags"], rec["params"], rec["metrics"]
    return {
        "run_id": rec["run_id"], "status": rec["status"], "path": tags.get("path", "?"),
        "path_label": tags.get("path", "?"),  # the label as recorded; `path` may gain its host (tidy)
        # The machine that measured it: the anonymous machine id heading the owner tag (machine:pid:start).
        "host": (tags.get(OWNER_TAG) or "").split(":")[0][:8],
        "representation": tags.get("representation"), "backend": tags.get("backend"),
        "device": tags.get("device_name", tags.get("backend")), "workload": workload_of(params),
        "param_bytes": metrics.get("param_bytes", np.nan),
        "flops_per_sample": metrics.get("flops_per_sample", np.nan),
        "bytes_read_per_sample": metrics.get("bytes_read_per_sample", np.nan),
        "bytes_read_fixed": metrics.get("bytes_read_per_query_fixed", 0.0),
        "device_memory_bytes": metrics.get("device_memory_bytes", np.nan),
        "memory_headroom": float(params.get("workload.memory_headroom", "nan")),
        # The threads (cores) the path ran on: what a per-core price is multiplied by (harness/core/prices.py)
        "threads": float(params.get("backend_resolved.num_threads", "nan")),
        # The GEMM peak of the path's own compute precision (bf16 paths: the bf16 GEMM's).
        "device_gemm_gflops": metrics.get("device_" + gemm_peak_metric(tags.get("precision", "fp32")),
                                          np.nan),
        "device_gemm_fp32_gflops": metrics.get("device_gemm_gflops", np.nan),
        "device_gemm_bf16_gflops": metrics.get("device_gemm_bf16_gflops", np.nan),
        "device_gather_gbps": metrics.get("device_gather_gbps", np.nan),
        "device_gather64_gbps": metrics.get("device_gather64_gbps", np.nan),
        "device_copy_gbps": metrics.get("device_copy_gbps", np.nan),
        "peaks_reliable": metrics.get("device_peaks_reliable", np.nan),
        "accuracy": metrics.get("accuracy", np.nan), "start_time": rec["start_time"],
        "quality_key": tags.get("quality_key"),
        "mode": tags.get("mode", "eager"), "family": PathLabel.parse(tags.get("path", "?")).family,
        # Compute precision and table storage (runs from before precision was a choice are fp32).
        "numerics": tags.get("precision", "fp32") + storage_label(tags.get("table_storage", "fp32")),
        "same_model_as": tags.get("same_model_as"),  # e.g. tt with no table in TT form: the table model
    }


def tidy(records: list[dict]) -> pd.DataFrame:
    """One row per (run, query size) with a column per entry of PER_SIZE (harness/core/metrics.py); a run
    with no per-size metrics (it failed early) keeps one row."""
    rows = []
    for rec in records:
        base = run_columns(rec)
        reasons = trust.parse(rec["tags"].get(trust.TAG))  # why a size is flagged unreliable (reliable 0)
        per_size = rec["per_size"]
        sizes = sorted(set().union(*[set(v) for v in per_size.values()])) if per_size else []
        if not sizes:
            rows.append({**base, "query_size": np.nan})
        for q in sizes:
            measured = {column: per_size.get(metric, {}).get(q, np.nan)
                        for metric, column in PER_SIZE.items()}
            rows.append({**base, "query_size": q, "unreliable_reason": reasons.get(int(q), ""), **measured})
    frame = pd.DataFrame(rows)
    for column in (*COLUMNS, "quality_key", "same_model_as", "numerics", "mode", "family", "host",
                   "device_gemm_fp32_gflops", "device_gemm_bf16_gflops", "unreliable_reason",
                   "peaks_reliable", "memory_headroom", "threads"):
        if column not in frame:
            frame[column] = np.nan
    frame["path_label"] = frame["path_label"] if "path_label" in frame else frame["path"]
    return separate_hosts(frame)


def separate_hosts(frame: pd.DataFrame) -> pd.DataFrame:
    """A device (by name) measured from several machines in one workload is one device per machine:
    every row of it has its `device`, `path` and `family` name the machine (`table@cpu (host 1a2b3c4d)`),
    so no rule keeps one machine's run and drops another's, no profile stitches one machine's eager sizes
    to another's CUDA graphs, and serving never makes one machine's CPU two servers (its paths all name
    it). Machines are counted over FINISHED runs with a known owner; a device measured from one machine
    keeps its paths' labels. `path_label` keeps the label as recorded.

    >>> rows = pd.DataFrame({"workload": "w", "family": ["table@cpu", "table@cpu", "dhe@cpu"],
    ...                      "path": ["table@cpu", "table@cpu", "dhe@cpu"], "device": "EPYC",
    ...                      "status": "FINISHED", "host": ["aa", "bb", "aa"]})
    >>> separate_hosts(rows)["path"].tolist()
    ['table@cpu (host aa)', 'table@cpu (host bb)', 'dhe@cpu (host aa)']
    """
    if frame.empty or "host" not in frame:
        return frame
    frame = frame.copy()
    hosts = frame["host"].fillna("").astype(str).replace("", "?")
    counted = hosts != "?"
    if "status" in frame:
        counted &= frame["status"] == "FINISHED"
    spans = hosts.where(counted).groupby([frame["workload"], frame["device"]]).transform("nunique")
    several = spans.fillna(0) > 1
    suffix = " (host " + hosts[several] + ")"
    frame.loc[several, "path"] = frame.loc[several, "path"].astype(str) + suffix
    frame.loc[several, "family"] = frame.loc[several, "family"].astype(str) + suffix
    frame.loc[several, "device"] = frame.loc[several, "device"].astype(str) + ", host " + hosts[several]
    return frame


def join_quality(runs: pd.DataFrame) -> pd.DataFrame:
    """Fill each path's accuracy from a run of the identical quality-relevant configuration.

    A run that trained (or reused a training) carries its accuracy; another run with the same quality key
    (harness/core/keys.py: representation, dataset, model, training, seed; not the backend) and the same
    numerics (compute precision and table storage) takes it from there: a bf16 or int8 path is scored with
    the accuracy measured in its own precision, a dhe[k=512] path never with dhe's. A path with no such run
    keeps no accuracy: it is never given one.
    """
    runs = runs.copy()
    rated = runs[runs["accuracy"].notna() & (runs["status"] == "FINISHED")].sort_values("start_time")
    if rated.empty:
        return runs
    by_key = (rated.dropna(subset=["quality_key"]).groupby(["quality_key",
                                                            "numerics"])["accuracy"].last().to_dict())
    missing = runs["accuracy"].isna()
    for i in runs.index[missing]:
        key, numerics = runs.at[i, "quality_key"], runs.at[i, "numerics"]
        accuracy = by_key.get((key, numerics)) if isinstance(key, str) else None
        if accuracy is not None:
            runs.at[i, "accuracy"] = accuracy
    return runs
