"""What a run records, as comparable data: params, tag values, metric keys with their steps, artifacts.

`tests/test_records.py` runs the harness on the configs of `CASES` and compares what it records with
`tests/data/record_shapes.json`, captured from the code before the layout change of issue 14 (docs/
architecture.md): a refactor must leave every param, tag, metric and artifact of a run as it was.
Timings differ from run to run, so metrics compare by key and steps; values that name this machine, this
checkout or this moment (git SHA, device name, run ids, heartbeats, thread counts) compare by presence.

Regenerate (only when a change of the records is intended, and say so in the commit):
    python -m tests.record_shape tests/data/record_shapes.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# name -> overrides of `python -m harness` (each with +backend=cpu experiment=smoke experiment_name=mprec
# and its own results dir)
CASES: dict[str, list[str]] = {
    "table": ["measure.device_peaks=true", "measure.peaks_scale=0.01"],
    "dhe_cache_trained": ["representation=dhe", "representation.k=16", "representation.decoder=[16,8]",
                          "representation.cache.rows=8", "train.steps=4", "train.eval_every=2",
                          "train.log_every=2", "train.eval_samples=64", "train.batch_size=32"],
    "failed": ["debug.fault=raise"],
    "isolated": ["isolate=always"],
}
# Values that depend on the machine, the checkout or the moment: compared by presence only.
VOLATILE_TAGS = {
    "git_sha",
    "git_dirty",
    "device_name",
    "mprec.owner",
    "mprec.heartbeat",
    "quality_source_run",
    "mlflow.runName",
    "mlflow.user",
    "mlflow.source.name",
    "mlflow.source.type",
    "mlflow.source.git.commit",
    "mlflow.parentRunId",
    "mprec.create_token",
}
VOLATILE_PARAMS = {"tracking.results_dir", "tracking.uri", "backend_resolved.num_threads",
                   "backend_resolved.interop_threads", "backend_resolved.allocator"}  # glibc: retain
ERROR_TAG = "error"  # its first line is compared (the message), not the traceback


def shape_of(client, run) -> dict:
    """The comparable record of one MLflow run."""
    tags = {}
    for key, value in run.data.tags.items():
        tags[key] = "<present>" if key in VOLATILE_TAGS else value
    if ERROR_TAG in tags:
        tags[ERROR_TAG] = tags[ERROR_TAG].splitlines()[0]
    params = {k: ("<present>" if k in VOLATILE_PARAMS else v) for k, v in run.data.params.items()}
    metrics = {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
               for key in run.data.metrics}
    artifacts: list[str] = []

    def walk(path: str | None) -> None:
        for entry in client.list_artifacts(run.info.run_id, path):
            walk(entry.path) if entry.is_dir else artifacts.append(entry.path)

    walk(None)
    # The plan (analytic cost, representation details, run key) is deterministic: compared in full.
    with tempfile.TemporaryDirectory() as tmp:
        plan = json.loads(Path(client.download_artifacts(run.info.run_id, "cost.json", tmp)).read_text())
    for key in ("device_capacity_bytes", "fits_device", "fits_device_per_query_size"):
        plan.pop(key, None)  # the machine's memory
    return {"status": run.info.status, "params": params, "tags": tags, "metrics": metrics,
            "artifacts": sorted(artifacts), "plan": plan}


def record(case: str, folder: Path, env: dict | None = None) -> dict:
    """Run one case in `folder` with its own SQLite store; the shape of its one latency run."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{folder / 'mlflow.db'}"
    environ = {**(env or os.environ), "MLFLOW_TRACKING_URI": store, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-m", "harness", "+backend=cpu", "experiment=smoke",
                    "experiment_name=mprec", *CASES[case], f"tracking.results_dir={folder / 'results'}"],
                   cwd=folder, env=environ, capture_output=True, text=True, timeout=600)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("mprec")
    runs = client.search_runs([experiment.experiment_id], "tags.`mprec.kind` = 'latency'")
    if len(runs) != 1:
        raise AssertionError(f"case {case}: expected one latency run, found {len(runs)}")
    return shape_of(client, runs[0])


def main(out: str) -> int:
    shapes = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            shapes[case] = record(case, Path(tmp))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(shapes, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: {', '.join(shapes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
