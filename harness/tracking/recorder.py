"""One MLflow run being recorded: params, tags, metrics and artifacts, always ended.

    store = Store(run.tracking, "mprec")
    with RunRecorder(store, store.create_run("table-cpu", tags)) as rec:
        rec.log_params({...}); rec.log_metrics({"latency_p50_ms": 1.2}, step=64); rec.log_text(...)

The run ends FINISHED when the body returns, FAILED, with the error as its `error` tag and the
traceback as `error/traceback.txt`, when it raises, and KILLED when the user interrupts it (Ctrl-C).
While open, a thread refreshes a heartbeat tag (and is joined before the run ends) and the run names its
process, so a run whose process was killed can be told from one still running. A URI's
credentials in a param, tag or text are redacted (credentials.py).
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from harness.tracking.credentials import redact
from harness.tracking.environment import process_identity
from harness.tracking.store import HEARTBEAT_S, HEARTBEAT_TAG, MAX_KEY, OWNER_TAG, Store

# MLflow's limits (mlflow.utils.validation): param values 6000 chars, and per log_batch call 100 params,
# 100 tags, 1000 metrics.
MAX_PARAM_VALUE = 6000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


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


class RunRecorder:
    """Records into the existing run `run_id` of `store`; `tags` are set when the recording starts."""

    def __init__(self, store: Store, run_id: str, tags: Mapping[str, Any] | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.tags = dict(tags or {})
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def client(self):
        return self.store.client

    def __enter__(self) -> "RunRecorder":
        if self.tags:
            self.set_tags(self.tags)
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

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        self._stop.set()
        if self._heartbeat is not None:  # its last beat lands before the run ends, not after
            self._heartbeat.join(timeout=HEARTBEAT_S)
        if exc is None:
            self.store.finish(self.run_id)
        elif isinstance(exc, KeyboardInterrupt):  # the user stopped it: KILLED, not a failure to explain
            self.store.kill(self.run_id)
        else:
            self.store.fail(self.run_id, f"{exc_type.__name__}: {exc}",
                            "".join(traceback.format_exception(exc_type, exc, tb)))
        return False

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(v)) for k, v in flatten(params).items()]
        for chunk in _chunks(items, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, redact(str(v))) for k, v in tags.items()]
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
        self.client.log_text(self.run_id, redact(text), artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=2, default=str), artifact_file)

    def log_file(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)
