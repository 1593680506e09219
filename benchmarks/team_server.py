"""Team-scale tracking figures (docs/sweeps.md): an MLflow server on PostgreSQL under parallel load and
faults, beside the SQLite store, measured side by side in one run.

    python -m benchmarks.team_server                                  # about 12 minutes on 2 cores
    python -m benchmarks.team_server --rounds 1 --jobs 8 --workers 4  # a quick look

1. The team server, started by scripts/team_server.sh in a temporary folder.
2. Load: `--rounds` rounds of `--jobs` short jobs (experiment=smoke, query size 4, `isolate=never`)
   through `hydra/launcher=joblib` with `--workers` workers, each round into the server and then into
   one SQLite store: jobs/s (the sweep command's wall time, start-up included), the p50/p95 of the
   harness's MLflow calls (MPREC_TRACKING_CALL_LOG), and through the MLflow client: every run FINISHED
   with its metric history and raw-samples artifact; runs lost; run keys recorded twice.
3. Server restart: one more round in which the mlflow server is SIGKILLed once a quarter of the runs
   exist, and started again by the script after `--down-s`: the same checks, nothing left RUNNING.
4. Database outage past the bound: one more round with `tracking.retry_s=--outage-retry-s`, PostgreSQL
   stopped (`pg_ctl -m immediate`) for `--outage-s` once a quarter of the runs exist: the jobs that
   cannot reach it within the bound fail (recorded FAILED, or left RUNNING with their log saying so);
   the same command again reruns exactly those, and every job ends FINISHED once, nothing RUNNING.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import write_report
from harness.core import processes

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "team_server.sh"
EXPERIMENT = "mprec"
SMOKE = ["+backend=cpu", "experiment=smoke", f"experiment_name={EXPERIMENT}", "workload.query_sizes=[4]"]


def pg_bin() -> Path | None:
    """PostgreSQL's bin folder, found as scripts/team_server.sh finds it; None where it is not installed."""
    candidates = [os.environ.get("PG_BIN", "")]
    try:
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False,
                               timeout=30)
        candidates.append(found.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: float(p.parent.name),
                      reverse=True)
    candidates += [str(p) for p in versions] + [str(Path(shutil.which("initdb") or "/").parent)]
    return next((Path(c) for c in candidates if c and (Path(c) / "initdb").is_file()), None)


def own_what_starts() -> None:
    """Mark this benchmark as the owner of the servers and clusters it starts (harness/core/processes.py):
    if it is killed, the next start, pytest run or `python -m harness.leftovers reap` stops them. Under
    pytest the session already owns them."""
    os.environ.setdefault(processes.OWNER_ENV, processes.identity())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TeamServer:
    """scripts/team_server.sh in `folder` (PostgreSQL + mlflow server), and the faults done to it."""

    def __init__(self, folder: Path, workers: int = 1, auth: bool = False) -> None:
        self.folder, self.workers, self.auth = Path(folder), workers, auth
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.script_output = ""

    def script(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHON": sys.executable}
        proc = subprocess.run(["bash", str(SCRIPT), *args, str(self.folder)], env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        self.script_output += proc.stdout + proc.stderr
        return proc

    def start(self) -> float:
        """Start (or restart what is down); the seconds it took until the server answered."""
        t0 = time.perf_counter()
        created = (self.folder / "server.conf").is_file()  # then the script remembers the options
        options = [] if created else ["--port", str(self.port), "--workers", str(self.workers),
                                      *(["--auth"] if self.auth else [])]
        proc = self.script("start", *options)
        if proc.returncode != 0:
            raise RuntimeError(f"team_server.sh start failed:\n{proc.stderr[-3000:]}")
        return time.perf_counter() - t0

    def stop(self) -> None:
        proc = self.script("stop")
        if proc.returncode != 0:  # what it could not stop is found by its mark (python -m harness.leftovers)
            raise RuntimeError(f"team_server.sh stop failed:\n{proc.stderr[-3000:]}")

    def client_env(self) -> dict[str, str]:
        env = {"MLFLOW_TRACKING_URI": self.uri}
        if self.auth:
            env.update(MLFLOW_TRACKING_USERNAME="admin",
                       MLFLOW_TRACKING_PASSWORD=(self.folder / "admin_password").read_text().strip())
        return env

    def kill_mlflow(self) -> None:
        """SIGKILL the mlflow server's whole process group, as a crash or the OOM killer would."""
        os.killpg(int((self.folder / "mlflow.pid").read_text()), signal.SIGKILL)

    def stop_postgres(self) -> None:
        """PostgreSQL gone at once (no checkpoint, connections cut), as a crash would leave it."""
        owner = (self.folder / "pgdata").owner()
        command = [str(pg_bin() / "pg_ctl"), "-D", str(self.folder / "pgdata"), "-m", "immediate", "-w",
                   "stop"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", owner, "--", *command]
        subprocess.run(command, capture_output=True, check=True, cwd="/", timeout=120)

    def secrets(self) -> list[str]:
        """The database password, and the admin's where basic-auth is on."""
        found = [(self.folder / "pgpass").read_text().strip().rsplit(":", 1)[1]]
        if self.auth:
            found.append((self.folder / "admin_password").read_text().strip())
        return found


def sweep_command(seeds: range, workers: int, folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "-m", *SMOKE, "seed=" + ",".join(map(str, seeds)),
            "hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}", "isolate=never",
            "analysis_after_sweep=false", f"tracking.results_dir={folder}", *extra]


def start_sweep(command: list[str], store_env: dict[str, str], calls: Path, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(store_env, TF_CPP_MIN_LOG_LEVEL="3", MPREC_TRACKING_CALL_LOG=str(calls))
    cwd.mkdir(parents=True, exist_ok=True)
    # Its own process group: a sweep left behind by a failed check is stopped whole, joblib's workers too.
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


@contextlib.contextmanager
def stopped_on_error(proc: subprocess.Popen):
    """While a fault is injected into a running sweep: if anything fails, the sweep does not outlive it."""
    try:
        yield proc
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise


SWEEP_TIMEOUT_S = 900.0  # no sweep here takes 5 minutes; one past this is hung, and is stopped


def finish(proc: subprocess.Popen, work: Path, name: str, timeout_s: float = SWEEP_TIMEOUT_S) -> str:
    """Wait for a sweep, at most `timeout_s` (then it is killed whole and this raises); its output is kept
    beside its results (searched for passwords); its stderr."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise TimeoutError(f"the sweep {name} ran past {timeout_s:g} s and was killed") from None
    (work / f"{name}.stdout").write_text(out)
    (work / f"{name}.stderr").write_text(err)
    return err


def latency_runs(uri: str, seeds: range | None = None) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], "tags.`mprec.kind` = 'latency'",
                                  max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    wanted = {str(s) for s in seeds} if seeds is not None else None
    return [r for r in runs if wanted is None or r.data.params.get("seed") in wanted]


def audit(uri: str, seeds: range) -> dict:
    """What the store holds of these jobs: runs by status, lost, keys recorded twice, missing records."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = latency_runs(uri, seeds)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    keys = Counter(r.data.tags.get("run_key") for r in finished)
    incomplete = 0
    for run in finished:
        history = [m.step for m in client.get_metric_history(run.info.run_id, "latency_p50_ms")]
        samples = [f.path for f in client.list_artifacts(run.info.run_id, "samples")]
        incomplete += history != [4] or "samples/latency_raw.csv" not in samples
    statuses = Counter(r.info.status for r in runs)
    return {"jobs": len(seeds), "runs": len(runs), "finished": len(finished), "failed": statuses["FAILED"],
            "running": statuses["RUNNING"], "lost": len(seeds) - len(keys),
            "duplicated_keys": sum(n > 1 for n in keys.values()), "incomplete": incomplete}


def call_stats(*files: Path) -> dict:
    """The harness's MLflow calls logged in `files` (MPREC_TRACKING_CALL_LOG): count, p50/p95, retries."""
    rows = [json.loads(line) for f in files if f.is_file() for line in f.read_text().splitlines()]
    seconds = sorted(r["s"] for r in rows)
    if not seconds:
        return {"calls": 0}
    pick = lambda q: seconds[min(len(seconds) - 1, int(q * len(seconds)))]  # noqa: E731
    return {"calls": len(rows), "p50_ms": 1000 * statistics.median(seconds), "p95_ms": 1000 * pick(0.95),
            "max_s": seconds[-1], "retried": sum(r["tries"] > 1 for r in rows),
            "gave_up": sum(not r["ok"] for r in rows)}


def load_round(name: str, store_env: dict, uri: str, seeds: range, workers: int, work: Path) -> dict:
    calls = work / f"{name}.calls.jsonl"
    t0 = time.perf_counter()
    proc = start_sweep(sweep_command(seeds, workers, work / name), store_env, calls, work / name)
    err = finish(proc, work, name)
    seconds = time.perf_counter() - t0
    return {"store": name.split("-")[0], "exit": proc.returncode, "seconds": seconds,
            "calls_file": str(calls),
            "jobs_per_s": len(seeds) / seconds, **audit(uri, seeds), **call_stats(calls),
            "lock_errors_logged": err.count("database is locked")}


def wait_for_runs(uri: str, seeds: range, count: int, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until `count` of these jobs' runs exist: the moment to inject a fault into a sweep under way."""
    deadline = time.time() + timeout_s
    while len(latency_runs(uri, seeds)) < count:
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"no {count} runs to inject the fault at:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.2)


def faulted_sweep(server: TeamServer, command: list[str], seeds: range, work: Path, name: str,
                  fault, back_after_s: float) -> tuple[subprocess.Popen, float, str, Path]:
    """Run a sweep, apply `fault` to the server once a quarter of its runs exist, bring the server back
    after `back_after_s`; returns the sweep's process, how long the server was down, its stderr and the
    call log."""
    calls = work / f"{name}.calls.jsonl"
    proc = start_sweep(command, server.client_env(), calls, work / name)
    with stopped_on_error(proc):
        wait_for_runs(server.uri, seeds, max(1, len(seeds) // 4), proc)
        began = time.perf_counter()
        fault()
        time.sleep(back_after_s)
        server.start()
        down = time.perf_counter() - began
        err = finish(proc, work, name)
    return proc, down, err, calls


def restart_round(server: TeamServer, seeds: range, workers: int, work: Path, down_s: float) -> dict:
    t0 = time.perf_counter()
    proc, down, err, calls = faulted_sweep(server, sweep_command(seeds, workers, work / "restart"), seeds,
                                           work, "restart", server.kill_mlflow, down_s)
    seconds = time.perf_counter() - t0
    return {"exit": proc.returncode, "seconds": seconds, "server_down_s": down, **audit(server.uri, seeds),
            **call_stats(calls), "retry_warnings": err.count("retrying")}


def outage_round(server: TeamServer, seeds: range, workers: int, work: Path, retry_s: float,
                 outage_s: float) -> dict:
    from harness.tracking.environment import process_alive

    command = sweep_command(seeds, workers, work / "outage", f"tracking.retry_s={retry_s:g}")
    proc, down, err, calls = faulted_sweep(server, command, seeds, work, "outage", server.stop_postgres,
                                           outage_s)
    first = {"exit": proc.returncode, "db_down_s": down, **audit(server.uri, seeds), **call_stats(calls),
             "gave_up_logged": err.count("gave up")}
    # Resuming means running the same command later: the jobs' processes are gone by then.
    owners = [r.data.tags.get("mprec.owner", "") for r in latency_runs(server.uri, seeds)
              if r.info.status == "RUNNING"]
    deadline = time.time() + 60
    while any(process_alive(o) for o in owners) and time.time() < deadline:
        time.sleep(0.5)
    before = len(latency_runs(server.uri, seeds))
    rerun = start_sweep(command[:-1], server.client_env(), work / "resume.calls.jsonl", work / "outage")
    finish(rerun, work, "resume")
    after = audit(server.uri, seeds)
    return {"retry_s": retry_s, "first_pass": first, "rerun_exit": rerun.returncode,
            "rerun_ran": len(latency_runs(server.uri, seeds)) - before, "after_rerun": after}


def cpu_line() -> str:
    """The CPU as lscpu names it, its logical cores and the vector flags that matter here."""
    from harness.core.host import cpu_model_name, numeric_flags

    return (
        f"{cpu_model_name()}, {os.cpu_count()} logical cores, flags: {' '.join(numeric_flags()) or 'no avx2'}"
    )


def summary(rounds: list[dict]) -> dict:
    """All rounds of one store: jobs/s over the total time, and the calls of every round pooled."""
    calls = call_stats(*(Path(r["calls_file"]) for r in rounds))
    total = lambda key: sum(r[key] for r in rounds)  # noqa: E731
    return {"rounds": len(rounds), "jobs": total("jobs"), "jobs_per_s": total("jobs") / total("seconds"),
            "calls": calls["calls"], "call_p50_ms": calls["p50_ms"], "call_p95_ms": calls["p95_ms"],
            "lost": total("lost"), "duplicated_keys": total("duplicated_keys"),
            "incomplete": total("incomplete"), "not_finished": total("jobs") - total("finished")}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--workers", type=int, default=8, help="joblib workers (hydra.launcher.n_jobs)")
    parser.add_argument("--server-workers", type=int, default=1,
                        help="the mlflow server's worker processes (scripts/team_server.sh: why 1)")
    parser.add_argument("--down-s", type=float, default=5.0, help="the killed server stays down this long")
    parser.add_argument("--outage-retry-s", type=float, default=5.0,
                        help="tracking.retry_s in the outage round")
    parser.add_argument("--outage-s", type=float, default=20.0, help="PostgreSQL stays down this long")
    parser.add_argument("--auth", action="store_true", help="the server behind MLflow's basic-auth app")
    parser.add_argument("--no-faults", action="store_true")
    return parser.parse_args(argv)


def _load_rounds(args: argparse.Namespace, server: "TeamServer", sqlite: str,
                 work: Path) -> dict[str, list[dict]]:
    """The same load on PostgreSQL and SQLite, alternating, so both see the machine in the same state."""
    rounds: dict[str, list[dict]] = {"postgresql": [], "sqlite": []}
    for i in range(args.rounds):
        seeds = range(i * args.jobs, (i + 1) * args.jobs)
        for store, env, uri in (("postgresql", server.client_env(), server.uri),
                                ("sqlite", {"MLFLOW_TRACKING_URI": sqlite}, sqlite)):
            row = load_round(f"{store}-{i}", env, uri, seeds, args.workers, work)
            rounds[store].append(row)
            print(f"{store:<10} round {i}: {row['finished']}/{row['jobs']} FINISHED, "
                  f"{row['lost']} lost, {row['duplicated_keys']} keys twice, "
                  f"{row['jobs_per_s']:.2f} jobs/s, calls p50 {row['p50_ms']:.0f} ms "
                  f"p95 {row['p95_ms']:.0f} ms", flush=True)
    return rounds


def _fault_rounds(args: argparse.Namespace, server: "TeamServer", work: Path, figures: dict) -> None:
    """The server killed and restarted, then PostgreSQL down, each under a round of jobs."""
    n = args.rounds * args.jobs
    figures["restart"] = r = restart_round(server, range(n, n + args.jobs), args.workers, work, args.down_s)
    print(f"server killed and restarted ({r['server_down_s']:.0f} s down): "
          f"{r['finished']}/{r['jobs']} FINISHED, {r['lost']} lost, {r['running']} RUNNING, "
          f"{r['retried']} calls retried, longest {r['max_s']:.1f} s", flush=True)
    n += args.jobs
    figures["outage"] = o = outage_round(server, range(n, n + args.jobs), args.workers, work,
                                         args.outage_retry_s, args.outage_s)
    f, a = o["first_pass"], o["after_rerun"]
    print(f"PostgreSQL down {f['db_down_s']:.0f} s, retry_s={o['retry_s']:g}: "
          f"{f['finished']} FINISHED, {f['failed']} FAILED, {f['running']} RUNNING; "
          f"the rerun ran {o['rerun_ran']}: {a['finished']}/{a['jobs']} FINISHED, "
          f"{a['running']} RUNNING, {a['duplicated_keys']} keys twice", flush=True)


def main(argv: list[str] | None = None) -> dict:
    args = _arguments(argv)
    own_what_starts()
    figures: dict = {"command": " ".join(["python -m benchmarks.team_server", *(argv or sys.argv[1:])]),
                     "cpu": cpu_line(), "date": time.strftime("%Y-%m-%d"), "jobs_per_round": args.jobs,
                     "workers": args.workers, "server_workers": args.server_workers, "auth": args.auth}
    # Under /tmp, not a private temporary folder: started by root, PostgreSQL runs as `postgres`,
    # which must be able to enter the folder.
    with tempfile.TemporaryDirectory(prefix="mprec-team-", dir="/tmp") as tmp:
        work = Path(tmp)
        work.chmod(0o711)
        server = TeamServer(work / "server", workers=args.server_workers, auth=args.auth)
        figures["server_start_s"] = server.start()
        os.environ.update({k: v for k, v in server.client_env().items() if k != "MLFLOW_TRACKING_URI"})
        sqlite = f"sqlite:///{work / 'sqlite' / 'mlflow.db'}"
        (work / "sqlite").mkdir()
        from mlflow.tracking import MlflowClient

        MlflowClient(sqlite).search_experiments()  # its schema made before any round is timed
        try:
            figures["load"] = rounds = _load_rounds(args, server, sqlite, work)
            figures["summary"] = {store: summary(rows) for store, rows in rounds.items()}
            if not args.no_faults:
                _fault_rounds(args, server, work, figures)
            figures["secrets_found"] = secrets_in(server, [work], recorded_texts(server.uri))
        finally:
            server.stop()
    for store, s in figures["summary"].items():
        print(f"{store:<10} {s['jobs']} jobs: {s['jobs_per_s']:.2f} jobs/s, MLflow calls p50 "
              f"{s['call_p50_ms']:.0f} ms, p95 {s['call_p95_ms']:.0f} ms; {s['lost']} lost, "
              f"{s['duplicated_keys']} keys twice")
    found = figures["secrets_found"] or "none"
    print(f"passwords found in logs, records, artifacts or command lines: {found}")
    print(f"written: {write_report('team_server', figures)}")
    return figures


def recorded_texts(uri: str) -> list[str]:
    """Every param and tag of every run in the store, as text (artifacts are files: see secrets_in)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=50000) if experiments else []
    return [json.dumps({"params": r.data.params, "tags": r.data.tags}) for r in runs]


def secrets_in(server: TeamServer, folders: list[Path], texts: list[str]) -> list[str]:
    """Where a password shows: files under `folders` (job logs, the server's logs and artifacts), `texts`
    (recorded params and tags, captured output), the script's output, any process's command line.
    [] is the only right answer."""
    secrets = server.secrets()
    keep = {server.folder / "pgpass", server.folder / "admin_password", server.folder / "auth_secret_key"}
    found = []
    for path in (p for folder in folders for p in folder.rglob("*")):
        searched = path.is_file() and path not in keep and "pgdata" not in path.parts
        if searched and any(s in path.read_text(errors="replace") for s in secrets):
            found.append(str(path))
    found += [f"recorded or captured text #{i}" for i, text in enumerate(texts)
              if any(s in text for s in secrets)]
    if any(s in server.script_output for s in secrets):
        found.append("team_server.sh output")
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if any(s.encode() in cmdline.read_bytes() for s in secrets):
                found.append(str(cmdline))
        except OSError:
            continue
    return found


if __name__ == "__main__":
    main()
