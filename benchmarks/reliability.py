"""Reliability figures of sweeps (docs/sweeps.md): nothing lost under parallel writers or faults.

    python -m benchmarks.reliability            # about 5 minutes on 2 cores

1. 8 jobs through `hydra/launcher=joblib` with 2 workers on one SQLite store, 3 times, each into a fresh
   store: runs recorded, runs lost, "database is locked" errors seen.
2. Fault injection: a sweep of 6 jobs where job 3 raises, job 4 is SIGKILLed, job 5 hangs past
   `job_timeout_s`; then the same sweep again without faults: FINISHED / FAILED counts after each, and
   how many jobs the rerun ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_report

SMOKE = ["+backend=cpu", "experiment=smoke", "experiment_name=mprec", "workload.query_sizes=[4]"]


def harness(args: list[str], store: str, folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    return subprocess.run([sys.executable, "-m", "harness", *args, f"tracking.results_dir={folder}"],
                          env=env, capture_output=True, text=True, cwd=folder)


def latency_runs(store: str) -> list:
    import mlflow

    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["mprec"], output_format="list")
    return [r for r in runs if r.data.tags.get("mprec.kind") == "latency"]


def joblib_rounds(rounds: int) -> list[dict]:
    out = []
    for i in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            store = f"sqlite:///{tmp}/mlflow.db"
            t0 = time.perf_counter()
            proc = harness(["-m", *SMOKE, "seed=0,1,2,3,4,5,6,7", "hydra/launcher=joblib",
                            "hydra.launcher.n_jobs=2", "isolate=never"], store, Path(tmp))
            runs = latency_runs(store)
            out.append({
                "round": i, "exit": proc.returncode, "jobs": 8, "runs": len(runs),
                "finished": sum(r.info.status == "FINISHED" for r in runs), "lost": 8 - len(runs),
                "locked_errors": proc.stderr.count("database is locked"),
                "seconds": time.perf_counter() - t0,
            })
    return out


def fault_injection() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        sweep = ["-m", *SMOKE, "seed=0,1,2,3,4,5"]
        t0 = time.perf_counter()
        first = harness([*sweep, "job_timeout_s=25", 'debug.fault="raise@3,kill@4,hang@5"'], store, Path(tmp))
        after_first = latency_runs(store)
        second = harness(sweep, store, Path(tmp))
        after_second = latency_runs(store)
        count = lambda runs, s: sum(r.info.status == s for r in runs)  # noqa: E731
        return {"jobs": 6, "first_exit": first.returncode, "first_finished": count(after_first, "FINISHED"),
                "first_failed": count(after_first, "FAILED"),
                "errors": sorted(r.data.tags.get("error",
                                                 "")[:80] for r in after_first if r.info.status == "FAILED"),
                "rerun_exit": second.returncode, "rerun_ran": len(after_second) - len(after_first),
                "finished_after_rerun": count(after_second, "FINISHED"), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    figures = {"joblib_sqlite": joblib_rounds(3), "fault_injection": fault_injection()}
    print("8 jobs, joblib n_jobs=2, SQLite store:")
    for r in figures["joblib_sqlite"]:
        print(f"  round {r['round']}: {r['runs']} runs ({r['finished']} FINISHED), {r['lost']} lost, "
              f"{r['locked_errors']} lock errors, {r['seconds']:.0f} s")
    f = figures["fault_injection"]
    print(
        f"fault injection, 6 jobs: {f['first_finished']} FINISHED, {f['first_failed']} FAILED "
        f"(exit {f['first_exit']})"
    )
    for e in f["errors"]:
        print(f"  {e}")
    print(
        f"  rerun ran {f['rerun_ran']} jobs (exit {f['rerun_exit']}); FINISHED now "
        f"{f['finished_after_rerun']}; {f['seconds']:.0f} s in all"
    )
    print(f"written: {write_report('reliability', figures)}")
    return figures


if __name__ == "__main__":
    main()
