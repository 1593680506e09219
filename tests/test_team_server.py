"""A team's tracking server for real (docs/sweeps.md): PostgreSQL and an mlflow server behind MLflow's
basic-auth app, started by scripts/team_server.sh; a parallel sweep through a server restart, a job that
cannot reach the server within tracking.retry_s and reruns on resume, and no password anywhere.

The figures at full size (3 rounds of 32 jobs with 8 workers, beside SQLite) are benchmarks/team_server.py's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks.team_server import (
    SCRIPT,
    SMOKE,
    TeamServer,
    audit,
    call_stats,
    finish,
    latency_runs,
    pg_bin,
    recorded_texts,
    secrets_in,
    start_sweep,
    stopped_on_error,
    sweep_command,
    wait_for_runs,
)


def _missing() -> str | None:
    if pg_bin() is None:
        return "PostgreSQL not installed (no initdb): .ci/run installs it (apt-get install postgresql)"
    if importlib.util.find_spec("psycopg2") is None or importlib.util.find_spec("flask_wtf") is None:
        return "the team extra is not installed: pip install -e '.[team]'"
    return None


MISSING = _missing()
needs_postgres = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def team_server():
    # Under /tmp, not pytest's private folder: started by root, PostgreSQL runs as `postgres`, which
    # must be able to enter it.
    folder = Path(tempfile.mkdtemp(prefix="mprec-team-test-", dir="/tmp"))
    folder.chmod(0o711)
    server = TeamServer(folder / "server", auth=True)
    env = pytest.MonkeyPatch()
    try:
        server.start()
        for key, value in server.client_env().items():  # this process's own checks log in too
            if key != "MLFLOW_TRACKING_URI":
                env.setenv(key, value)
        yield server
    finally:
        server.stop()
        env.undo()
        shutil.rmtree(folder, ignore_errors=True)


@needs_postgres
def test_a_parallel_sweep_loses_nothing_when_the_server_is_killed_and_restarted(team_server, tmp_path):
    seeds = range(8)
    calls = tmp_path / "calls.jsonl"
    proc = start_sweep(sweep_command(seeds, 4, tmp_path), team_server.client_env(), calls, tmp_path)
    with stopped_on_error(proc):
        wait_for_runs(team_server.uri, seeds, 2, proc)
        team_server.kill_mlflow()  # SIGKILL, mid-sweep: requests in flight die with it
        time.sleep(2)
        team_server.start()
        err = finish(proc, tmp_path, "sweep")
    assert proc.returncode == 0, err[-3000:]
    assert "8 finished, 0 skipped, 0 failed" in err
    counts = audit(team_server.uri, seeds)
    assert counts["finished"] == 8 and counts["lost"] == 0 and counts["duplicated_keys"] == 0
    assert counts["runs"] == 8 and counts["running"] == 0
    assert counts["incomplete"] == 0  # every metric history and raw-samples artifact is there
    assert "retrying" in err and "answered" in err  # the restart was felt, and ridden out
    stats = call_stats(calls)
    assert stats["retried"] >= 1 and stats["gave_up"] == 0


@needs_postgres
def test_a_job_the_server_cannot_answer_within_retry_s_says_so_and_reruns_on_resume(team_server, tmp_path):
    seed = range(100, 101)
    # isolate=never, one job: the run is the job process's own; its timing leaves seconds to stop the server.
    job = [sys.executable, "-m", "harness", *SMOKE, f"seed={seed[0]}", "isolate=never",
           "measure.min_time_s=4", "measure.max_time_s=6", f"tracking.results_dir={tmp_path}"]
    proc = start_sweep([*job, "tracking.retry_s=2"], team_server.client_env(), tmp_path / "calls.jsonl",
                       tmp_path)
    with stopped_on_error(proc):
        wait_for_runs(team_server.uri, seed, 1, proc)
        team_server.kill_mlflow()
        err = finish(proc, tmp_path, "job")  # the server stays down until the job has given up
    team_server.start()
    assert proc.returncode == 1, err[-3000:]
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert "gave up" in line and "tracking.retry_s" in line and "resumes" in line
    [orphan] = latency_runs(team_server.uri, seed)
    assert orphan.info.status == "RUNNING"  # it could not even record its failure: its output said why

    rerun = start_sweep(job, team_server.client_env(), tmp_path / "rerun.calls.jsonl", tmp_path)
    rerun_err = finish(rerun, tmp_path, "rerun")
    assert rerun.returncode == 0, rerun_err[-3000:]
    runs = {r.info.run_id: r for r in latency_runs(team_server.uri, seed)}
    assert runs[orphan.info.run_id].info.status == "FAILED"
    assert "stale" in runs[orphan.info.run_id].data.tags["error"]
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED"]


@needs_postgres
def test_no_password_shows_in_any_record_error_log_or_command_line(team_server, tmp_path):
    # A failing job too, so that an error tag and a traceback artifact are searched as well.
    job = [sys.executable, "-m", "harness", *SMOKE, "seed=200", "debug.fault=raise",
           f"tracking.results_dir={tmp_path}"]
    proc = start_sweep(job, team_server.client_env(), tmp_path / "calls.jsonl", tmp_path)
    err = finish(proc, tmp_path, "job")
    assert proc.returncode != 0 and "injected fault" in err
    texts = recorded_texts(team_server.uri)
    assert any('"error"' in text for text in texts)
    searched = [p for p in (team_server.folder / "artifacts").rglob("*") if p.is_file()]
    assert any(p.name == "traceback.txt" for p in searched)
    assert (team_server.folder / "logs" / "mlflow.log").is_file()
    assert secrets_in(team_server, [team_server.folder, tmp_path], texts) == []
    assert listening_hosts(team_server.port) == {"127.0.0.1"}  # loopback only: nothing beyond this machine


def listening_hosts(port: int) -> set[str]:
    """The IPv4 addresses a TCP port listens on (/proc/net/tcp: hex little-endian address, state 0A)."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            hosts.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return hosts


def test_the_script_refuses_to_serve_beyond_loopback_without_authentication(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "start", "--host", "0.0.0.0", str(tmp_path / "team")],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable},
                          timeout=60, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert "without authentication" in line and "--auth" in line
    assert not (tmp_path / "team" / "pgdata").exists()  # refused before anything was created
