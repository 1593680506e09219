"""Sweeps through a real Slurm cluster and a real Ray cluster into the team server, beside joblib.

    python -m benchmarks.clusters                    # 3 rounds x 16 jobs each way, then the fault rounds
    python -m benchmarks.clusters --rounds 1 --jobs 6 --launchers ray

Every cluster is this machine's (scripts/local_cluster.sh: loopback only), the store a team server
(scripts/team_server.sh: PostgreSQL + mlflow server). Per round: jobs/s and the launcher's overhead per
job, the slot-seconds a job held outside its MLflow run, `(wall x slots - sum of run durations) / jobs`
(submission, scheduling, the job's process start, imports and Hydra's composition: all that a launcher
adds to the work itself), with the same number of slots for every launcher. The fault rounds kill the
compute node (slurmd and its job steps, or the Ray worker node) once a quarter of the jobs have started,
bring it back, and audit the store: no run RUNNING, none lost, no run key twice, then the same command
again must run exactly the jobs that did not finish; for Slurm also a job `scancel`led mid-run.
Prints one JSON object: the figures, medians over rounds and ratios to joblib, the CPU's flags.
Needs root and Debian's slurm-wlm and munge for Slurm, the cluster extra for Ray, PostgreSQL for the
server (.ci/run installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.team_server import (
    EXPERIMENT,
    REPO,
    SMOKE,
    TeamServer,
    audit,
    cpu_line,
    finish,
    latency_runs,
    own_what_starts,
    start_sweep,
    stopped_on_error,
    wait_for_runs,
)

SCRIPT = REPO / "scripts" / "local_cluster.sh"
LAUNCHERS = ("joblib", "slurm", "ray")


class LocalCluster:
    """scripts/local_cluster.sh KIND in `folder`, and what a sweep needs to reach it."""

    def __init__(self, kind: str, folder: Path, cpus: int, forward: tuple[int, ...] = ()) -> None:
        self.kind, self.folder, self.cpus = kind, Path(folder), cpus
        self.forward = forward  # this machine's loopback ports the jobs reach (a Ray cluster's namespace)
        self.env: dict[str, str] = {}
        self.cancel_tries = 0  # scancels the last fault round needed to cancel a job before it finished

    def script(self, command: str, *options: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHON": sys.executable}
        return subprocess.run(["bash", str(SCRIPT), self.kind, command, *options, str(self.folder)], env=env,
                              capture_output=True, text=True, timeout=180, check=False)

    def start(self) -> None:
        ports = ",".join(map(str, self.forward))
        forward = ["--forward", ports] if ports and self.kind == "ray" else []
        proc = self.script("start", "--cpus", str(self.cpus), *forward)
        if proc.returncode != 0:
            raise RuntimeError(f"local_cluster.sh {self.kind} start failed:\n{proc.stderr[-3000:]}")
        for line in proc.stdout.splitlines():  # export NAME=value [NAME=value ...]
            for pair in line.removeprefix("export ").split():
                name, value = pair.split("=", 1)
                self.env[name] = value

    def driver(self, command: list[str]) -> list[str]:
        """`command` as it must run to drive this cluster: a Ray sweep inside the cluster's network
        namespace (scripts/local_cluster.sh ray exec), a Slurm sweep as it is."""
        if self.kind != "ray":
            return command
        return ["bash", str(SCRIPT), "ray", "exec", str(self.folder), "--", *command]

    def kill_controller(self) -> None:
        """Slurm's controller dies (SIGKILL) and stays down: nobody can say the jobs' states any more."""
        proc = self.script("kill-controller")
        if proc.returncode != 0:
            raise RuntimeError(f"local_cluster.sh {self.kind} kill-controller failed:\n{proc.stderr[-2000:]}")

    def kill_node(self) -> None:
        proc = self.script("kill-node")
        if proc.returncode != 0:
            raise RuntimeError(f"local_cluster.sh {self.kind} kill-node failed:\n{proc.stderr[-2000:]}")

    def stop(self) -> None:
        proc = self.script("stop")
        if proc.returncode != 0:  # what it could not stop is found by its mark (python -m harness.leftovers)
            raise RuntimeError(f"local_cluster.sh {self.kind} stop failed:\n{proc.stderr[-3000:]}")


def sweep_command(launcher: str, seeds: range, folder: Path, slots: int, *extra: str) -> list[str]:
    """A smoke sweep of `seeds` through `launcher`, `slots` jobs at a time (one CPU each)."""
    options = {
        "joblib": [f"hydra.launcher.n_jobs={slots}"],
        # One CPU a job, so `slots` jobs share the node as Ray's do (the default is one job per node).
        "slurm": ["hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
                  "~hydra.launcher.additional_parameters.exclusive", "hydra.launcher.timeout_min=20"],
        "ray": ["hydra.launcher.remote.num_cpus=1"],
    }[launcher]
    return [sys.executable, "-m", "harness", "-m", *SMOKE, "backend.num_threads=1",
            "seed=" + ",".join(map(str, seeds)), f"hydra/launcher={launcher}", *options, "isolate=never",
            "analysis_after_sweep=false", f"tracking.results_dir={folder}",
            f"hydra.sweep.dir={folder}/sweep", *extra]


def run_seconds(uri: str, seeds: range) -> list[float]:
    """How long each of these jobs' FINISHED runs lasted (MLflow's start to end)."""
    return [(r.info.end_time - r.info.start_time) / 1000 for r in latency_runs(uri, seeds)
            if r.info.status == "FINISHED" and r.info.end_time]


def statuses(folder: Path) -> Counter:
    """The sweep's job statuses, as its job_status.json files say."""
    return Counter(json.loads(p.read_text())["status"] for p in (folder / "sweep").rglob("job_status.json"))


def load_round(launcher: str, server: TeamServer, cluster: LocalCluster | None, seeds: range, slots: int,
               work: Path) -> dict:
    name = f"{launcher}-{seeds.start}"
    command = sweep_command(launcher, seeds, work / name, slots)
    env = {**server.client_env(), **(cluster.env if cluster else {})}
    t0 = time.perf_counter()
    proc = start_sweep(cluster.driver(command) if cluster else command, env, work / f"{name}.calls.jsonl",
                       work / name)
    with stopped_on_error(proc):
        err = finish(proc, work, name)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:  # a failed sweep's jobs/s would be nonsense: never handed on as a figure
        raise RuntimeError(f"the {launcher} sweep {name} exited {proc.returncode}:\n{err[-3000:]}")
    inside = run_seconds(server.uri, seeds)
    return {"launcher": launcher, "exit": proc.returncode, "seconds": wall, "jobs_per_s": len(seeds) / wall,
            "overhead_per_job_s": (wall * slots - sum(inside)) / len(seeds),
            "run_s_median": statistics.median(inside) if inside else None, **audit(server.uri, seeds)}


def fault_round(cluster: LocalCluster, server: TeamServer, seeds: range, slots: int, work: Path,
                fault: str = "node", tries: int = 2) -> dict:
    """A sweep whose node dies (or whose running job is cancelled) once a quarter of its jobs started;
    then the same command again.

    A node loss the first sweep came through with every job finished proves nothing (fault_checks says so):
    seen once in CI with Ray, the killed job's run marked stale and the job run again to the end within
    the same sweep. Such a try is kept in `missed` (its audit and why each FAILED run failed) and the round
    is tried again on fresh seeds, up to `tries`; `fault_tries` says how many it took."""
    if tries < 1:
        raise ValueError(f"a fault round needs at least one try, got {tries}")
    missed: list[dict] = []
    attempt = 0
    for attempt in range(tries):
        shifted = range(seeds.start + 1000 * attempt, seeds.stop + 1000 * attempt)
        out = _fault_once(cluster, server, shifted, slots, work, fault)
        if fault != "node" or out["not_finished"] >= 1:
            break
        missed.append({"seeds": f"{shifted.start}-{shifted.stop - 1}", "first": out["first"],
                       "after": out["after"], "failed_why": failed_why(server.uri, shifted)})
    return {**out, "fault_tries": attempt + 1, "missed": missed}


def failed_why(uri: str, seeds: range) -> list[str]:
    """The error tag of each FAILED run of these jobs (lost by the launcher, or marked stale by a rerun)."""
    return [r.data.tags.get("error", "")[:200] for r in latency_runs(uri, seeds) if r.info.status == "FAILED"]


def _fault_once(cluster: LocalCluster, server: TeamServer, seeds: range, slots: int, work: Path,
                fault: str) -> dict:
    name = f"{cluster.kind}-{fault}-{seeds.start}"
    cluster.cancel_tries = 0
    # Runs of 8 s or more, so the fault lands mid-run: a cancelled Slurm job has KillWait (5 s) to end
    # after SIGTERM (which submitit ignores) before SIGKILL, and a short run would finish in it.
    # A cancelled job's SIGTERM is ignored by submitit and its SIGKILL comes KillWait (5 s) later: a job
    # cancelled with less than that left finishes its work (seen: CANCELLED, yet its result came back and
    # its run FINISHED), so the scancel round's runs are long enough to outlive KillWait
    timing = ["measure.min_time_s=12", "measure.max_time_s=20"] if fault == "scancel" else \
        ["measure.min_time_s=4", "measure.max_time_s=10"]
    command = cluster.driver(sweep_command(cluster.kind, seeds, work / name, slots, *timing))
    env = {**server.client_env(), **cluster.env}
    proc = start_sweep(command, env, work / f"{name}.calls.jsonl", work / name)
    with stopped_on_error(proc):
        wait_for_runs(server.uri, seeds, max(1, len(seeds) // 4), proc)
        if fault == "node":
            cluster.kill_node()
            time.sleep(2)
            cluster.start()
        else:
            cancel_one_running(cluster)
        finish(proc, work, name)
    first = {"exit": proc.returncode, **audit(server.uri, seeds), "statuses": dict(statuses(work / name))}
    lost = first["jobs"] - first["finished"]
    again = start_sweep(command, env, work / f"{name}-again.calls.jsonl", work / f"{name}-again")
    with stopped_on_error(again):
        finish(again, work, f"{name}-again")
    # The rerun writes to the same sweep folder: its statuses replace the first sweep's
    after = statuses(work / name)
    out = {"launcher": cluster.kind, "fault": fault, "cancel_tries": cluster.cancel_tries, "first": first,
           "not_finished": lost,
           "rerun_exit": again.returncode, "rerun_ran": after["finished"], "rerun_skipped": after["skipped"],
           "after": audit(server.uri, seeds)}
    return {**out, "failed_checks": fault_checks(out, len(seeds))}


def fault_checks(r: dict, jobs: int) -> list[str]:
    """What a fault round promised and did not keep (empty: all kept). A round whose fault missed (every
    job finished) proves nothing and says so, rather than passing as '0 lost'."""
    first, after = r["first"], r["after"]
    checks = {
        "the fault landed (a job did not finish)": r["not_finished"] >= 1,
        "no run left RUNNING": first["running"] == 0 and after["running"] == 0,
        "no run key twice": first["duplicated_keys"] == 0 and after["duplicated_keys"] == 0,
        "every unfinished job recorded failed or killed":
            first["statuses"].get("failed", 0) + first["statuses"].get("killed", 0) == r["not_finished"],
        "the rerun ran exactly the unfinished jobs":
            (r["rerun_exit"], r["rerun_ran"], r["rerun_skipped"])
            == (0, r["not_finished"], jobs - r["not_finished"]),
        "all finished after the rerun, none lost": (after["finished"], after["lost"]) == (jobs, 0),
    }
    if r["fault"] == "scancel":
        checks["the cancelled job recorded killed"] = first["statuses"].get("killed") == 1
    return [name for name, ok in checks.items() if not ok]


def cancel_one_running(cluster: LocalCluster, tries: int = 5) -> str:
    """scancel the sweep's running job that started last (the one with the most of its run left), its id.
    A cancelled job has KillWait (5 s) after SIGTERM before SIGKILL; one that ends its work in it ends
    COMPLETED with a result, a finished job (seen here: 8/8 FINISHED): then the next running job is
    cancelled, so the fault lands, and the figures say how many tries it took (`cancel_tries`)."""
    env = {**os.environ, **cluster.env}
    for attempt in range(1, tries + 1):
        job = _running_started_last(env)
        subprocess.run(["scancel", job], env=env, check=True, timeout=30)
        state = _ended_state(job, env)
        if state.startswith("CANCELLED"):
            cluster.cancel_tries = attempt
            return job
    raise RuntimeError(f"{tries} cancelled jobs all ended their work before Slurm killed them")


def _running_started_last(env: dict[str, str]) -> str:
    for _ in range(150):
        out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i", "-S", "-S"], env=env,
                             capture_output=True, text=True, check=True, timeout=30).stdout.split()
        if out:
            return out[0]
        time.sleep(0.2)
    raise RuntimeError("no running Slurm job to cancel")


def _ended_state(job: str, env: dict[str, str], timeout_s: float = 60.0) -> str:
    """The job's state once it has left RUNNING and COMPLETING (scontrol; MinJobAge keeps it known)."""
    deadline = time.monotonic() + timeout_s
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True,
                             timeout=30).stdout
        state = next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "UNKNOWN")
        if state not in ("RUNNING", "COMPLETING", "UNKNOWN"):
            return state
        time.sleep(0.5)
    return state


def summary(rounds: list[dict]) -> dict:
    by = {name: [r for r in rounds if r["launcher"] == name] for name in LAUNCHERS}
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in ("jobs_per_s", "overhead_per_job_s")}
               for name, rs in by.items() if rs}
    base = medians.get("joblib")
    if base:
        for m in medians.values():
            m["jobs_per_s_vs_joblib"] = m["jobs_per_s"] / base["jobs_per_s"]
            m["overhead_vs_joblib"] = m["overhead_per_job_s"] / base["overhead_per_job_s"]
    return medians


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clusters", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--slots", type=int, default=2, help="jobs at a time (one CPU each)")
    parser.add_argument("--launchers", default=",".join(LAUNCHERS))
    parser.add_argument("--no-faults", action="store_true", help="skip the node-loss and scancel rounds")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = _arguments(argv)
    own_what_starts()
    launchers = [name for name in args.launchers.split(",") if name]
    work = Path(tempfile.mkdtemp(prefix="mprec-clusters-", dir="/tmp"))
    work.chmod(0o711)  # PostgreSQL runs as `postgres` and must enter its folder
    server = TeamServer(work / "server", workers=2)
    clusters = {k: LocalCluster(k, work / k, args.slots, forward=(server.port,)) for k in launchers
                if k != "joblib"}
    figures: dict = {"cpu": cpu_line(), "jobs": args.jobs, "slots": args.slots, "rounds": [], "faults": []}
    try:
        server.start()
        for cluster in clusters.values():
            cluster.start()
        seed = 0
        for _ in range(args.rounds):
            for name in launchers:  # side by side: each round runs every launcher once
                figures["rounds"].append(load_round(name, server, clusters.get(name),
                                                    range(seed, seed + args.jobs), args.slots, work))
                seed += args.jobs
        figures["summary"] = summary(figures["rounds"])
        if not args.no_faults:
            for name, cluster in clusters.items():
                figures["faults"].append(fault_round(cluster, server, range(seed, seed + args.jobs),
                                                     args.slots, work))
                seed += args.jobs
                if name == "slurm":
                    figures["faults"].append(fault_round(cluster, server, range(seed, seed + args.jobs),
                                                         args.slots, work, fault="scancel"))
                    seed += args.jobs
    finally:
        for cluster in clusters.values():
            cluster.stop()
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    figures["experiment"] = EXPERIMENT
    print(json.dumps(figures, indent=2))
    for r in figures["faults"]:
        for check in r["failed_checks"]:
            print(f"FAILED: {r['launcher']} {r['fault']} round: {check}", file=sys.stderr)
    return figures


if __name__ == "__main__":
    sys.exit(1 if any(r["failed_checks"] for r in main()["faults"]) else 0)
