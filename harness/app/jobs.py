"""One Hydra job's life: skip what is done, clear what died, run the work (isolated if asked), report.

1. **Resume**: a job whose run key already has a FINISHED run in its experiment is skipped (`force=true`
   reruns it). A RUNNING run with the same key whose process is gone (killed, machine lost) is ended
   FAILED as stale before the job runs again.
2. **Isolation** (`isolate=auto`: in multiruns): the job process creates the MLflow run and hands the work
   to a child process (`harness.app.worker`). If the child raises, it ends the run FAILED itself; if it is
   killed (the OOM killer's SIGKILL) or runs past `job_timeout_s`, the job process ends the run FAILED
   with the reason. Either way the job returns normally, so no launcher stops the sweep.
3. **Report**: every job writes `job_status.json` (status, path, run id, overrides, error) into its Hydra
   output folder; the sweep callback (harness/app/sweep.py) sums them up at the end.

The job process always creates the run itself (isolated or not), so it knows the run's id whatever
happens to the work.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from harness.app.console import ladder_progress, print_path_summary, print_recorded_summary, to_log_files
from harness.core import trust
from harness.core.errors import BackendUnavailable, could_not_run_here
from harness.core.processes import PARENT_ENV
from harness.core.schema import container as plain_config
from harness.pipeline.plan import Plan, plan
from harness.tracking import OWNER_TAG, Store, is_stale
from harness.tracking.environment import process_identity

log = logging.getLogger(__name__)

class RunFailed(RuntimeError):
    """An isolated single run's worker failed: its output said why, the run records it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C ended the job; `run_id` is the run it ended KILLED, or None where none was created yet."""

    def __init__(self, run_id: str | None) -> None:
        super().__init__(run_id)
        self.run_id = run_id


def refuse_unavailable(p: Plan) -> None:
    """A backend that is not on this machine, or does not run the path's precision, is refused before
    anything is created or imported (no MLflow run, no torch): in a sweep the job is counted `could not
    run here`, a single run ends in one line."""
    p.adapter.require_available()
    p.adapter.check_precision(p.run.precision.name)


PARENT_RUN_FILE = "mlflow_parent_run.json"
STATUS_FILE = "job_status.json"
_KILL_GRACE_S = 10.0


def _hydra():
    return HydraConfig.get() if HydraConfig.initialized() else None


def _is_multirun() -> bool:
    hc = _hydra()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def _sweep_parent(experiment_name: str) -> str | None:
    """The parent run the sweep callback created for this sweep, if it is in the job's experiment."""
    hc = _hydra()
    if hc is None or not _is_multirun():
        return None
    path = Path(hc.sweep.dir) / PARENT_RUN_FILE
    if not path.is_file():
        return None
    parent = json.loads(path.read_text())
    return parent["run_id"] if parent.get("experiment_name") == experiment_name else None


def sweep_position() -> str:
    """Where this job is in its sweep, for its progress line: `job 3 of 6, 2 done` ("" outside one)."""
    hc = _hydra()
    if hc is None or not _is_multirun():
        return ""
    sweep_dir = Path(hc.sweep.dir)
    try:
        total = json.loads((sweep_dir / PARENT_RUN_FILE).read_text()).get("jobs")
    except (OSError, ValueError):
        total = None
    done = sum(1 for _ in sweep_dir.glob(f"*/{STATUS_FILE}"))
    return f"job {hc.job.num + 1}" + (f" of {total}" if total else "") + f", {done} done"


def run_job(cfg: Any) -> dict[str, Any]:
    """The Hydra task. Returns (and writes) the job's status; raises only outside multiruns."""
    p = plan(cfg)
    if p.run.dry_run:
        print(json.dumps(p.dry_run_report(), indent=2))
        return {"status": "dry_run", "path": p.path}
    multirun = _is_multirun()
    container = plain_config(cfg)
    hc = _hydra()
    fault = p.run.debug.for_job(hc.job.num if hc is not None and multirun else None)
    p.run.debug.fault = container["debug"]["fault"] = fault
    if not p.run.tracking.parent_run_id:
        parent = _sweep_parent(p.run.experiment_name)
        if parent:
            p.run.tracking.parent_run_id = parent
            container["tracking"]["parent_run_id"] = parent
    status: dict[str, Any] = {"path": p.path, "run_key": p.run_key(), "overrides": _overrides(),
                              "run_id": None, "error": None}
    try:
        refuse_unavailable(p)
        status.update(_run(p, container, multirun, status))
    except KeyboardInterrupt as exc:
        status.update(status="interrupted", error="interrupted (Ctrl-C)")
        _write_status(status)
        if multirun:  # the sweep says what it ended (cli's sweep message), not one job's run
            raise
        raise Interrupted(status["run_id"]) from exc
    except Exception as exc:
        status.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        if not multirun:
            _write_status(_classified(status))
            raise
    _write_status(_classified(status))
    if status["status"] not in ("failed", "unavailable"):
        return status
    if not multirun:  # an isolated single run: the worker has printed why; the command fails in one line
        unavailable = status["status"] == "unavailable"
        error = str(status["error"])
        raise BackendUnavailable(error.split(": ", 1)[1]) if unavailable else RunFailed(error)
    if status["status"] == "unavailable":  # one line, as a single run says it; no run was created
        line = f"error: {str(status['error']).split(': ', 1)[1]}"
        print(line, file=sys.stderr)
        to_log_files(line)  # the job's harness.log says why it is empty
    else:
        log.error("job %s: %s", status["status"], status["error"])
    return status


def _classified(status: dict) -> dict:
    """A failure because the backend is not on this machine is told apart from a real one."""
    if status["status"] == "failed" and could_not_run_here(status["error"]):
        status["status"] = "unavailable"
    return status


def _overrides() -> list[str]:
    hc = _hydra()
    return list(hc.overrides.task) if hc is not None else []


def _write_status(status: dict) -> None:
    hc = _hydra()
    if hc is None:
        return
    out = Path(hc.runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / STATUS_FILE).write_text(json.dumps(status, indent=2))


def _run(p: Plan, container: dict, multirun: bool, status: dict) -> dict[str, Any]:
    """The job's work; `status["run_id"]` is set the moment its run exists (what Ctrl-C reports)."""
    # The one import of the run's stages (torch, the model): here, past the dry run, which never loads them.
    from harness.pipeline.run import measure_path

    run = p.run
    store = Store(run.tracking, run.experiment_name)
    key = p.run_key()
    if not run.force:
        done = store.find({"run_key": key}, ("FINISHED",))
        if done:
            print(
                f"skipped {p.path}: already measured in run {done[0].info.run_id} with this config (run key "
                f"{key}); force=true measures it again. What it recorded:"
            )
            print_recorded_summary(p, done[0].info.run_id, store)
            return {"status": "skipped", "run_id": done[0].info.run_id}
    for stale in (r for r in store.find({"run_key": key}, ("RUNNING",)) if is_stale(r)):
        store.fail(stale.info.run_id, "stale: the process that owned this run ended without closing it "
                                      "(killed?); marked FAILED when the job was run again")
        log.warning("marked stale run %s FAILED", stale.info.run_id)

    # A number of seconds isolates a single run too; `auto` bounds the jobs that are isolated anyway
    explicit_timeout = run.job_timeout_s not in (None, "auto")
    isolated = run.isolate == "always" or (run.isolate == "auto" and (multirun or explicit_timeout))
    if isolated:
        return _run_isolated(p, container, store, status)
    if explicit_timeout:
        log.warning("job_timeout_s is ignored with isolate=never")
    run_id = status["run_id"] = store.create_run(p.run_name, {**p.run_tags(), OWNER_TAG: process_identity()})
    try:
        progress = partial(ladder_progress, job=sweep_position())
        print_path_summary(p, measure_path(p, run_id, progress=progress))
    except KeyboardInterrupt:
        store.kill(run_id)  # already KILLED by the recorder, unless Ctrl-C came before it started
        raise
    except Exception as exc:  # the recorder has ended the run FAILED
        if not multirun:
            raise
        return {"status": "failed", "run_id": run_id, "error": f"{type(exc).__name__}: {exc}"}
    return _finished(store, run_id)


def _finished(store: Store, run_id: str) -> dict[str, Any]:
    """A finished job's status, with the query sizes its run still flagged unreliable (the sweep's table)."""
    flagged = trust.parse(store.get(run_id).data.tags.get(trust.TAG))
    return {"status": "finished", "run_id": run_id, "unreliable": ",".join(map(str, sorted(flagged)))}


def _run_isolated(p: Plan, container: dict, store: Store, status: dict) -> dict[str, Any]:
    run_id = status["run_id"] = store.create_run(p.run_name, {**p.run_tags(), OWNER_TAG: process_identity(),
                                                              "mprec.isolated": "true"})
    hc = _hydra()
    folder = Path(hc.runtime.output_dir) if hc is not None else Path(p.run.tracking.results_dir) / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    job_file = folder / "job.json"
    job_file.write_text(json.dumps({"config": container, "run_id": run_id, "position": sweep_position()},
                                   default=str))

    # The worker dies with this process (SIGKILL at its death; harness/app/worker.py arms it first thing): a
    # job killed from outside leaves no worker measuring beside the next job, or ending a run the sweep has
    # already closed. (Not a preexec_fn: this process may have threads, where code after fork can hang.)
    child = subprocess.Popen([sys.executable, "-m", "harness.app.worker", str(job_file)],
                             stderr=subprocess.PIPE, text=True, errors="replace",
                             env={**os.environ, PARENT_ENV: str(os.getpid())})
    tail: deque[str] = deque(maxlen=60)
    relay = threading.Thread(target=_relay, args=(child.stderr, tail), daemon=True)
    relay.start()
    try:
        timed_out = _wait(child, p.job_timeout())
    except KeyboardInterrupt:
        # Ctrl-C reached the worker too (one process group): let it end its run KILLED, then make sure.
        _stop(child)
        relay.join(timeout=5)
        store.kill(run_id)
        raise
    relay.join(timeout=5)

    final = store.status(run_id)
    if child.returncode == 0 and final == "FINISHED":
        return _finished(store, run_id)
    if timed_out:
        reason = (f"timed out: the work ran longer than job_timeout_s={p.job_timeout():g} s "
                  f"({p.run.job_timeout_s}) and was killed")
    elif child.returncode is not None and child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        hint = " (what the kernel's out-of-memory killer sends)" if name == "SIGKILL" else ""
        reason = f"killed by {name}{hint}"
    else:
        reason = f"worker exited with status {child.returncode}"
    if final == "RUNNING":  # the worker could not close its run: say why
        store.fail(run_id, reason, "".join(tail))
    else:
        reason = store.get(run_id).data.tags.get("error", reason)
    return {"status": "failed", "run_id": run_id, "error": reason}


def _relay(stream, tail: deque) -> None:
    """Copy the worker's stderr to ours (progress, logs) and keep its last lines for the error record."""
    for line in stream:
        sys.stderr.write(line)
        tail.append(line)


def _wait(child: subprocess.Popen, timeout_s: float | None) -> bool:
    """Wait for the worker; past `timeout_s`, SIGTERM then SIGKILL it. True if it timed out."""
    try:
        child.wait(timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        _stop(child, terminate=True)
        return True


def _stop(child: subprocess.Popen, terminate: bool = False) -> None:
    """Give the worker the grace period to end (after SIGTERM if `terminate`), then SIGKILL it."""
    if terminate:
        child.terminate()
    try:
        child.wait(timeout=_KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()

