"""The sweep's own bookkeeping, as a Hydra callback (conf/config.yaml: hydra.callbacks.sweep).

- **Before any job starts**: compose and validate every job's config (the same checks a job does), so a
  bad value in job 17 of 40 stops the sweep before job 1 runs; create the experiment once (parallel jobs
  on SQLite would race to create it) and one MLflow *parent run*, whose id the jobs read from
  `<sweep dir>/mlflow_parent_run.json` and record as tag `mprec.sweep` (not MLflow's nesting, whose
  collapsed rows hide the paths from the UI's charts; "Group by" that tag groups a sweep's jobs).
- **After the last job**: read every job's `job_status.json`, end the runs of jobs lost on a cluster (a
  node died, a job was cancelled: harness/app/launchers.py wrote their status, nobody closed their run)
  FAILED or KILLED, never leaving one RUNNING; print finished / skipped / failed / cancelled jobs with
  their overrides, record the summary on the parent run, and exit non-zero if any job did not finish.

Callbacks run in the process that launches the jobs, so this works the same with the basic, joblib and
submitit launchers (the files live in the shared sweep folder). Jobs are expanded as Hydra's basic
sweeper expands them (the cartesian product of every key's values, a later override of a key replacing
an earlier one), with Hydra's public override parser.
"""

from __future__ import annotations

import atexit
import itertools
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from harness.app.console import print_paths_side_by_side, print_sweep_summary
from harness.app.doctor import check, verdict
from harness.app.jobs import PARENT_RUN_FILE, STATUS_FILE
from harness.core.conf import compose
from harness.core.schema import RunConfig, TrackingConfig
from harness.pipeline.config import load_config
from harness.tracking import KIND_TAG, SWEEP_TAG, Store


def expand_jobs(config: DictConfig) -> list[list[str]]:
    """Each job's overrides, in the order the basic sweeper launches them (sweeper params, then the CLI)."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create(config_loader=loader).parse_overrides(arguments):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(f"{key}: the basic sweeper cannot sweep an interval; use a sampling sweeper "
                                 "(e.g. Optuna) or list the values")
    return [list(job) for job in itertools.product(*choices.values())]


def validate_jobs(config: DictConfig, jobs: list[list[str]]) -> RunConfig | None:
    """Compose and validate every job; returns the first job's RunConfig; exits 2 naming the bad job."""
    loader = GlobalHydra.instance().config_loader()
    first = None
    for number, overrides in enumerate(jobs):
        try:
            run = load_config(loader.load_sweep_config(master_config=config, sweep_overrides=list(overrides)))
        except Exception as exc:  # noqa: BLE001 - any composition error stops the sweep
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"error: job #{number} ({' '.join(overrides)}): {message}", file=sys.stderr)
            print("error: no job was started", file=sys.stderr)
            sys.exit(2)  # SystemExit passes Hydra's callback guard, which would only warn on an Exception
        first = first or run
    return first


class SweepCallback(Callback):
    """Holds only plain data: launchers such as joblib pickle the callbacks into their workers."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking: TrackingConfig | None = None
        self.experiment_name: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        jobs = expand_jobs(config)
        first = validate_jobs(config, jobs)
        if first is None or first.dry_run:
            return
        store = Store(first.tracking, first.experiment_name)  # creates the experiment once, up front
        sweep_dir = Path(config.hydra.sweep.dir)
        self.parent_run_id = store.create_run(
            f"sweep {sweep_dir.name}",
            {KIND_TAG: "sweep", "sweep_dir": str(sweep_dir), "jobs": str(len(jobs)),
             "overrides": " ".join(config.hydra.overrides.task)[:5000]},
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(json.dumps(
            {"run_id": self.parent_run_id, "experiment_name": first.experiment_name, "uri": store.uri,
             "jobs": len(jobs)}))
        self.tracking, self.experiment_name = first.tracking, first.experiment_name
        # An interrupted sweep never reaches on_multirun_end: its parent run is ended KILLED at exit instead.
        atexit.register(self._kill_parent_if_running)
        print(f"sweep of {len(jobs)} jobs: MLflow parent run {self.parent_run_id} in experiment "
              f"'{first.experiment_name}'", file=sys.stderr)
        # Is the machine quiet enough to measure on? One second's look, one line (python -m harness.doctor).
        print(verdict(check(first, seconds=1.0)), file=sys.stderr)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        files = sorted(sweep_dir.rglob(STATUS_FILE))
        statuses = [json.loads(p.read_text()) for p in files]
        if not statuses or all(s.get("status") == "dry_run" for s in statuses):
            return
        if self.parent_run_id:
            self._close_lost_runs(statuses, files)
        counts = {k: sum(s["status"] == k for s in statuses) for k in ("finished", "skipped", "failed",
                                                                       "unavailable", "killed")}
        counts["lost"] = sum(bool(s.get("lost")) for s in statuses)
        print_sweep_summary(statuses, counts)
        unfinished = counts["failed"] + counts["unavailable"] + counts["killed"]
        if self.parent_run_id:
            store = self._store()
            store.set_tags(self.parent_run_id, {f"jobs_{k}": v for k, v in counts.items()})
            store.log_text(self.parent_run_id, json.dumps(statuses, indent=2), "sweep_summary.json")
            store.finish(self.parent_run_id, "FAILED" if unfinished else "FINISHED")
        if self.experiment_name and OmegaConf.select(config, "analysis_after_sweep", default=False):
            scope = OmegaConf.select(config, "analysis_scope", default="sweep")
            # This sweep's runs: the finished, failed and skipped (measured before) jobs' runs.
            self._analyse([s["run_id"] for s in statuses if s.get("run_id")] if scope == "sweep" else None)
        scenario = OmegaConf.select(config, "serving_after_sweep", default=None)
        if self.experiment_name and scenario:
            self._serve(scenario)
        if unfinished:
            sys.exit(1)

    def _close_lost_runs(self, statuses: list[dict], files: list[Path]) -> None:
        """Every run of this sweep still RUNNING once all its jobs have returned was left by a job that died
        with it (its node lost, the job cancelled): ended FAILED, or KILLED where the job was cancelled,
        with its lost job's reason; that job's status gets the run's id."""
        store = self._store()
        lost = {s.get("run_key"): (s, f) for s, f in zip(statuses, files) if s.get("lost")}
        for run in store.find({SWEEP_TAG: self.parent_run_id}, ("RUNNING",)):
            status, path = lost.get(run.data.tags.get("run_key"), ({}, None))
            reason = status.get("error") or "lost: its job ended without closing its run (node lost?)"
            if status.get("status") == "killed":
                store.kill(run.info.run_id, reason)
            else:
                store.fail(run.info.run_id, reason)
            if path is not None:
                status["run_id"] = run.info.run_id
                path.write_text(json.dumps(status, indent=2))

    def _store(self) -> Store:
        """The sweep's experiment (known once `on_multirun_start` has run)."""
        if self.tracking is None or self.experiment_name is None:
            raise RuntimeError("the sweep has not started: no experiment yet")
        return Store(self.tracking, self.experiment_name)

    def _kill_parent_if_running(self) -> None:
        if self.parent_run_id is None:
            return
        try:
            self._store().kill(self.parent_run_id)
        except Exception:  # noqa: BLE001 - at exit, a store that cannot be reached leaves nothing to do
            pass

    def _tracking_overrides(self) -> list[str]:
        if self.tracking is None:
            return []
        return [f"tracking.{k}={'null' if v is None else v}" for k, v in asdict(self.tracking).items()
                if k != "parent_run_id"]

    def _serve(self, scenario: str) -> None:
        """A sweep whose experiment sets serving_after_sweep ends with that serving study."""
        from harness.serving import load_serving_config, run_serving  # pandas, matplotlib: only when asked

        overrides = [f"serving={scenario}", f"experiment_name={self.experiment_name}",
                     *self._tracking_overrides()]
        try:
            config = load_serving_config(compose(overrides, config_name="serving"))
            if config.paper:  # the paper's claims: a study per workload, then the table
                from harness.serving.paper import run_paper

                run_paper(config)
            else:
                run_serving(config)
        except Exception as exc:  # noqa: BLE001 - the sweep's results are recorded; the study can be redone
            print(
                f"serving study failed ({type(exc).__name__}: {exc}); redo it with python -m harness.serving "
                f"serving={scenario} experiment_name={self.experiment_name}",
                file=sys.stderr,
            )

    def _analyse(self, run_ids: list[str] | None) -> None:
        """The sweep ends by writing the analysis of its runs (`run_ids`; None: the whole experiment's) and
        printing its paths side by side (python -m harness.analysis redoes it for the experiment)."""
        from harness.analysis import load_analysis_config, run_analysis  # pandas, matplotlib: only when asked

        overrides = [f"experiment_name={self.experiment_name}", *self._tracking_overrides()]
        try:
            analysis = run_analysis(load_analysis_config(compose(overrides, config_name="analysis")),
                                    run_ids=run_ids)
            print_paths_side_by_side(analysis.paths)
            if self.parent_run_id:  # one click from the sweep's row in the UI: latency vs query size on log
                # axes, the mapping, the whole report (MLflow's artifact view shows PNG and HTML)
                self._store().log_artifacts(self.parent_run_id, analysis.folder, "analysis")
        except Exception as exc:  # noqa: BLE001 - the sweep's results are recorded; the analysis can be redone
            print(f"analysis failed ({type(exc).__name__}: {exc}); redo it with "
                  f"python -m harness.analysis experiment_name={self.experiment_name}", file=sys.stderr)
