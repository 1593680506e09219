"""The tracking layer against a real SQLite MLflow store: quoted searches, runs always ended, study records."""

from __future__ import annotations

import pytest

from harness.core.schema import TrackingConfig
from harness.tracking import RunRecorder, Store


@pytest.fixture
def tracking(store, tmp_path):
    return TrackingConfig(uri=store, results_dir=str(tmp_path / "results"), parent_run_id=None)


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
