"""The harness itself: start-up of a dry run and the wall time of the default sweep.

    python -m benchmarks.harness_overhead           # the default sweep (4 paths, default scale); ~3-4 minutes
    python -m benchmarks.harness_overhead --tiny    # two jobs of the smoke experiment instead (CI)

Figures:
1. `python -m harness dry_run=true` wall time, process start to exit, median of 5 (target < 3 s: the
   dry run imports no torch model code it does not need and allocates nothing);
2. `python -m harness -m representation=table,tt,dhe,hybrid` wall time at the default scale, one run,
   in a throw-away MLflow store (target < 5 minutes here); its per-job times from the MLflow runs.
(The timing loop's own overhead per iteration is benchmarks/table_path.py's `loop_overhead_us`.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_report


def _run(args: list[str], workdir: Path, store: str, timeout: float) -> float:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", *args,
                           f"tracking.results_dir={workdir / 'results'}"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"python -m harness {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="the smoke experiment instead of the default scale")
    parser.add_argument("--dry-runs", type=int, default=5)
    args = parser.parse_args(argv)
    sweep = ["-m", "representation=table,tt,dhe,hybrid"]
    experiment_name = "smoke" if args.tiny else "mprec"
    if args.tiny:  # two seconds-long jobs: the figures' plumbing, not the target's measurement
        args.dry_runs = 2
        sweep = ["-m", "representation=table,tt", "+backend=cpu", "experiment=smoke"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        store = f"sqlite:///{workdir / 'mlflow.db'}"
        dry = [_run(["dry_run=true"], workdir, store, 120) for _ in range(args.dry_runs)]
        sweep_s = _run(sweep, workdir, store, 1800)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(store)
        experiment = client.get_experiment_by_name(experiment_name)
        jobs = {
            r.data.tags.get("mlflow.runName", r.info.run_id): (r.info.end_time - r.info.start_time) / 1e3
            for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("mprec.kind") == "latency" and r.info.end_time
        }
    figures = {
        "dry_run_s": statistics.median(dry), "dry_run_samples_s": dry,
        "sweep_command": "python -m harness " + " ".join(sweep), "sweep_s": sweep_s, "sweep_job_s": jobs,
    }
    print(f"dry run start-up: {figures['dry_run_s']:.2f} s (median of {len(dry)}; target < 3 s)")
    print(f"sweep `{figures['sweep_command']}`: {sweep_s:.1f} s (target < 300 s); jobs: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(jobs.items())))
    print(f"written: {write_report('harness_overhead', figures)}")
    return figures


if __name__ == "__main__":
    main()
