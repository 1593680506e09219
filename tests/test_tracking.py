"""The tracking layer against a real SQLite MLflow store: quoted searches, runs always ended, study records;
bounded retries of a store that is away, and credentials kept out of what is recorded."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from harness.core.errors import ConfigError
from harness.core.schema import TrackingConfig
from harness.tracking import RunRecorder, Store, TrackingUnavailable
from harness.tracking.credentials import adopt_credentials
from harness.tracking.retry import CALL_LOG_ENV, RetryingClient, is_transient


@pytest.fixture
def tracking(store, tmp_path):
    return TrackingConfig(uri=store, results_dir=str(tmp_path / "results"), parent_run_id=None, retry_s=120,
                          request_timeout_s=60)


def test_a_search_finds_tag_values_with_quotes_exactly(tracking):
    experiment = Store(tracking, "quotes")
    plain = experiment.create_run("plain", {"note": "its"})
    quoted = experiment.create_run("quoted", {"note": "it's"})
    for run_id in (plain, quoted):
        experiment.finish(run_id)
    assert [r.info.run_id for r in experiment.find({"note": "it's"})] == [quoted]
    assert [r.info.run_id for r in experiment.find({"note": "its"})] == [plain]
    with pytest.raises(ValueError, match="cannot be searched for"):
        experiment.find({"note": "both ' and \""})


def test_an_experiment_opens_on_its_training_runs_in_mlflows_ui(tracking):
    experiment = Store(tracking, "kind")
    tags = experiment.client.get_experiment(experiment.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI trace overview


def test_a_study_reading_runs_creates_no_experiment(tracking):
    reader = Store(tracking, "nothing here", create=False)
    assert not reader.exists and reader.load_runs() == [] and reader.find({"run_key": "x"}) == []
    assert Store(tracking, "nothing here", create=False).exists is False


def test_a_recorded_run_ends_failed_with_its_error_and_finished_otherwise(tracking):
    experiment = Store(tracking, "runs")
    ok, bad = experiment.create_run("ok", {"mprec.kind": "latency"}), experiment.create_run("bad", {})
    with RunRecorder(experiment, ok, {"path": "table@cpu"}) as recorder:
        recorder.log_metric_rows([("latency_p50_ms", 1.5, 64), ("latency_p50_ms", 0.5, 1)])
    with pytest.raises(RuntimeError), RunRecorder(experiment, bad):
        raise RuntimeError("the device went away")
    assert experiment.status(ok) == "FINISHED" and experiment.status(bad) == "FAILED"
    assert experiment.get(bad).data.tags["error"] == "RuntimeError: the device went away"
    [record] = experiment.load_runs("latency")
    assert record["tags"]["path"] == "table@cpu" and record["per_size"]["latency_p50_ms"] == {1: 0.5, 64: 1.5}


def test_a_study_is_recorded_as_a_finished_run_of_its_kind_with_its_files(tracking, tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "serving.md").write_text("# headline\n")
    experiment = Store(tracking, "studies")
    run_id = experiment.record_files("serving", "serving", folder, {"target_ms": 10},
                                     {"static:table@cpu.max_qps": 12.5})
    run = experiment.get(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mprec.kind"] == "serving"
    assert run.data.metrics == {"static:table_cpu.max_qps": 12.5}  # '@' is not allowed in a metric name
    assert [f.path for f in experiment.client.list_artifacts(run_id)] == ["serving.md"]


# --- bounded retries (harness/tracking/retry.py) and credentials (credentials.py) ---------------------
REFUSED = ("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/get failed with exception "
           "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded (Caused by "
           "NewConnectionError('Failed to establish a new connection: [Errno 111] Connection refused'))")


class Flaky:
    """A stand-in MlflowClient whose `get_run` fails `failures` times with `error`, then answers."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures, self.calls = failures, 0
        self.error = error or MlflowException(REFUSED)

    def get_run(self, run_id):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return f"run {run_id}"


def test_a_call_rides_out_a_server_that_is_away_and_its_time_is_logged(tmp_path, monkeypatch):
    log_file = tmp_path / "calls.jsonl"
    monkeypatch.setenv(CALL_LOG_ENV, str(log_file))
    client = RetryingClient(Flaky(failures=3), retry_s=30, where="http://127.0.0.1:5000")
    assert client.get_run("abc") == "run abc"
    [line] = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert line["call"] == "get_run" and line["tries"] == 4 and line["ok"] is True and line["s"] > 0


def test_a_call_gives_up_within_retry_s_naming_the_bound_and_no_password(tmp_path, monkeypatch):
    monkeypatch.setenv(CALL_LOG_ENV, str(tmp_path / "calls.jsonl"))
    flaky = Flaky(failures=10**6)
    client = RetryingClient(flaky, retry_s=0.5, where="http://alice:s3cret@mlflow.lan:5000")
    began = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=r"tracking\.retry_s") as raised:
        client.get_run("abc")
    # The bound, not MLflow's 4 minutes: an upper limit a loaded machine cannot break (40x the bound).
    assert 0.5 <= time.monotonic() - began < 20.0
    assert flaky.calls > 2 and "s3cret" not in str(raised.value) and "mlflow.lan" in str(raised.value)
    assert json.loads((tmp_path / "calls.jsonl").read_text())["ok"] is False


@pytest.mark.parametrize("error", [
    MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code 401 != 200. "
                    "Response body: 'You are not authenticated.'"),
    MlflowException("Run 'abc' not found", error_code=RESOURCE_DOES_NOT_EXIST),
    ValueError("a bad value"),
])
def test_errors_that_cannot_pass_are_raised_at_once(error):
    flaky = Flaky(failures=1, error=error)
    with pytest.raises(type(error)):
        RetryingClient(flaky, retry_s=30, where="http://127.0.0.1:5000").get_run("abc")
    assert flaky.calls == 1


@pytest.mark.parametrize("text", [
    REFUSED,
    ("API request to http://h/api failed with exception HTTPConnectionPool(host='h', port=5000): Max retries "
     "exceeded with url: /api (Caused by ResponseError('too many 503 error responses'))"),
    "API request to http://h/api failed with timeout exception Read timed out.",
    ("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 502 != 200. "
     "Response body: ''"),
    "(sqlite3.OperationalError) database is locked",
    '(psycopg2.OperationalError) connection to server at "127.0.0.1", port 5432 failed: Connection refused',
])
def test_a_locked_or_unreachable_store_is_retried(text):
    assert is_transient(MlflowException(text))


def test_a_create_whose_answer_was_lost_makes_exactly_one_run(tracking):
    experiment = Store(tracking, "lost answers")

    class AnswerLost:  # the server creates the run, then dies before answering
        def __init__(self, client):
            self.client, self.lost = client, False

        def __getattr__(self, name):
            return getattr(self.client, name)

        def create_run(self, *args, **kwargs):
            run = self.client.create_run(*args, **kwargs)
            if not self.lost:
                self.lost = True
                raise MlflowException(REFUSED)
            return run

    experiment.client = RetryingClient(AnswerLost(experiment.client.unretried), retry_s=30, where="here")
    run_id = experiment.create_run("once", {"run_key": "k1"})
    runs = experiment.find({"run_key": "k1"}, ("RUNNING",))
    assert [r.info.run_id for r in runs] == [run_id]


def test_retry_s_and_request_timeout_are_checked(tracking):
    with pytest.raises(ConfigError, match="retry_s"):
        dataclasses.replace(tracking, retry_s=-1).check()
    with pytest.raises(ConfigError, match="request_timeout_s"):
        dataclasses.replace(tracking, request_timeout_s=0).check()


def test_a_uris_credentials_go_to_mlflows_variables_and_nothing_recorded_has_them(tracking, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert adopt_credentials("https://alice:p%40ss@mlflow.lan:5000/x") == "https://mlflow.lan:5000/x"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p@ss"
    assert adopt_credentials("sqlite:///results/mlflow.db") == "sqlite:///results/mlflow.db"

    experiment = Store(tracking, "credentials")
    secret_uri = "http://alice:s3cret@mlflow.lan:5000"
    run_id = experiment.create_run("creds", {"overrides": f"tracking.uri={secret_uri}"})
    with RunRecorder(experiment, run_id) as recorder:
        recorder.log_params({"tracking": {"uri": secret_uri}})
        recorder.log_dict({"uri": secret_uri}, "config.json")
    run = experiment.get(run_id)
    recorded = [json.dumps(run.data.params), json.dumps(run.data.tags),
                experiment.client.unretried.download_artifacts(run_id, "config.json")]
    recorded[2] = Path(recorded[2]).read_text()
    assert all("s3cret" not in text for text in recorded)
    assert run.data.params["tracking.uri"] == "http://***@mlflow.lan:5000"


def test_a_study_metric_retried_after_its_answer_was_lost_is_recorded_once(tracking, tmp_path):
    # The batch is written, then the answer is lost: the retry sends the same rows (same timestamp), which
    # MLflow's SQL store does not insert twice.
    experiment = Store(tracking, "metrics once")

    class AnswerLost:
        def __init__(self, client):
            self.client, self.lost = client, False

        def __getattr__(self, name):
            return getattr(self.client, name)

        def log_batch(self, *args, **kwargs):
            self.client.log_batch(*args, **kwargs)
            if not self.lost:
                self.lost = True
                raise MlflowException(REFUSED)

    experiment.client = RetryingClient(AnswerLost(experiment.client.unretried), retry_s=30, where="here")
    folder = tmp_path / "files"
    folder.mkdir()
    run_id = experiment.record_files("serving", "study", folder, {}, {"headline.ratio": 1.25})
    history = experiment.client.get_metric_history(run_id, "headline.ratio")
    assert [m.value for m in history] == [1.25]


def test_the_heartbeat_thread_has_ended_when_the_run_has(tracking):
    experiment = Store(tracking, "heartbeat")
    run_id = experiment.create_run("beat", {})
    with RunRecorder(experiment, run_id) as recorder:
        assert recorder._heartbeat is not None and recorder._heartbeat.is_alive()
    assert not recorder._heartbeat.is_alive()  # joined: its last write lands before the run's end
