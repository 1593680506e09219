"""The MLflow store of one experiment: where it is, and every query and write the harness makes to it.

The store defaults to SQLite under `results/` (an explicit `sqlite:///` URI: MLflow 3's plain-file store
is gone) with artifacts beside it; `MLFLOW_TRACKING_URI` points a team at an `mlflow server` instead.
All calls go through an explicit `MlflowClient` and run id, never the fluent global "active run", so
jobs of one process (a Hydra multirun) cannot log into each other's runs. Search filters are built by
`tag_filter`, which quotes every value (and refuses what MLflow's syntax cannot quote). Every call
retries, for at most `tracking.retry_s`, a store that is locked or unreachable (retry.py); a URI's
credentials reach nothing the harness prints or records (credentials.py).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from harness.core.errors import printable
from harness.core.metrics import PER_SIZE
from harness.core.schema import TrackingConfig
from harness.tracking.credentials import adopt_credentials, redact
from harness.tracking.environment import process_alive
from harness.tracking.retry import RetryingClient, bound_mlflow_http

DB_FILE = "mlflow.db"
HEARTBEAT_TAG = "mprec.heartbeat"
OWNER_TAG = "mprec.owner"
# A token each run is created with, so that a retried create finds the run a lost answer had made.
CREATE_TAG = "mprec.create_token"
HEARTBEAT_S = 30.0
INTERRUPTED = "interrupted (Ctrl-C): run the same command again to resume"
KIND_TAG = "mprec.kind"  # latency (a path's run), sweep (a sweep's parent), analysis, serving
# A sweep's jobs name its run with this tag rather than MLflow's mlflow.parentRunId: nested runs start
# collapsed under their parent in MLflow's UI, which then charts no path until each sweep is expanded.
SWEEP_TAG = "mprec.sweep"
# MLflow 3's UI opens an experiment of this kind on its training runs (not the GenAI trace overview).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def studies_experiment(name: str) -> str:
    """Where the studies of experiment `name` (analysis, serving) are recorded: beside it, not among its
    path runs, whose comparisons their files and metrics would clutter in the MLflow UI."""
    return f"{name}-studies"
MAX_KEY = 250
# Per-size metrics the analysis and serving read back (their histories, step = query size): declared once,
# in harness/core/metrics.py.
PER_SIZE_METRICS = tuple(PER_SIZE)


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


def tag_filter(tags: Mapping[str, Any]) -> str:
    """An MLflow search filter matching every tag exactly.

    MLflow's search syntax has no escape inside a quoted value: a value is quoted with the quote it does
    not contain, and one it cannot quote (both quotes, or a backslash) is refused rather than mismatched.

    >>> tag_filter({"run_key": "ab12", "note": "it's"})
    'tags.`run_key` = \\'ab12\\' and tags.`note` = "it\\'s"'
    """
    clauses = []
    for key, value in tags.items():
        text = str(value)
        if "`" in key or "\\" in text or ("'" in text and '"' in text):
            raise ValueError(f"tag {key}={text!r} cannot be searched for exactly in MLflow's filter syntax")
        quote = '"' if "'" in text else "'"
        clauses.append(f"tags.`{key}` = {quote}{text}{quote}")
    return " and ".join(clauses)


def metric_name(text: str) -> str:
    """`text` as a valid MLflow metric name: letters, digits and _-. :/ (others become _), 250 chars."""
    return re.sub(r"[^\w\-. :/]", "_", text)[:MAX_KEY]


def client_for(uri: str, config: TrackingConfig) -> RetryingClient:
    """The MlflowClient of `uri` (credentials already adopted), its calls retried for `config.retry_s`."""
    # mlflow is imported here, not at the top: it costs ~1 s, and `dry_run=true` never touches a store.
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        bound_mlflow_http(config.request_timeout_s)
    return RetryingClient(MlflowClient(tracking_uri=uri), config.retry_s, uri)


class Store:
    """One experiment of one MLflow store: the harness's only way to read and write runs.

    `create=False` opens an experiment only if it exists (a study reading runs must not create one);
    then `exists` is False and searches return nothing.
    """

    def __init__(self, config: TrackingConfig, experiment_name: str, create: bool = True) -> None:
        self.config = config
        uri = adopt_credentials(tracking_uri(config))
        self.uri = redact(uri)  # what is printed and recorded: never a password
        self._artifacts = artifact_location(uri, config)
        self.experiment_name = experiment_name
        self.client = client_for(uri, config)
        self.experiment_id = self._ensure_experiment() if create else self._existing_experiment()

    @property
    def exists(self) -> bool:
        return self.experiment_id is not None

    def _existing_experiment(self) -> str | None:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        return experiment.experiment_id if experiment is not None else None

    def _ensure_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        existing = self._existing_experiment()
        if existing is not None:
            return existing
        try:
            return self.client.create_experiment(self.experiment_name, tags=EXPERIMENT_KIND,
                                                 artifact_location=self._artifacts)
        except MlflowException:
            existing = self._existing_experiment()  # another job created it between lookup and create
            if existing is None:
                raise
            return existing

    # --- runs -----------------------------------------------------------------------------------------
    def create_run(self, name: str, tags: Mapping[str, Any]) -> str:
        """A new RUNNING run; exactly one, even when the answer to a create is lost and it is retried."""
        token = uuid.uuid4().hex
        tags = {**{k: redact(str(v)) for k, v in tags.items()}, CREATE_TAG: token}

        def created():  # the run a lost answer had created, if any (asked without retries of its own)
            found = self.client.unretried.search_runs([self.experiment_id], tag_filter({CREATE_TAG: token}),
                                                      max_results=1)
            return found[0] if found else None

        run = self.client.call("create_run", self.experiment_id, run_name=name, tags=tags, recover=created)
        return run.info.run_id

    def get(self, run_id: str):
        return self.client.get_run(run_id)

    def status(self, run_id: str) -> str:
        return self.get(run_id).info.status

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, redact(str(value)))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, redact(text), artifact_file)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def fail(self, run_id: str, message: str, details: str | None = None) -> None:
        """End a run FAILED with `message` as its `error` tag (and `details` as error/traceback.txt); the tag
        holds printable text only, whatever bytes an error quoted."""
        try:
            self.client.set_tag(run_id, "error", printable(redact(message), 5000))
            if details:
                self.client.log_text(run_id, redact(details), "error/traceback.txt")
        finally:
            self.finish(run_id, "FAILED")

    def kill(self, run_id: str, reason: str = INTERRUPTED) -> None:
        """End a run KILLED (interrupted by the user), unless it has already ended."""
        if self.status(run_id) == "RUNNING":
            self.client.set_tag(run_id, "error", reason)
            self.finish(run_id, "KILLED")

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> str:
        """A local copy of a run's artifact."""
        return self.client.download_artifacts(run_id, artifact_path, str(dst))

    def record_files(self, kind: str, name: str, folder: Path, tags: Mapping[str, Any],
                     metrics: Mapping[str, float] | None = None) -> str:
        """One finished run of `kind` (analysis, serving) holding `folder`'s files and `metrics`."""
        from mlflow.entities import Metric

        run_id = self.create_run(name, {KIND_TAG: kind, **tags})
        # One timestamp, fixed before the first try: a retried batch is the same rows, never a second copy.
        now = int(time.time() * 1000)
        rows = [Metric(metric_name(key), float(value), now, 0) for key, value in (metrics or {}).items()]
        for start in range(0, len(rows), 1000):
            self.client.log_batch(run_id, metrics=rows[start:start + 1000])
        self.client.log_artifacts(run_id, str(folder))
        self.finish(run_id)
        return run_id

    # --- searches -------------------------------------------------------------------------------------
    def _search(self, filter_string: str, **kwargs) -> list:
        if not self.exists:
            return []
        runs, page = [], None
        while True:
            found = self.client.search_runs([self.experiment_id], filter_string, max_results=1000,
                                            page_token=page, **kwargs)
            runs += list(found)
            page = found.token
            if not page:
                return runs

    def find(self, tags: Mapping[str, Any], statuses: tuple[str, ...] = ("FINISHED",)) -> list:
        """Runs carrying all `tags` in one of `statuses`, newest first."""
        runs = self._search(tag_filter(tags), order_by=["attributes.start_time DESC"])
        return [r for r in runs if r.info.status in statuses]

    def newest_finished(self, tags: Mapping[str, Any], other_than: str | None = None):
        """The newest FINISHED run carrying all `tags` (not `other_than`), or None."""
        return next((r for r in self.find(tags) if r.info.run_id != other_than), None)

    def size_metrics(self, run_id: str, keys: tuple[str, ...] | None = None) -> dict[str, dict[int, float]]:
        """A run's per-query-size metrics (their histories, step = query size): key -> {size: value}."""
        run = self.get(run_id)
        wanted = keys or tuple(run.data.metrics)
        return {key: {m.step: m.value for m in self.client.get_metric_history(run_id, key)}
                for key in wanted if key in run.data.metrics}

    def load_runs(self, kind: str = "latency", parent_run_id: str | None = None) -> list[dict]:
        """Plain records of the experiment's runs of one kind: status, tags, params, latest metrics, and
        the per-query-size metrics (their histories, step = query size). [] if there is no experiment."""
        tags = {KIND_TAG: kind, **({SWEEP_TAG: parent_run_id} if parent_run_id else {})}
        records = []
        for r in self._search(tag_filter(tags)):
            per_size = {
                key: {m.step: m.value for m in self.client.get_metric_history(r.info.run_id, key)}
                for key in PER_SIZE_METRICS
                if key in r.data.metrics
            }  # one search, no get_run per run
            records.append({"run_id": r.info.run_id, "status": r.info.status, "start_time": r.info.start_time,
                            "tags": dict(r.data.tags), "params": dict(r.data.params),
                            "metrics": dict(r.data.metrics), "per_size": per_size})
        return records


def is_stale(run, now: float | None = None) -> bool:
    """A RUNNING run whose process is gone: dead on this machine, or silent for 4 heartbeats elsewhere."""
    owner = run.data.tags.get(OWNER_TAG)
    if owner:
        alive = process_alive(owner)
        if alive is not None:
            return not alive
    now = time.time() if now is None else now
    beat = run.data.tags.get(HEARTBEAT_TAG)
    last = float(beat) if beat else run.info.start_time / 1000.0
    return now - last > 4 * HEARTBEAT_S
