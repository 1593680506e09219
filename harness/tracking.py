"""MLflow tracking: the only module that imports mlflow.

The store defaults to SQLite under `results/` (an explicit `sqlite:///` URI: MLflow 3's plain-file store
is gone) with artifacts beside it; `MLFLOW_TRACKING_URI` points a team at an `mlflow server` instead.
All calls go through an explicit `MlflowClient` and run id, never the fluent global "active run", so
jobs of one process (a Hydra multirun) cannot log into each other's runs.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.config import TrackingConfig

# MLflow's limits (mlflow.utils.validation): param values 6000 chars, keys 250, and per log_batch call
# 100 params, 100 tags, 1000 metrics.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
DB_FILE = "mlflow.db"


def tracking_uri(config: TrackingConfig) -> str:
    uri = config.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    results = Path(config.results_dir).resolve()
    results.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{results / DB_FILE}"


def artifact_location(uri: str, config: TrackingConfig) -> str | None:
    """Artifacts beside a SQLite store (`<db folder>/artifacts`); a server decides its own."""
    if uri.startswith("sqlite:///"):
        db_path = Path(uri[len("sqlite:///"):])
        return (db_path.parent / "artifacts").resolve().as_uri()
    if "://" not in uri:
        return (Path(config.results_dir) / "artifacts").resolve().as_uri()
    return None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}: lists and None as JSON, values cut to MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        flat[path[:MAX_KEY]] = text[:MAX_PARAM_VALUE]
    return flat


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


class _RetryingClient:
    """MlflowClient whose calls retry with exponential backoff while SQLite reports a lock.

    Parallel jobs on one SQLite store collide on writes; SQLite answers "database is locked" instead of
    waiting long enough. Retrying for up to ~60 s loses no run and no metric.
    """

    def __init__(self, client, attempts: int = 12, first_delay_s: float = 0.05) -> None:
        self._client = client
        self._attempts = attempts
        self._first_delay_s = first_delay_s

    def __getattr__(self, name: str):
        if name.startswith("_"):  # not delegated (and keeps unpickling from recursing)
            raise AttributeError(name)
        target = getattr(self._client, name)
        if not callable(target):
            return target

        def call(*args, **kwargs):
            delay = self._first_delay_s
            for attempt in range(self._attempts):
                try:
                    return target(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - only lock errors are retried
                    if not _is_lock_error(exc) or attempt == self._attempts - 1:
                        raise
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 10.0)

        return call


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return _RetryingClient(MlflowClient(tracking_uri=uri))


def ensure_experiment(uri: str, name: str, config: TrackingConfig) -> str:
    """The experiment's id, creating it (with artifacts beside the store) if it does not exist."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri, config))
    except MlflowException:
        # Another job created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


HEARTBEAT_TAG = "mprec.heartbeat"
OWNER_TAG = "mprec.owner"
HEARTBEAT_S = 30.0


def mark_failed(client, run_id: str, message: str, details: str | None = None) -> None:
    """End a run FAILED with `message` as its `error` tag (and `details` as error/traceback.txt)."""
    try:
        client.set_tag(run_id, "error", message[:5000])
        if details:
            client.log_text(run_id, details, "error/traceback.txt")
    finally:
        client.set_terminated(run_id, status="FAILED")


class RunRecorder:
    """One MLflow run, always ended: FINISHED on success, FAILED with the error if the body raises.

    Usage: `with RunRecorder(run.tracking, "demo", "table-cpu", tags={...}) as rec:` then
    `rec.log_params(...)`, `rec.log_metrics({"latency_p50_ms": 1.2}, step=64)`, `rec.log_text(...)`.
    With `run_id`, it attaches to a run created elsewhere (a job process that hands the work to a
    worker) instead of creating one. While open, a thread refreshes a heartbeat tag, so a run whose
    process was killed can be told from one still running (`harness.jobs`).
    """

    def __init__(self, config: TrackingConfig, experiment_name: str, run_name: str,
                 tags: Mapping[str, str] | None = None, run_id: str | None = None) -> None:
        self.config = config
        self.uri = tracking_uri(config)
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.client: Any = None
        self.run_id: str | None = run_id
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> "RunRecorder":
        self.experiment_id = ensure_experiment(self.uri, self.experiment_name, self.config)
        self.client = _client(self.uri)
        if self.run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=self.tags)
            self.run_id = run.info.run_id
        elif self.tags:
            self.set_tags(self.tags)
        from harness.environment import process_identity

        self.client.set_tag(self.run_id, OWNER_TAG, process_identity())
        self._beat()
        self._heartbeat = threading.Thread(target=self._beat_forever, daemon=True, name="mlflow-heartbeat")
        self._heartbeat.start()
        return self

    def _beat(self) -> None:
        self.client.set_tag(self.run_id, HEARTBEAT_TAG, str(int(time.time())))

    def _beat_forever(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - a missed heartbeat must never break a measurement
                pass

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stop.set()
        if self.run_id is None:
            return False
        if exc is None:
            self.client.set_terminated(self.run_id, status="FINISHED")
            return False
        mark_failed(self.client, self.run_id, f"{exc_type.__name__}: {exc}",
                    "".join(traceback.format_exception(exc_type, exc, tb)))
        try:
            exc.mlflow_run_id = self.run_id  # lets the job's status name the run it failed
        except AttributeError:
            pass
        return False

    def find_finished_run(self, tags: Mapping[str, str]):
        """The newest FINISHED run of this experiment carrying all `tags` (not this run), or None."""
        clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()] + ["attributes.status = 'FINISHED'"]
        runs = self.client.search_runs([self.experiment_id], " and ".join(clauses), max_results=5,
                                       order_by=["attributes.start_time DESC"])
        return next((r for r in runs if r.info.run_id != self.run_id), None)

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> str:
        """A local copy of another run's artifact."""
        return self.client.download_artifacts(run_id, artifact_path, str(dst))

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for chunk in _chunks(items, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for chunk in _chunks(items, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_metric_rows([(k, v, step) for k, v in metrics.items()])

    def log_metric_rows(self, rows: Iterable[tuple[str, float, int]]) -> None:
        """(key, value, step) rows in as few calls as MLflow allows."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v, step in rows if v is not None]
        for chunk in _chunks(items, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=2, default=str), artifact_file)

    def log_file(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)


class Ledger:
    """What a job process needs of the store without opening a run: find, create, end runs."""

    def __init__(self, config: TrackingConfig, experiment_name: str) -> None:
        self.config = config
        self.uri = tracking_uri(config)
        self.experiment_id = ensure_experiment(self.uri, experiment_name, config)
        self.client = _client(self.uri)

    def find(self, tags: Mapping[str, str], statuses: tuple[str, ...] = ("FINISHED",)) -> list:
        clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        runs = self.client.search_runs([self.experiment_id], " and ".join(clauses), max_results=1000,
                                       order_by=["attributes.start_time DESC"])
        return [r for r in runs if r.info.status in statuses]

    def create(self, run_name: str, tags: Mapping[str, str]) -> str:
        return self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags)).info.run_id

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def get(self, run_id: str):
        return self.client.get_run(run_id)

    def fail(self, run_id: str, message: str, details: str | None = None) -> None:
        mark_failed(self.client, run_id, message, details)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)


def is_stale(run, now: float | None = None) -> bool:
    """A RUNNING run whose process is gone: dead on this machine, or silent for 4 heartbeats elsewhere."""
    from harness.environment import process_alive

    owner = run.data.tags.get(OWNER_TAG)
    if owner:
        alive = process_alive(owner)
        if alive is not None:
            return not alive
    now = time.time() if now is None else now
    beat = run.data.tags.get(HEARTBEAT_TAG)
    last = float(beat) if beat else run.info.start_time / 1000.0
    return now - last > 4 * HEARTBEAT_S


PER_SIZE_METRICS = ("latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "samples_per_s",
                    "feasible")


def load_runs(config: TrackingConfig, experiment_name: str, parent_run_id: str | None = None,
              kind: str = "latency") -> list[dict]:
    """Plain records of an experiment's runs of one kind: status, tags, params, latest metrics, and the
    per-query-size metrics (their histories, step = query size). [] if the experiment does not exist."""
    uri = tracking_uri(config)
    client = _client(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    clauses = [f"tags.`mprec.kind` = '{kind}'"]
    if parent_run_id:
        clauses.append(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    records = []
    page = None
    while True:
        runs = client.search_runs([experiment.experiment_id], " and ".join(clauses), max_results=1000,
                                  page_token=page)
        for r in runs:
            per_size = {key: {m.step: m.value for m in client.get_metric_history(r.info.run_id, key)}
                        for key in PER_SIZE_METRICS if key in r.data.metrics}
            records.append({"run_id": r.info.run_id, "status": r.info.status, "start_time": r.info.start_time,
                            "tags": dict(r.data.tags), "params": dict(r.data.params),
                            "metrics": dict(r.data.metrics), "per_size": per_size})
        page = runs.token
        if not page:
            return records


def log_analysis_run(config: TrackingConfig, experiment_name: str, folder: Path, tags: Mapping[str, str]) -> str:
    """One MLflow run holding an analysis' files as artifacts; returns its id."""
    ledger = Ledger(config, experiment_name)
    run_id = ledger.create("analysis", {"mprec.kind": "analysis", **tags})
    ledger.client.log_artifacts(run_id, str(folder))
    ledger.finish(run_id)
    return run_id
