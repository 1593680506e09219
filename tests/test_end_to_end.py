"""`python -m harness` as a user runs it, into a throw-away MLflow store, read back through MLflow."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from harness.core import trust

from .conftest import SMOKE, harness_env


def _runs(store: str, experiment: str = "mprec"):
    """The path runs of an experiment (a sweep's parent run is left out)."""
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    return [r for r in runs if r.data.tags.get("mprec.kind") == "latency"]


def test_a_run_is_recorded_with_metrics_tags_and_artifacts(run_harness, store, tmp_path):
    proc = run_harness(*SMOKE, "measure.device_peaks=true", store_uri=store)
    assert "query size" in proc.stdout and "table@cpu" in proc.stdout

    [run] = _runs(store)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["path"] == "table@cpu" and tags["representation"] == "table" and tags["backend"] == "cpu"
    assert len(tags["run_key"]) == 16 and tags["git_sha"] and tags["device_name"]
    assert run.data.params["dataset.scale"] == "0.0001"
    assert run.data.params["workload.query_sizes"] == "[1, 64]"
    assert int(run.data.params["backend_resolved.num_threads"]) >= 1

    client = MlflowClient(store)
    history = client.get_metric_history(run.info.run_id, "latency_p50_ms")
    assert sorted(m.step for m in history) == [1, 64]  # step = query size
    assert all(m.value > 0 for m in history)
    assert run.data.metrics["param_bytes"] > run.data.metrics["embedding_param_bytes"] > 0
    # The device's measured peaks (cached per device under results/) and each size's share of them.
    for key in ("device_gemm_gflops", "device_gather_gbps", "device_copy_gbps", "device_memory_bytes"):
        assert run.data.metrics[key] > 0, key
    # Cached, unless measured while the machine was busy (another test beside this one): then flagged.
    assert (tmp_path / "results" / "device_peaks.json").is_file() or "peaks_unreliable" in run.data.tags
    assert [m.step for m in client.get_metric_history(run.info.run_id, "fraction_of_gemm_peak")] == [1, 64]

    local = client.download_artifacts(run.info.run_id, "")
    raw = list(csv.DictReader(io.open(f"{local}/samples/latency_raw.csv")))
    iterations = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "iterations")}
    # Every attempt's samples are kept (a loaded machine measures a size again); the figures are the used
    # ones.
    assert len([r for r in raw if r["used"] == "1"]) == sum(iterations.values())
    assert {int(r["query_size"]) for r in raw} == {1, 64}
    env = json.load(open(f"{local}/environment.json"))
    assert "torch" in env["libraries"] and env["cpu"]["logical_cores"] >= 1
    assert "hostname" not in json.dumps(env).lower()
    assert "experiment: null" not in open(f"{local}/config/resolved.yaml").read()


def test_the_first_run_says_what_was_timed_and_where_it_went_and_a_rerun_shows_it_again(run_harness, store):
    first = run_harness(*SMOKE, store_uri=store).stdout.splitlines()
    assert first[0].startswith(
        "timed: inference of DLRM (synthetic_kaggle, scale 0.0001: 26 embedding features"
    )
    assert "a sample is one user-item pair (13 dense features, one id per feature)" in first[0]
    assert any(line.startswith("n: timed calls; ± CI: half-width of p50's 95 % interval") for line in first)
    [run] = _runs(store)
    [look] = [line for line in first if "look at it:" in line]
    assert look.strip() == f"look at it: mlflow ui --backend-store-uri {store}"  # whole, not wrapped
    experiment_id = mlflow.get_experiment_by_name("mprec").experiment_id
    assert (f"then open http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            in first[first.index(look) + 1])
    assert (
        f"recorded: MLflow run {run.info.run_id} (table@cpu synthetic_kaggle x0.0001 q1-64) in experiment "
        "'mprec'"
    ) in first

    again = run_harness(*SMOKE, store_uri=store)
    said = (again.stdout + again.stderr).count("skipped table@cpu")
    assert said == 1 and again.stdout.startswith(
        f"skipped table@cpu: already measured in run {run.info.run_id}"
    )
    table = _table_rows(first)
    assert len(table) == 2 and table == _table_rows(again.stdout.splitlines())  # the same figures


def _table_rows(lines: list[str]) -> list[str]:
    """The rows of the summary's table: the lines between its rule and the blank line after it."""
    start = next(i for i, line in enumerate(lines) if "────" in line) + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return lines[start:end]


def test_a_smoke_run_lands_in_its_own_experiment(run_harness, store):
    run_harness("+backend=cpu", "experiment=smoke", store_uri=store)
    assert len(_runs(store, "smoke")) == 1 and not _runs(store, "mprec")  # path comparisons stay clean


def test_multirun_sweep_records_one_run_per_job_in_one_experiment(run_harness, store, tmp_path):
    # isolate=never: the jobs share this process (tests/test_sweeps.py covers isolated jobs).
    run_harness("-m", *SMOKE, "dataset.scale=0.0001,0.0002", "experiment_name=sweep", "isolate=never",
                store_uri=store)
    runs = _runs(store, "sweep")
    assert sorted(r.data.params["dataset.scale"] for r in runs) == ["0.0001", "0.0002"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["run_key"] for r in runs}) == 2

    # The sweep ended by writing its analysis, logged as a run of its own...
    folder = tmp_path / "results" / "sweep" / "analysis"
    assert {"paths.csv", "mapping.csv", "mapping.md", "feasibility.csv", "report.html"} <= {
        p.name for p in folder.iterdir()}
    assert any(p.suffix == ".png" for p in folder.iterdir())
    # ...in the experiment's studies, beside its path runs rather than among them...
    assert not [r for r in mlflow.search_runs(experiment_names=["sweep"], output_format="list")
                if r.data.tags.get("mprec.kind") == "analysis"]
    [analysis] = mlflow.search_runs(experiment_names=["sweep-studies"], output_format="list")
    assert analysis.data.tags["mprec.kind"] == "analysis" and analysis.info.run_name == "analysis of sweep"
    client = MlflowClient(store)
    assert "report.html" in {a.path for a in client.list_artifacts(analysis.info.run_id)}  # MLflow renders it
    # ...and on the sweep's own run, one click from its row: latency vs query size on log axes, the report.
    [parent] = [r for r in mlflow.search_runs(experiment_names=["sweep"], output_format="list")
                if r.data.tags.get("mprec.kind") == "sweep"]
    on_parent = {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
    assert {"analysis/report.html", "analysis/latency_synthetic_kaggle_x0_0001.png"} <= on_parent
    assert {r.info.run_name for r in runs} == {"table@cpu synthetic_kaggle x0.0001 q1-64",
                                               "table@cpu synthetic_kaggle x0.0002 q1-64"}  # told apart
    # ...and `python -m harness.analysis` redoes it from MLflow alone.
    (folder / "mapping.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "harness.analysis", "experiment_name=sweep",
                           f"tracking.results_dir={tmp_path / 'results'}", "rank_by=throughput"],
                          cwd=tmp_path, env=harness_env(store), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "table@cpu" in (folder / "mapping.md").read_text()
    assert "query sizes" in proc.stderr  # the printed summary


def test_a_planted_interference_is_flagged_in_the_run_the_summary_and_the_report(run_harness, store,
                                                                                 tmp_path):
    # A fake reading of 1.5 cores used by other processes at q=64, every attempt: the size is measured again
    # (with its neighbour), then recorded unreliable; the analysis hatches it and says why.
    # The look at the machine between rounds is planted quiet (the burst at q=64 may have passed), and the
    # budget generous: this test is about the flag, not the cost.
    proc = run_harness(*SMOKE, "debug.interference={64: 1.5}", "debug.machine_load=0",
                       "measure.stability.retry_pause_s=0", "measure.stability.retry_budget=100",
                       store_uri=store)
    # (q=1 is judged on its own reading: flagged too only if this machine is busy, e.g. by a test beside this)
    assert "unreliable: " in proc.stdout and "q=64: other processes used 1.50 cores" in proc.stdout
    [run] = _runs(store)
    client = MlflowClient(store)
    reliable = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "reliable")}
    attempts = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "attempts")}
    assert reliable[64] == 0.0 and attempts[64] == 4  # first attempt, then 3 retries
    assert "q=64: other processes used 1.50 cores" in run.data.tags["unreliable"]
    planted = client.get_metric_history(run.info.run_id, "interference_other_cores")
    assert {m.step: m.value for m in planted}[64] == 1.5

    proc = subprocess.run([sys.executable, "-m", "harness.analysis", "experiment_name=mprec",
                           f"tracking.results_dir={tmp_path / 'results'}"],
                          cwd=tmp_path, env=harness_env(store), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "results" / "mprec" / "analysis"
    page = (folder / "report.html").read_text()
    assert 'class="path unreliable"' in page and "hatched: the cell compared a measurement" in page
    assert "unreliable at 64" in page or "unreliable at 1, 64" in page
    paths = (folder / "paths.csv").read_text().splitlines()
    header, row = paths[0].split(","), paths[1].split(",")
    assert row[header.index("reliable@64")] == "0.0" and row[header.index("reliable@1")] in ("0.0", "1.0")
    assert "(its own measurement unreliable)" in (folder / "mapping.md").read_text()


def test_a_steady_neighbour_is_said_at_the_start_and_its_sizes_are_flagged_without_measuring_again(
        run_harness, store, tmp_path):
    proc = run_harness(*SMOKE, "debug.interference={1: 1.5, 64: 1.5}", "debug.machine_load=1.5",
                       "measure.stability.retry_pause_s=0", store_uri=store)
    assert "the machine is busy (other processes used 1.50 cores" in proc.stderr
    assert "backend.num_threads=1" in proc.stderr  # the remedy, said before the first size
    assert proc.stderr.index("the machine is busy") < proc.stderr.index("table@cpu q=1:")
    [run] = _runs(store)
    attempts = {m.step: m.value for m in MlflowClient(store).get_metric_history(run.info.run_id, "attempts")}
    assert attempts == {1: 1, 64: 1}  # a retry could not succeed: none was made
    assert set(trust.parse(run.data.tags["unreliable"])) == {1, 64}
    assert "not measured again: q=1, q=64" in run.data.tags["remeasured"]
    [log] = (tmp_path / "results" / "runs").glob("*/harness.log")  # the terminal's lines, kept
    assert "the machine is busy" in log.read_text() and "table@cpu q=64: p50" in log.read_text()


def test_a_sweeps_analysis_is_about_that_sweep_and_prints_its_paths(run_harness, store, tmp_path):
    import pandas as pd

    common = ("-m", *SMOKE, "experiment_name=scoped", "isolate=never")
    run_harness(*common, "dataset.scale=0.0001", store_uri=store)
    second = run_harness(*common, "dataset.scale=0.0002", store_uri=store)
    mapping = tmp_path / "results" / "scoped" / "analysis" / "mapping.csv"
    assert set(pd.read_csv(mapping)["workload"]) == {"synthetic_kaggle x0.0002"}  # not the first sweep's
    assert "paths of this sweep, synthetic_kaggle x0.0002" in second.stderr and "table@cpu" in second.stderr
    run_harness(*common, "dataset.scale=0.0002", "analysis_scope=experiment", store_uri=store)  # all skipped
    assert set(pd.read_csv(mapping)["workload"]) == {"synthetic_kaggle x0.0001", "synthetic_kaggle x0.0002"}


def test_a_run_that_raises_is_ended_failed_with_the_error(run_harness, store):
    # 1 kB of "device memory" cannot hold the model: the run starts, then fails before building it.
    proc = run_harness(*SMOKE, "backend.memory_bytes=1000", store_uri=store, check=False)
    assert proc.returncode != 0
    [run] = _runs(store)
    assert run.info.status == "FAILED"
    assert "MemoryError" in run.data.tags["error"] and "needs" in run.data.tags["error"]


def test_default_store_is_sqlite_under_results(run_harness, tmp_path):
    run_harness(*SMOKE)
    db = tmp_path / "results" / "mlflow.db"
    assert db.is_file()
    [run] = _runs(f"sqlite:///{db}")
    assert run.info.artifact_uri.startswith((tmp_path / "results" / "artifacts").as_uri())


def test_every_representation_runs_and_logs_its_cost(run_harness, store):
    run_harness("-m", *SMOKE, "representation=table,tt,dhe,hybrid,select", "experiment_name=reps",
                "workload.query_sizes=[4]", "isolate=never", store_uri=store)
    runs = {r.data.tags["representation"]: r for r in _runs(store, "reps")}
    assert set(runs) == {"table", "tt", "dhe", "hybrid", "select"}
    for name, run in runs.items():
        assert run.info.status == "FINISHED", name
        for key in ("param_bytes", "flops_per_sample", "bytes_read_per_sample"):
            assert run.data.metrics[key] > 0, (name, key)
    metrics = {name: r.data.metrics for name, r in runs.items()}
    assert metrics["dhe"]["flops_per_sample"] > metrics["table"]["flops_per_sample"]
    # Hybrid holds both the tables and the decoders (at this tiny scale the decoders are the larger part).
    assert metrics["hybrid"]["param_bytes"] > max(
        metrics["table"]["param_bytes"], metrics["dhe"]["param_bytes"]
    )
    assert metrics["hybrid"]["top_input_width"] == 1394
    cost = MlflowClient(store).download_artifacts(runs["tt"].info.run_id, "cost.json")
    assert "tt_factorization" in json.load(open(cost))["embedding_details"]


TRAIN = ["dataset.scale=0.001", "train.steps=60", "train.eval_every=30", "train.log_every=10",
         "train.eval_samples=2048"]


def test_training_logs_quality_and_weights_then_another_run_reuses_them(run_harness, store):
    import torch

    from harness.core.conf import compose
    from harness.pipeline.config import load_config, workload_spec
    from harness.workload.dlrm import build_model

    run_harness(*SMOKE, *TRAIN, store_uri=store)
    run_harness(*SMOKE, *TRAIN, "workload.query_sizes=[8]", store_uri=store)  # as another backend would
    first, second = sorted(_runs(store), key=lambda r: r.info.start_time)
    assert first.data.tags["quality_trained"] == "true"
    for key in ("accuracy", "auc", "log_loss", "positive_rate"):
        assert 0 <= first.data.metrics[key] <= 1 or key == "log_loss"
        assert second.data.metrics[key] == first.data.metrics[key]
    assert second.data.tags["quality_source_run"] == first.info.run_id
    assert second.data.tags["quality_key"] == first.data.tags["quality_key"]
    assert "quality_trained" not in second.data.tags

    client = MlflowClient(store)
    steps = [m.step for m in client.get_metric_history(first.info.run_id, "eval_auc")]
    assert steps == [30, 60]
    # The reusing run scores its own throughput with the reused accuracy: correct predictions per second.
    throughput = {m.step: m.value for m in client.get_metric_history(second.info.run_id, "samples_per_s")}
    correct = {m.step: m.value for m in client.get_metric_history(second.info.run_id,
                                                                   "compare/correct_preds_per_s")}
    assert correct == pytest.approx({8: first.data.metrics["accuracy"] * throughput[8]})
    assert len(client.get_metric_history(first.info.run_id, "train_loss")) == 6

    weights = client.download_artifacts(first.info.run_id, "model/state_dict.pt")
    state = torch.load(weights, weights_only=True)
    model = build_model(workload_spec(load_config(compose(["dataset.scale=0.001"]))))
    model.load_state_dict(state)  # the trained weights load into a fresh model of the same spec
    assert not torch.equal(model.sparse_arch.weight, build_model(model.spec, seed=0).sparse_arch.weight)


def test_a_tt_run_that_keeps_every_table_plain_says_so_and_records_it(run_harness, store):
    proc = run_harness(*SMOKE, "representation=tt", store_uri=store)  # scale 0.0001: every table < min_rows
    assert (
        "note: tt@cpu is exactly the table model at dataset.scale=0.0001: its largest table has 1,014 rows, "
        "below representation.min_rows=100,000"
    ) in proc.stdout
    [run] = _runs(store)
    assert run.data.tags["tt_tables"] == "0 of 26" and run.data.tags["same_model_as"] == "table"


def test_tt_at_full_scale_keeps_its_large_tables_in_tt_form():
    from harness.core.conf import compose
    from harness.pipeline.plan import plan

    p = plan(compose(["+backend=cpu", "representation=tt", "dataset.scale=1.0"]))
    assert p.run_tags()["tt_tables"] == "7 of 26" and "same_model_as" not in p.run_tags() and p.notes() == []


def test_a_data_error_is_one_printable_line_in_the_terminal_and_the_run(run_harness, store, tmp_path):
    from .conftest import write_criteo_csv

    lines = write_criteo_csv(tmp_path / "sample.csv", rows=200).read_text().splitlines()
    lines[7] = lines[7].replace(",", ",\x01\x7f", 1) + ",extra"  # line 8: control bytes and a column too many
    path = tmp_path / "criteo.csv"
    path.write_text("\n".join(lines) + "\n")
    proc = run_harness(*SMOKE, "dataset=criteo_kaggle", f"dataset.path={path}", "dataset.strict=true",
                       "train.steps=4", "train.batch_size=32", "train.eval_samples=16", store_uri=store,
                       check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert line == f"error: {path}:8: expected 40 columns, found 41"
    [run] = _runs(store)
    assert (
        run.info.status == "FAILED"
        and run.data.tags["error"] == f"MalformedLine: {path}:8: expected 40 columns, found 41"
    )
    assert run.data.tags["error"].isprintable()


def test_malformed_criteo_lines_are_logged_with_the_count(run_harness, store, tmp_path):
    from .conftest import write_criteo_csv

    # Written here, not read from ../shared/data: the README's test command passes wherever it is cloned.
    lines = write_criteo_csv(tmp_path / "sample.csv", rows=200).read_text().splitlines()
    lines[5] = lines[5] + ",extra"
    lines[9] = "oops"
    path = tmp_path / "criteo.csv"
    path.write_text("\n".join(lines) + "\n")
    proc = run_harness(*SMOKE, "dataset=criteo_kaggle", f"dataset.path={path}", "dataset.scale=0.001",
                       "train.steps=4", "train.batch_size=32", "train.eval_samples=16", store_uri=store)
    [run] = _runs(store)
    assert run.data.metrics["data_malformed_lines"] == 2
    assert "line 6" in proc.stderr and "line 10" in proc.stderr


def test_the_rows_a_run_says_it_read_are_trainings_not_the_timing_pools(run_harness, store, tmp_path):
    from .conftest import write_criteo_csv

    # 60,000 rows: more than one 8 MB block of the reader. Training's 4 steps of 32 read the first block
    # only; the timing pool of 16 queries of 4096 then reads the whole file.
    path = write_criteo_csv(tmp_path / "big.csv", rows=60_000)
    run_harness(*SMOKE, "dataset=criteo_kaggle", f"dataset.path={path}", "dataset.scale=0.001",
                "train.steps=4", "train.batch_size=32", "train.eval_samples=16",
                "workload.query_sizes=[4096]", "measure.pool_samples=65536", store_uri=store)
    [run] = _runs(store)
    assert 0 < run.data.metrics["data_rows_read"] < 60_000


def test_ctrl_c_during_a_timed_size_ends_it_within_2_s_and_says_which_run_it_recorded(store, tmp_path):
    import signal
    import time

    # q=1 is timed for at least 60 s: the interrupt lands inside the timed loop
    proc = subprocess.Popen([sys.executable, "-m", "harness", *SMOKE, "measure.min_time_s=60",
                             "measure.max_time_s=90", f"tracking.results_dir={tmp_path / 'results'}"],
                            cwd=tmp_path, env=harness_env(store), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not any(r.info.status == "RUNNING" for r in _runs_or_none(store)):
        time.sleep(0.2)
    time.sleep(4)  # past the look at the machine and q=1's warm-up: in its timed calls
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    [run] = _runs(store)
    assert run.info.status == "KILLED"
    assert run.info.end_time / 1e3 - sent < 2.0  # the run was ended within 2 s of the interrupt
    assert f"interrupted: MLflow run {run.info.run_id} is recorded as KILLED" in err
    assert "Traceback" not in err


def test_ctrl_c_before_any_run_says_nothing_was_recorded(store, tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "harness", *SMOKE,
                             f"tracking.results_dir={tmp_path / 'r'}"],
                            cwd=tmp_path, env=harness_env(store), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.5)  # Python is still importing the harness
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130, or (once in three full runs under CI load) -2 with the same one line: Python re-raised SIGINT at
    # exit after the handler printed; not yet explained (closing note, stop 42). No traceback either way.
    assert proc.returncode in (130, -2) and "interrupted: nothing was recorded yet" in err, err[-2000:]
    assert "Traceback" not in err
    assert _runs_or_none(store) == []


def _runs_or_none(store: str) -> list:
    try:
        return _runs(store)
    except Exception:  # noqa: BLE001 - the experiment does not exist yet
        return []
