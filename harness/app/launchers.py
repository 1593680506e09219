"""Cluster launchers whose sweeps end with every job accounted for (conf/hydra/launcher/{slurm,ray}.yaml).

A launcher's `launch` returns one `JobReturn` per job. Hydra's own cluster launchers wait for each job's
result and raise on the first one that never came (a Slurm node that died, a cancelled job, a lost Ray
worker), so the sweep stops there: the other jobs' results, the sweep's summary and its parent run's end
(harness/app/sweep.py) are lost with it. These two wait for every job and turn a job that produced no
result into a *lost* job: its `job_status.json` says `failed` (or `killed` when it was cancelled) with
what the cluster said, and the sweep callback ends its MLflow run, which nobody closed, FAILED or KILLED.
The same command again runs exactly the jobs that are not FINISHED (harness/app/jobs.py: resume).

- `SlurmLauncher` is Hydra's submitit launcher (same options, `hydra.launcher.*`) with its own wait:
  a job's state comes from `sacct` where the site keeps accounting, else from `scontrol` (a cluster
  without slurmdbd, like scripts/local_cluster.sh's), so a job that ended without a result is seen.
- `RayLauncher` runs each job as a Ray task (`ray.init(**init)`, `.options(**remote)`, never retried:
  a retried measurement would be recorded twice) on Ray's public API. It replaces hydra-ray-launcher,
  which pins cloudpickle<3 (hydra-joblib-launcher's joblib needs >=3) and stops a sweep at its first lost
  task.

Each job learns the CPUs it was given (`ALLOCATED_CPUS_ENV`; Slurm's own variables), which the CPU
backend uses as its thread count when `backend.num_threads` is null (backends/cpu.py).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from harness.app.jobs import STATUS_FILE
from harness.core.host import ALLOCATED_CPUS_ENV

log = logging.getLogger(__name__)

# Slurm's states of a job that has ended (squeue/sacct names); CANCELLED is a user's act: KILLED.
_SLURM_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "TIMEOUT", "REVOKED", "SPECIAL_EXIT"}
# A job Slurm says COMPLETED whose result file is not there yet (a shared filesystem's delay)
_RESULT_GRACE_S = 30.0


def job_folder(config: DictConfig) -> Path:
    """A job's Hydra output folder (`hydra.sweep.dir`/`hydra.sweep.subdir`), where it writes its status."""
    return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def lost_job(config: DictConfig, overrides: Sequence[str], reason: str, killed: bool = False) -> JobReturn:
    """The return of a job that produced none: its status file says so, unless the job wrote its own
    (it finished its work and was lost only on the way back)."""
    folder = job_folder(config)
    path = folder / STATUS_FILE
    if path.is_file():
        status = json.loads(path.read_text())
    else:
        status = {"status": "killed" if killed else "failed", "lost": True, "path": None, "run_key": None,
                  "run_id": None, "overrides": list(overrides), "error": f"lost: {reason}"}
        try:  # the path and run key the job would have recorded: the sweep callback finds its run by them
            from harness.pipeline.plan import plan

            job = plan(config)
            status.update(path=job.path, run_key=job.run_key())
        except Exception as exc:  # noqa: BLE001 - the job was validated before the sweep; say, and go on
            log.warning("lost job %s: no run key (%s)", list(overrides), exc)
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(status, indent=2))
    log.error("job %s lost: %s", " ".join(filter_overrides(overrides)), reason)
    # COMPLETED with the status as its value: Hydra's sweeper re-raises a FAILED return, which would end the
    # sweep before its summary; the sweep callback counts the failures and exits non-zero.
    return JobReturn(overrides=list(overrides), cfg=config, working_dir=str(folder),
                     status=JobStatus.COMPLETED, _return_value=status)


class _SweepLauncher(Launcher):
    """What both launchers share: Hydra's setup and each job's config (as Hydra's own launchers make it)."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def job_config(self, overrides: Sequence[str], number: int) -> DictConfig:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = number
            config.hydra.job.id = f"{self.name}_{number}"
        return config

    name = "cluster"


# --- Slurm ------------------------------------------------------------------------------------------------
def _submitit_slurm():
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as Submitit
    except ImportError as exc:
        raise ImportError('hydra/launcher=slurm needs the cluster extra: pip install ".[cluster]"') from exc
    return Submitit


def slurm_state(job_id: str, timeout_s: float = 10.0) -> tuple[str, str]:
    """A Slurm job's state from `scontrol` (works without accounting, while the controller remembers the
    job: MinJobAge), and why it could not say: ('UNKNOWN', what scontrol said) when the controller did not
    answer within `timeout_s`, ('PURGED', '') when the job is no longer known."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "UNKNOWN", f"scontrol did not answer within {timeout_s:g} s"
    except OSError as exc:
        return "UNKNOWN", f"scontrol could not run ({exc})"
    if out.returncode != 0:
        said = " ".join(out.stderr.split())[:200]
        return ("PURGED", "") if "Invalid job id" in out.stderr else ("UNKNOWN", f"scontrol: {said}")
    for field in out.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1], ""
    return "UNKNOWN", "scontrol printed no JobState"


class SlurmLauncher(_SweepLauncher):
    """hydra-submitit-launcher's Slurm launcher (its options, its job function) with a wait that records
    lost jobs instead of raising on the first."""

    name = "slurm"

    def __init__(self, poll_s: float, state_timeout_s: float, **params: Any) -> None:
        self.poll_s = poll_s
        # How long a job's state may stay unknown (controller down, no accounting) before the job is
        # recorded lost; PENDING and RUNNING are bounded by the queue's own limits (timeout_min), not here.
        self.state_timeout_s = state_timeout_s
        self._submitit = _submitit_slurm()(**params)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self._submitit.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self._wait(self._submit(job_overrides, initial_job_idx), job_overrides, initial_job_idx)

    def _submit(self, job_overrides: Sequence[Sequence[str]], first: int) -> list[Any]:
        """One Slurm array of the plugin's job function, with the plugin's options (hydra.launcher.*)."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        params = dict(self._submitit.params)
        executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout", 0))
        shared = set(OmegaConf.structured(BaseQueueConf).keys())  # the options without a slurm_ prefix
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        calls = []
        for index, overrides in enumerate(job_overrides, first):
            log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
            calls.append((list(overrides), "hydra.sweep.dir", index, f"job_id_for_{index}",
                          Singleton.get_state()))
        try:
            return list(executor.map_array(self._submitit, *zip(*calls)))
        except submitit.core.utils.FailedJobError as exc:  # sbatch refused: its own words name the cause
            said = [line.strip() for line in str(exc).splitlines() if "error" in line or "fatal" in line]
            print(f"error: sbatch refused the sweep's jobs: {' '.join(said) or exc}\n"
                  "error: is this machine a Slurm client (SLURM_CONF; scripts/local_cluster.sh slurm start "
                  "DIR prints it), and does hydra.launcher.partition name a partition? No job was started",
                  file=sys.stderr)
            sys.exit(2)  # past Hydra's traceback: the message is the whole story

    def _wait(self, jobs: list[Any], job_overrides: Sequence[Sequence[str]], first: int) -> list[JobReturn]:
        results: dict[int, JobReturn] = {}
        watch = _SlurmWatch(self.state_timeout_s)
        while len(results) < len(jobs):
            watch.new_round()
            for index, job in enumerate(jobs):
                if index in results:
                    continue
                outcome = watch.outcome(job, index)
                if outcome is None:
                    continue
                if isinstance(outcome, JobReturn):
                    results[index] = outcome
                else:
                    results[index] = lost_job(self.job_config(job_overrides[index], first + index),
                                              job_overrides[index], f"Slurm job {job.job_id} {outcome}",
                                              killed=outcome.startswith("ended CANCELLED"))
            if len(results) < len(jobs):
                time.sleep(self.poll_s)
        return [results[i] for i in range(len(jobs))]


class _SlurmWatch:
    """Each job's outcome as the sweep polls: its return, why it is lost, or None (not yet)."""

    def __init__(self, state_timeout_s: float) -> None:
        self.state_timeout_s = state_timeout_s
        self.completed_at: dict[int, float] = {}
        self.unknown_since: dict[int, float] = {}
        # Once scontrol (or sacct) could not answer in a round, the round's other jobs do not ask again: a
        # controller that is down would cost each of them the call's timeout, N x 10 s a round
        self.controller_silent: str | None = None
        self.accounting_silent = False

    def new_round(self) -> None:
        self.controller_silent, self.accounting_silent = None, False

    def _state(self, job_id: str) -> tuple[str, str]:
        if self.controller_silent is not None:
            return "UNKNOWN", self.controller_silent
        state, why = slurm_state(job_id, timeout_s=min(10.0, self.state_timeout_s))
        if state == "UNKNOWN":
            self.controller_silent = why
        if state in ("UNKNOWN", "PURGED") and not self.accounting_silent:  # sacct, where accounting is kept
            said, answered = accounting_state(job_id)
            self.accounting_silent = not answered
            state = said or state
        return state, why

    def outcome(self, job: Any, index: int) -> JobReturn | str | None:
        """The job's return once it has one; 'ended STATE without a result' once it ended without one, or
        'state unknown for N s (...)' once Slurm could not say for longer than the bound; else None."""
        if job.paths.result_pickle.exists():
            try:
                return job.results()[0]
            except Exception as exc:  # noqa: BLE001 - the job function raised: its status file says why
                said = str(exc).splitlines()[0][:200] if str(exc) else ""
                # The job's own error, said as one (never as a Slurm state: "ended ValueError ...").
                return f"the job raised {type(exc).__name__}" + (f": {said}" if said else "")
        state, why = self._state(job.job_id)
        state = state.split()[0] if state else "UNKNOWN"
        now = time.monotonic()
        if state != "UNKNOWN":
            self.unknown_since.pop(index, None)
        elif now - self.unknown_since.setdefault(index, now) > self.state_timeout_s:
            return (f"state unknown for over {self.state_timeout_s:g} s (hydra.launcher.state_timeout_s; "
                    f"{why or 'no answer'}; is slurmctld running?)")
        if state == "COMPLETED":  # ended well: its result may still be on its way through the filesystem
            since = self.completed_at.setdefault(index, now)
            return "ended COMPLETED without a result" if now - since > _RESULT_GRACE_S else None
        if state == "PURGED" or state.split("+")[0] in _SLURM_ENDED:
            return f"ended {state} without a result"
        return None


def accounting_state(job_id: str, timeout_s: float = 10.0) -> tuple[str, bool]:
    """The job's state as Slurm's accounting has it (`sacct`, where the site keeps it), '' when it has
    none; and whether sacct answered at all within `timeout_s` (a slurmdbd that is down does not)."""
    try:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True,
                             text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "", False
    except OSError:  # no sacct: a site without accounting tools
        return "", True
    states = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    state = states[0] if out.returncode == 0 and states else ""
    return ("" if state == "UNKNOWN" else state), True


# What a Ray job needs from the launching process: Ray's workers inherit their node's environment, not
# the driver's, whereas sbatch exports the submitting shell's. Passed with the task, not in a runtime_env,
# which Ray keeps in its cluster state (a password would show in its dashboard).
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT", "MPREC_TRACKING_CALL_LOG", "TF_CPP_MIN_LOG_LEVEL")


# --- Ray --------------------------------------------------------------------------------------------------
ATTEMPT_FILE = "ray_attempt.json"


def run_on_ray(hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig,
               singleton_state: dict, cwd: str, environ: dict[str, str], launch: str) -> JobReturn:
    """One job, in a Ray worker: the launching process's folder (as sbatch starts a job in the folder it
    was submitted from: relative paths such as results/ mean the same), its Hydra state, the Hydra job."""
    import ray

    if not Path(cwd).is_dir():
        raise FileNotFoundError(f"{cwd}: the sweep's folder is not on this node; Ray jobs need the checkout "
                                "and the results folder at the same path on every node (a shared filesystem)")
    os.chdir(cwd)
    _first_attempt(job_folder(config), launch)
    os.environ.update(environ)
    setup_globals()
    Singleton.set_state(singleton_state)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        os.environ[ALLOCATED_CPUS_ENV] = str(max(1, int(cpus)))
    HydraConfig.instance().set_config(config)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def _first_attempt(folder: Path, launch: str) -> None:
    """Refuse a second start of one job within one launch. Ray can start a task again after the node it
    ran on was lost, max_retries=0 notwithstanding (seen here once in a dozen node-loss rounds, the killed
    attempt's run left RUNNING): a measurement is never taken twice by the cluster; the job is recorded
    lost, and the same command again reruns it once."""
    marker = folder / ATTEMPT_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("launch") == launch:
        raise RuntimeError("Ray started this job a second time after its first attempt was lost (its node "
                           "died); not measured twice: the same command again reruns it")
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"launch": launch, "pid": os.getpid(), "time": time.time()}))


class RayLauncher(_SweepLauncher):
    """Each job a Ray task on the cluster `init.address` names (`auto`: $RAY_ADDRESS or a running local
    head); `remote` holds the task's resources (num_cpus, num_gpus, memory, resources, scheduling_strategy).

    A sweep no node of the cluster could run is refused before any job starts, naming what it asked for and
    what each node has; a job that waits for longer than `state_timeout_s` while no alive node could run it
    (the node with the GPU was lost) is recorded lost. Waiting for a busy cluster's free slot has no bound
    here: that is the queue's business, as with Slurm's PENDING."""

    name = "ray"

    def __init__(self, init: Any = None, remote: Any = None, poll_s: float = 2.0,
                 state_timeout_s: float = 300.0, refuse_infeasible: bool = True) -> None:
        self.init = _plain(init)
        # Never retried (a lost measurement is rerun by resume, once); a fresh worker process per job, as
        # each Slurm job is one: no job inherits another's threads, caches or allocator.
        self.remote = {**_plain(remote), "max_retries": 0}
        self.poll_s = poll_s
        self.state_timeout_s = state_timeout_s
        # false on an autoscaling cluster, whose nodes for the request may not exist yet
        self.refuse_infeasible = refuse_infeasible

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        try:
            import ray
        except ImportError as exc:
            raise ImportError('hydra/launcher=ray needs the cluster extra: pip install ".[cluster]"') from exc
        if not ray.is_initialized():
            ray.init(**self.init)
        why = infeasible(self.remote, ray.nodes()) if self.refuse_infeasible else None
        if why:
            print(f"error: {why}\nerror: no job was started (hydra.launcher.refuse_infeasible=false on an "
                  "autoscaling cluster)", file=sys.stderr)
            sys.exit(2)  # past Hydra's traceback: the message is the whole story
        task = ray.remote(max_calls=1)(run_on_ray).options(**self.remote)
        configs = [self.job_config(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
        state = Singleton.get_state()
        for number, overrides in enumerate(job_overrides, initial_job_idx):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        environ = {k: v for k, v in os.environ.items() if k in FORWARDED_ENV}
        launch = uuid.uuid4().hex  # this launch: a job started twice within it is refused (_first_attempt)
        refs = [task.remote(self.hydra_context, self.task_function, c, state, os.getcwd(), environ, launch)
                for c in configs]
        outcomes = self._wait(refs)
        return [outcome if isinstance(outcome, JobReturn) else lost_job(config, overrides, *outcome)
                for outcome, config, overrides in zip(outcomes, configs, job_overrides)]

    def _wait(self, refs: list) -> list[JobReturn | tuple[str, bool]]:
        """Each task's return, or (why it is lost, whether it was cancelled); every wait bounded."""
        import ray

        outcomes: dict[int, JobReturn | tuple[str, bool]] = {}
        pending = {ref: index for index, ref in enumerate(refs)}
        unschedulable_since: float | None = None
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=self.poll_s)
            for ref in ready:
                outcomes[pending.pop(ref)] = _ray_outcome(ref)
            if not pending or ready:
                unschedulable_since = None
                continue
            why = infeasible(self.remote, ray.nodes()) if self.refuse_infeasible else None
            now = time.monotonic()
            if why is None:
                unschedulable_since = None
            elif unschedulable_since is None:
                unschedulable_since = now
            elif now - unschedulable_since > self.state_timeout_s:
                for ref, index in pending.items():
                    ray.cancel(ref, force=True)
                    outcomes[index] = (f"Ray task waited over {self.state_timeout_s:g} s "
                                       f"(hydra.launcher.state_timeout_s) while {why}", False)
                pending.clear()
        return [outcomes[i] for i in range(len(refs))]


def _ray_outcome(ref) -> JobReturn | tuple[str, bool]:
    import ray

    try:
        return ray.get(ref, timeout=60)  # ready: the result is there, only its transfer remains
    except ray.exceptions.RayError as exc:  # the worker or its node died, the task was cancelled
        said = getattr(exc, "cause", None) or str(exc).splitlines()[0]  # a task's own exception, if it raised
        reason = f"Ray task ended without a result ({type(exc).__name__}: {said})"
        return reason, isinstance(exc, ray.exceptions.TaskCancelledError)


def ray_request(remote: dict) -> dict[str, float]:
    """The resources a task with these options asks for, in Ray's names (CPU 1 unless said otherwise)."""
    request = {"CPU": float(remote.get("num_cpus", 1) or 0), "GPU": float(remote.get("num_gpus", 0) or 0),
               "memory": float(remote.get("memory", 0) or 0)}
    request.update({name: float(amount) for name, amount in (remote.get("resources") or {}).items()})
    return {name: amount for name, amount in request.items() if amount > 0}


def infeasible(remote: dict, nodes: list[dict]) -> str | None:
    """Why no alive node could ever run a task with these options (what it asks, what each node has), or
    None when one could.

    >>> nodes = [{"NodeID": "ab12cd34ef", "Alive": True, "Resources": {"CPU": 2.0}}]
    >>> infeasible({"num_cpus": 1}, nodes) is None
    True
    >>> print(infeasible({"num_cpus": 1, "num_gpus": 1}, nodes))
    each job asks Ray for CPU 1, GPU 1 (hydra.launcher.remote) and no node has that: node ab12cd34: CPU 2
    """
    request = ray_request(remote)
    alive = [node for node in nodes if node.get("Alive")]
    for node in alive:
        if all(node["Resources"].get(name, 0.0) >= amount for name, amount in request.items()):
            return None
    offers = "; ".join(f"node {node['NodeID'][:8]}: " + ", ".join(
        f"{name} {amount:g}" for name, amount in sorted(node["Resources"].items())
        if not name.startswith(("node:", "object_store_memory", "memory"))) for node in alive)
    asked = ", ".join(f"{name} {amount:g}" for name, amount in request.items())
    return (f"each job asks Ray for {asked} (hydra.launcher.remote) and no node has that: "
            f"{offers or 'no node is alive'}")


def _plain(value: Any) -> dict:
    if value is None:
        return {}
    plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return dict(plain)  # type: ignore[arg-type]  # a mapping: init and remote are YAML mappings
