"""Two revisions of the harness side by side: the same measured runs and dry runs, alternated A B A B.

    python -m benchmarks.revisions 45f94de HEAD                     # the default paths below, 3 rounds
    python -m benchmarks.revisions v1 v2 --rounds 5 -- representation=dhe dataset.scale=0.01

For a refactor that must not change what is measured (issue 14) or a change that should speed the harness
up: each revision is checked out into its own git worktree (committed code only) and runs
`python -m harness` from there with its own MLflow store, the two alternating round by round so drift of
the machine falls on both. Reported per path and query size: the median over rounds of each revision's
p50 latency and the ratio B / A; and the dry run's wall time (process start to exit, median of all).
Writes results/benchmarks/revisions.json with the environment.
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
from harness.core.schema import TrackingConfig
from harness.tracking import Store

# Measured paths of the default comparison: the table and DHE paths on a small Kaggle shape, four sizes.
DEFAULT_RUNS = [
    ["+backend=cpu", "representation=table", "dataset.scale=0.01", "workload.query_sizes=[1,64,1024,4096]"],
    ["+backend=cpu", "representation=dhe", "dataset.scale=0.01", "workload.query_sizes=[1,64,1024]"],
]
COMMON = ["measure.min_time_s=1.0", "measure.device_peaks=false", "force=true"]


def worktree(repo: Path, revision: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(into), revision], check=True,
                   capture_output=True, text=True)
    return into


def harness(checkout: Path, args: list[str], store: str, results: Path, timeout: float = 1800) -> float:
    """`python -m harness <args>` run from `checkout` (its own package first on sys.path); wall seconds."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(checkout)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", *args, f"tracking.results_dir={results}",
                           "hydra.run.dir=" + str(results / "hydra")],
                          cwd=checkout, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{checkout}: python -m harness {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def p50_by_path(store: str) -> dict[str, dict[int, float]]:
    """Each latency run's p50 per query size, by path (the latest run of a path wins)."""
    tracking = TrackingConfig(uri=store, results_dir="unused", parent_run_id=None, retry_s=120,
                              request_timeout_s=60)
    records = sorted(Store(tracking, "mprec", create=False).load_runs(), key=lambda r: r["start_time"])
    return {r["tags"]["path"]: r["per_size"]["latency_p50_ms"] for r in records if r["status"] == "FINISHED"}


def compare(repo: Path, revisions: tuple[str, str], runs: list[list[str]], rounds: int,
            dry_runs: int) -> dict:
    samples = {rev: {} for rev in revisions}  # rev -> (path, size) -> [p50 per round]
    dry = {rev: [] for rev in revisions}
    with tempfile.TemporaryDirectory() as tmp:
        checkouts = {rev: worktree(repo, rev, Path(tmp) / f"rev{i}") for i, rev in enumerate(revisions)}
        try:
            for r in range(rounds):
                for rev, checkout in checkouts.items():
                    results = Path(tmp) / f"results-{rev}-{r}"
                    store = f"sqlite:///{results / 'mlflow.db'}"
                    results.mkdir(parents=True)
                    for _ in range(dry_runs):
                        dry[rev].append(harness(checkout, ["dry_run=true"], store, results, 120))
                    for args in runs:
                        harness(checkout, [*args, *COMMON], store, results)
                    for path, sizes in p50_by_path(store).items():
                        for q, v in sizes.items():
                            samples[rev].setdefault((path, q), []).append(v)
                    print(f"round {r + 1}/{rounds}: {rev} done", file=sys.stderr)
        finally:
            for checkout in checkouts.values():
                subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(checkout)],
                               capture_output=True)
    a, b = revisions
    rows = []
    for key in sorted(set(samples[a]) & set(samples[b])):
        ma, mb = statistics.median(samples[a][key]), statistics.median(samples[b][key])
        rows.append({"path": key[0], "query_size": key[1], "a_p50_ms": ma, "b_p50_ms": mb,
                     "b_over_a": mb / ma, "a_rounds_ms": samples[a][key], "b_rounds_ms": samples[b][key]})
    return {"a": a, "b": b, "rounds": rounds, "runs": [[*args, *COMMON] for args in runs], "latency": rows,
            "dry_run_s": {rev: statistics.median(v) for rev, v in dry.items()}, "dry_run_samples_s": dry}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1:] if "--" in argv else None
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", help="the reference revision (a commit, tag or branch)")
    parser.add_argument("b", nargs="?", default="HEAD")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dry-runs", type=int, default=2, help="dry runs per revision and round")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    repo = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                               check=True).stdout.strip())
    runs = [["+backend=cpu", *overrides]] if overrides else DEFAULT_RUNS
    figures = compare(repo, (args.a, args.b), runs, args.rounds, args.dry_runs)
    print(f"{'path':14s} {'q':>5s} {args.a + ' p50 ms':>16s} {args.b + ' p50 ms':>16s} {'B/A':>6s}")
    for row in figures["latency"]:
        print(f"{row['path']:14s} {row['query_size']:5d} {row['a_p50_ms']:16.3f} {row['b_p50_ms']:16.3f} "
              f"{row['b_over_a']:6.3f}")
    ratios = [row["b_over_a"] for row in figures["latency"]]
    if ratios:
        figures["median_b_over_a"] = statistics.median(ratios)
        print(f"median B/A over {len(ratios)} (path, size) pairs: {figures['median_b_over_a']:.3f}")
    d = figures["dry_run_s"]
    print(f"dry run wall time: {args.a} {d[args.a]:.2f} s, {args.b} {d[args.b]:.2f} s")
    print(f"written: {write_report('revisions', figures)}")
    return figures


if __name__ == "__main__":
    main()
