"""Sweeps that survive: resume, failure isolation, parallel launchers, a real MLflow server, no secrets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from .conftest import SMOKE, harness_env

FAST = [*SMOKE, "workload.query_sizes=[4]"]


def runs_of(store: str, experiment: str = "mprec", kind: str = "latency"):
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    return [r for r in runs if r.data.tags.get("mprec.kind") == kind]


def test_fault_injection_sweep_then_resume_reruns_only_the_failed(run_harness, store):
    sweep = ["-m", *FAST, "seed=0,1,2,3,4,5"]
    # The timeout must leave a loaded machine time to start a worker (it imports torch and mlflow).
    first = run_harness(*sweep, "job_timeout_s=40", 'debug.fault="raise@3,kill@4,hang@5"', store_uri=store,
                        check=False)
    assert first.returncode == 1  # failed jobs make the sweep's exit status non-zero...
    runs = {r.data.params["seed"]: r for r in runs_of(store)}
    assert len(runs) == 6  # ...but every job ran
    assert {s for s, r in runs.items() if r.info.status == "FINISHED"} == {"0", "1", "2"}
    errors = {s: runs[s].data.tags["error"] for s in ("3", "4", "5")}
    assert all(runs[s].info.status == "FAILED" for s in errors)
    assert "injected fault" in errors["3"]
    assert "SIGKILL" in errors["4"]
    assert "job_timeout_s" in errors["5"]
    [parent] = runs_of(store, kind="sweep")
    assert parent.info.status == "FAILED" and parent.data.tags["jobs_failed"] == "3"
    assert {r.data.tags["mprec.sweep"] for r in runs.values()} == {parent.info.run_id}
    assert not any("mlflow.parentRunId" in r.data.tags for r in runs.values())  # not nested: charted at once
    assert "failed" in first.stderr and "seed=4" in first.stderr  # the summary names the jobs

    second = run_harness(*sweep, store_uri=store, check=False)  # the same command, without faults
    assert second.returncode == 0, second.stderr[-3000:]
    assert "3 finished, 3 skipped, 0 failed" in second.stderr
    finished = [r for r in runs_of(store) if r.info.status == "FINISHED"]
    assert sorted(r.data.params["seed"] for r in finished) == ["0", "1", "2", "3", "4", "5"]


def test_ctrl_c_ends_the_job_and_the_sweep_killed_with_one_line_and_the_rerun_resumes(run_harness, store,
                                                                                      tmp_path):
    sweep = ["-m", *FAST, "seed=0,1"]
    proc = subprocess.Popen([sys.executable, "-m", "harness", *sweep, 'debug.fault="hang@1"',
                             f"tracking.results_dir={tmp_path / 'results'}"], cwd=tmp_path,
                            env=harness_env(store), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)
    deadline = time.time() + 180
    while time.time() < deadline:  # job 1's worker hangs once its run has started
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before the interrupt:\n{proc.communicate()[1][-3000:]}")
        if any(r.data.params.get("seed") == "1" and r.info.status == "RUNNING" for r in _runs_if_any(store)):
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("interrupted:")]) == 1
    runs = {r.data.params["seed"]: r for r in runs_of(store)}
    assert runs["0"].info.status == "FINISHED"
    assert runs["1"].info.status == "KILLED" and runs["1"].data.tags["error"].startswith("interrupted")
    [parent] = runs_of(store, kind="sweep")
    assert parent.info.status == "KILLED"  # not RUNNING forever

    rerun = run_harness(*sweep, store_uri=store)  # the same command resumes
    assert "1 finished, 1 skipped, 0 failed" in rerun.stderr


def _default_sigint() -> None:
    """Ctrl-C as a terminal delivers it, whatever this test runner inherited: a shell starts background
    jobs with SIGINT ignored, and Python then never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _runs_if_any(store: str):
    try:
        return runs_of(store)
    except Exception:  # noqa: BLE001 - the experiment does not exist yet
        return []


def test_a_killed_in_process_run_is_marked_failed_when_resumed(run_harness, store):
    dead = run_harness(*FAST, "isolate=never", "debug.fault=kill", store_uri=store, check=False)
    assert dead.returncode == -signal.SIGKILL
    [orphan] = runs_of(store)
    assert orphan.info.status == "RUNNING"  # nobody could close it
    run_harness(*FAST, "isolate=never", store_uri=store)
    runs = {r.info.run_id: r for r in runs_of(store)}
    assert runs[orphan.info.run_id].info.status == "FAILED"
    assert "stale" in runs[orphan.info.run_id].data.tags["error"]
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED"]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_the_isolated_worker_dies_with_its_killed_job_and_its_run_is_ended_once(tmp_path, run_harness, store):
    # The job process SIGKILLed from outside while its worker hangs in the measurement: the worker must not
    # go on measuring (load beside the next job) nor end a run the sweep may already have closed
    job = subprocess.Popen([sys.executable, "-m", "harness", *FAST, "isolate=always", "debug.fault=hang",
                            "job_timeout_s=null", f"tracking.results_dir={tmp_path / 'results'}"],
                           cwd=tmp_path, env=harness_env(store), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _children(job.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        [worker] = _children(job.pid)
        time.sleep(3)  # the worker is working (importing, building, or hanging in its fault)
        job.kill()
        job.wait(timeout=10)
        gone = time.monotonic() + 15
        while Path(f"/proc/{worker}").exists() and time.monotonic() < gone:
            time.sleep(0.1)
        assert not Path(f"/proc/{worker}").exists() or \
            Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        job.kill()
        job.wait(timeout=10)
    [orphan] = runs_of(store)
    assert orphan.info.status == "RUNNING"  # nobody ended it: not the worker, killed with its parent
    run_harness(*FAST, store_uri=store)  # the next run ends it, once, as stale
    runs = {r.info.run_id: r for r in runs_of(store)}
    ended = runs[orphan.info.run_id]
    assert ended.info.status == "FAILED" and "stale" in ended.data.tags["error"]
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED"]


def test_force_reruns_a_finished_job(run_harness, store):
    # (Skipping a finished job without force is shown by the resumed sweep above.)
    run_harness(*FAST, store_uri=store)
    forced = run_harness(*FAST, "force=true", store_uri=store)
    assert "skipped" not in forced.stdout
    runs = runs_of(store)
    assert len(runs) == 2 and len({r.data.tags["run_key"] for r in runs}) == 1


def test_joblib_with_two_workers_on_sqlite_loses_no_run(run_harness, store):
    # isolate=never: loky's workers are processes already; the store sees four writers either way.
    proc = run_harness(
        "-m",
        *FAST,
        "seed=0,1,2,3,4,5,6,7",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "isolate=never",
        store_uri=store,
    )
    runs = runs_of(store)
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    assert "database is locked" not in proc.stderr
    assert "8 finished, 0 skipped, 0 failed" in proc.stderr


def test_submitit_local_runs_jobs_as_separate_processes(run_harness, store):
    run_harness("-m", *FAST, "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                store_uri=store)
    runs = runs_of(store)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.parametrize(
    "overrides, names",
    [
        (["representation=table,holograms"], "holograms"),
        (["workload.query_sizes=[1],[0]"], "workload.query_sizes"),
        (["dataset.scale=0.001,-1"], "dataset.scale"),
    ],
)
def test_bad_jobs_fail_before_any_job_starts(run_harness, store, overrides, names):
    proc = run_harness("-m", *FAST, *overrides, store_uri=store, check=False)
    assert proc.returncode != 0
    assert names in proc.stderr
    mlflow.set_tracking_uri(store)
    experiment = mlflow.get_experiment_by_name("mprec")
    assert experiment is None or not mlflow.search_runs([experiment.experiment_id], output_format="list")


def test_no_secret_from_the_environment_is_logged(run_harness, store, tmp_path, monkeypatch):
    secrets = {"AWS_SECRET_ACCESS_KEY": "fake-aws-secret-1234567890",
               "MLFLOW_TRACKING_PASSWORD": "fake-pass-0987"}
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secrets["MLFLOW_TRACKING_PASSWORD"])
    run_harness(*FAST, store_uri=store)
    [run] = runs_of(store)
    blobs = [json.dumps(run.data.params), json.dumps(run.data.tags)]
    local = Path(MlflowClient(store).download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    blobs += [p.read_text(errors="replace") for p in local.rglob("*") if p.is_file()]
    for value in secrets.values():
        assert not any(value in blob for blob in blobs)
    assert len(blobs) >= 5  # params, tags, and the artifacts were really searched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        env=harness_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(server.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not start")
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_team_mode_against_a_real_mlflow_server(run_harness, mlflow_server, tmp_path):
    run_harness("-m", *FAST, "seed=0,1", "isolate=never", store_uri=mlflow_server, timeout=300)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("mprec")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("mprec.kind") == "latency"
    ]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "latency_p50_ms")] == [4]
        local = Path(client.download_artifacts(run.info.run_id, "samples", str(tmp_path / run.info.run_id)))
        assert (
            (local / "latency_raw.csv")
            .read_text()
            .startswith("query_size,iteration,latency_s,device_latency_s")
        )
