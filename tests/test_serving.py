"""Serving: the policies' rules, the simulator against queueing theory, bad input, the CLI, LoadGen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.serving import policies as pol
from harness.serving.profiles import PathProfile
from harness.serving.simulator import arrivals, max_qps, simulate
from harness.serving.sizes import MLPERF_QUANTILES, from_quantiles, read_quantiles
from harness.serving.study import check_target

TABLE = PathProfile("table@cpu", "cpu", 0.75, (1, 64, 1024), (0.5, 2.0, 20.0))
DHE_GPU = PathProfile("dhe@gpu", "gpu", 0.80, (1, 64, 1024), (1.0, 1.5, 6.0))
HYBRID_GPU = PathProfile("hybrid@gpu", "gpu", 0.82, (1, 64, 1024), (1.2, 2.5, 15.0))


def test_static_and_size_threshold_route_as_told():
    assert pol.Static(TABLE).choose(500, 1.0, {})[0][0] is TABLE
    threshold = pol.SizeThreshold(TABLE, DHE_GPU, 100)  # 100: the first size the large path serves
    assert threshold.choose(99, 10, {})[0][0] is TABLE and threshold.choose(100, 10, {})[0][0] is DHE_GPU


def test_mprec_breaks_a_tie_in_accuracy_by_completion_at_this_size():
    # One representation on two devices: equally accurate. The cpu is faster at 64, the gpu at 4096.
    cpu = PathProfile("table@cpu", "cpu", 0.78, (64, 4096), (0.5, 40.0))
    gpu = PathProfile("table@cuda", "cuda", 0.78, (64, 4096), (0.8, 2.0))
    policy = pol.MPRec([cpu, gpu])
    assert policy.choose(4096, 50.0, {})[0][0] is gpu  # 2 ms, not 40 ms, though both make 50 ms
    assert policy.choose(64, 50.0, {})[0][0] is cpu
    assert policy.choose(4096, 50.0, {"cuda": 45.0})[0][0] is cpu  # 40 ms beats 45 ms of queue + 2
    # accuracy still comes first: a more accurate path that makes it wins over a faster one
    dhe = PathProfile("dhe@cuda", "cuda", 0.80, (64, 4096), (1.0, 30.0))
    assert pol.MPRec([cpu, gpu, dhe]).choose(4096, 50.0, {})[0][0] is dhe


def test_the_size_threshold_sends_the_crossover_size_to_the_path_faster_there():
    [policy] = pol.SizeThreshold.instances([TABLE, DHE_GPU], np.array([1, 50, 1000]), None)
    at = policy.threshold  # table: 0.5 + 1.5 (q-1)/63 ms, dhe: 1 + 0.5 (q-1)/63: equal at 32.5
    assert at == 33
    assert policy.choose(at, 10, {})[0][0] is DHE_GPU and DHE_GPU.service_ms(at) < TABLE.service_ms(at)
    below = at - 1
    assert policy.choose(below, 10, {})[0][0] is TABLE and TABLE.service_ms(below) < DHE_GPU.service_ms(below)


def test_one_path_fastest_at_every_size_is_a_single_path_threshold_that_says_so():
    fast = PathProfile("table@gpu", "gpu", 0.75, (1, 64, 1024), (0.1, 0.5, 4.0))
    [policy] = pol.SizeThreshold.instances([TABLE, fast], np.array([1, 50, 1000]), None)
    assert policy.threshold is None and policy.name == "threshold:table@gpu (fastest at every size)"
    assert all(policy.choose(q, 10, {})[0][0] is fast for q in (1, 33, 1000))


def test_mprec_takes_the_most_accurate_path_that_meets_the_target():
    policy = pol.MPRec([TABLE, DHE_GPU, HYBRID_GPU])
    assert policy.choose(64, 10.0, {"cpu": 0, "gpu": 0})[0][0] is HYBRID_GPU
    # hybrid would finish at 8 + 2.5 > 10 ms; dhe at 8 + 1.5 <= 10 ms
    assert policy.choose(64, 10.0, {"cpu": 0, "gpu": 8.0})[0][0] is DHE_GPU
    # the gpu queue is too long for both: the table on the idle cpu
    assert policy.choose(64, 10.0, {"cpu": 0, "gpu": 20.0})[0][0] is TABLE
    # nobody makes it: whoever finishes first
    assert policy.choose(1024, 1.0, {"cpu": 0, "gpu": 0})[0][0] is DHE_GPU
    slack = pol.MPRec([TABLE, DHE_GPU, HYBRID_GPU], slack=0.5)
    assert slack.choose(64, 10.0, {"cpu": 0, "gpu": 3.0})[0][0] is DHE_GPU  # 3 + 2.5 > 5; 3 + 1.5 <= 5


def test_mprec_split_divides_a_query_no_single_path_can_finish():
    policy = pol.MPRecSplit([TABLE, DHE_GPU], min_size=64)
    parts = policy.choose(1024, 5.0, {"cpu": 0, "gpu": 0})
    assert {p.path for p, _ in parts} == {"table@cpu", "dhe@gpu"} and sum(n for _, n in parts) == 1024
    assert len(policy.choose(64, 5.0, {"cpu": 0, "gpu": 0})) == 1  # fits as it is


def test_the_threshold_policy_sends_large_queries_to_the_path_fast_on_them():
    [policy] = pol.SizeThreshold.instances([TABLE, DHE_GPU], np.array([1, 50, 1000]), None)
    assert policy.small is TABLE and policy.large is DHE_GPU and 1 <= policy.threshold <= 64


def test_arrivals_are_a_poisson_process():
    gaps = np.diff(arrivals(np.random.default_rng(0), 200_000, qps=250.0))
    assert gaps.mean() == pytest.approx(1 / 250, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)  # exponential: CV 1
    assert len(np.unique(gaps)) == len(gaps)  # times, not integer ticks


def test_simulator_matches_md1_queueing_theory():
    service = PathProfile("x@cpu", "cpu", 0.8, (1, 2), (2.0, 2.0))  # 2 ms, deterministic
    qps, n = 300.0, 200_000  # rho = 0.6
    r = simulate(pol.Static(service), [service], arrivals(np.random.default_rng(1), n, qps), np.ones(n, int),
                 100)
    rho, mu = qps * 0.002, 1 / 0.002
    wait_ms = 1e3 * rho / (2 * mu * (1 - rho))  # Pollaczek-Khinchine for M/D/1
    assert r.latency_ms.mean() == pytest.approx(2.0 + wait_ms, rel=0.03)
    assert r.utilisation("cpu") == pytest.approx(rho, rel=0.02)


def test_simulation_is_deterministic_and_counts_correct_predictions():
    sizes = np.random.default_rng(0).integers(1, 200, 5000)
    run = lambda: simulate(pol.MPRec([TABLE, DHE_GPU]), [TABLE, DHE_GPU],  # noqa: E731
                           arrivals(np.random.default_rng(3), 5000, 100.0), sizes, 5.0)
    a, b = run(), run()
    assert np.array_equal(a.latency_ms, b.latency_ms)
    ok = a.latency_ms <= 5.0
    assert a.correct_per_s == pytest.approx(np.sum(a.accuracy[ok] * sizes[ok]) / a.duration_s)
    assert 0.75 <= a.accuracy_served <= 0.80


def test_max_qps_is_the_edge_of_the_target():
    sizes = np.full(20_000, 64)
    qps, result = max_qps(pol.Static(TABLE), [TABLE], sizes, 5.0, 99, seed=0)
    assert result.percentile(99) <= 5.0
    base = np.cumsum(np.random.default_rng([0, 0xA11]).exponential(1.0, len(sizes)))
    assert simulate(pol.Static(TABLE), [TABLE], base / (qps * 1.05), sizes, 5.0).percentile(99) > 5.0
    assert 50 < qps < 500  # 2 ms of service: capacity 500 QPS


def test_a_target_no_path_can_meet_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match=r"no path meets p99 <= 1 ms.*1024 samples.*dhe@gpu"):
        check_target([TABLE, DHE_GPU], np.full(100, 1024), 1.0, 99)


def test_an_empty_profile_is_refused():
    with pytest.raises(ValueError, match="empty profile"):
        PathProfile("x@cpu", "cpu", 0.7, (), ())


def test_a_latency_only_profile_file_takes_its_representations_accuracy(tmp_path):
    from harness.serving import profiles as prof

    gpu = PathProfile("table@cuda", "cuda", None, (1, 64), (0.1, 0.2), source="gpu check")
    prof.save([gpu, PathProfile("tt@cuda", "cuda", None, (1,), (0.3,))], tmp_path / "gpu.json",
              {"source": "x"})
    filled = prof.with_accuracy_of([TABLE, DHE_GPU], prof.load(tmp_path / "gpu.json"))
    assert filled[0].accuracy == TABLE.accuracy and "accuracy of table@cpu" in filled[0].source
    assert filled[1].accuracy is None  # no measured tt path: nothing to borrow
    assert prof.with_accuracy_of([TABLE], [DHE_GPU])[0].accuracy == 0.80  # a measured accuracy stays


def test_quantile_files(tmp_path):
    sizes = from_quantiles(np.random.default_rng(0), 50_000, read_quantiles(MLPERF_QUANTILES))
    assert sizes.min() >= 100 and sizes.max() <= 700 and 180 <= np.median(sizes) <= 220
    bad = tmp_path / "q.txt"
    bad.write_text("100, 200, -5, 300")
    with pytest.raises(ValueError, match=r"q.txt: query sizes must be >= 1; value -5 at position 3"):
        read_quantiles(bad)


def _measure(run_harness, store, *args):
    run_harness("-m", "+backend=cpu", "experiment=smoke", "experiment_name=mprec", "representation=table,dhe",
                "dataset.scale=0.001", "workload.query_sizes=[1,32,256]", "isolate=never", "train.steps=10",
                "train.eval_every=10", "train.eval_samples=256", *args, store_uri=store)


SCALED = ("scaled_devices=[{source: cpu, device: gpu-scaled, per_sample_speedup: {table: 4.0, dhe: 20.0}, "
          "fixed_ms: 0.2, label: 'scaled, not measured'}]")


def test_serving_cli_writes_the_policy_table_plot_and_an_mlflow_run(run_harness, store, tmp_path):
    import subprocess
    import sys

    import mlflow

    from .conftest import harness_env

    _measure(run_harness, store)
    proc = subprocess.run([sys.executable, "-m", "harness.serving",
                           f"tracking.results_dir={tmp_path / 'results'}", "target_ms=100", "queries=2000",
                           "load_points=3", SCALED], cwd=tmp_path, env=harness_env(store),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "results" / "mprec" / "serving"
    assert {"serving.csv", "serving_load.csv", "serving.md", "serving.png", "profiles.json"} <= {
        p.name for p in folder.iterdir()}
    text = (folder / "serving.md").read_text()
    assert "static:table@cpu" in text and "mprec" in text and "Headline" in text
    # Every policy is reported without and with device batching (conf/serving.yaml: batching.enabled).
    assert "| static:table@cpu +batching |" in text and "**With device batching**" in text
    assert "dhe@gpu-scaled: scaled, not measured" in text
    profiles = json.loads((folder / "profiles.json").read_text())["paths"]
    assert {p["path"] for p in profiles} >= {"table@cpu", "dhe@cpu", "table@gpu-scaled", "dhe@gpu-scaled"}
    mlflow.set_tracking_uri(store)
    [run] = [r for r in mlflow.search_runs(experiment_names=["mprec-studies"], output_format="list")
             if r.data.tags.get("mprec.kind") == "serving"]
    assert run.data.metrics["ratio"] > 0 and run.data.metrics["mprec.max_qps"] > 0
    assert run.data.metrics["batching.ratio"] > 0


def test_serving_refuses_an_impossible_target(run_harness, store, tmp_path):
    import subprocess
    import sys

    from .conftest import harness_env

    _measure(run_harness, store)
    proc = subprocess.run([sys.executable, "-m", "harness.serving",
                           f"tracking.results_dir={tmp_path / 'results'}", "target_ms=0.001", "queries=500"],
                          cwd=tmp_path, env=harness_env(store), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no path meets p99 <= 0.001 ms" in proc.stderr


def test_a_study_without_its_measured_inputs_is_refused_with_the_command_that_records_them(store, tmp_path):
    import subprocess
    import sys

    from .conftest import harness_env

    # The headline's GPU profiles exist (shipped); its CPU runs, which give every path its accuracy, do not.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.serving",
            "serving=mprec_headline_h200",
            f"tracking.results_dir={tmp_path / 'results'}",
        ],
        cwd=tmp_path,
        env=harness_env(store),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "no measured accuracy for dhe@cuda, hybrid@cuda, table@cuda, tt@cuda" in line
    assert line.endswith("python -m harness experiment=mprec_headline")
    assert (
        "nan" not in proc.stdout.lower()
        and not (tmp_path / "results" / "mprec_headline" / "serving").exists()
    )


def test_live_serving_under_loadgen_and_a_failing_path(run_harness, store, tmp_path, monkeypatch):
    pytest.importorskip("mlperf_loadgen", reason="pip install -e '.[loadgen]'")
    from harness.core.conf import compose
    from harness.serving import load_serving_config, run_serving

    _measure(run_harness, store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    base = [f"tracking.results_dir={tmp_path / 'results'}", "target_ms=200", "queries=1000", "load_points=2",
            "live.enabled=true", "live.duration_s=2", "live.qps=40", "live.samples=64", "sizes.median=20",
            "sizes.max=256"]
    # Live with device batching: queries queued for one path share calls.
    result = run_serving(load_serving_config(compose([*base, "live.batching=true"], config_name="serving")),
                         quiet=True)
    live = result["live"]
    assert live["live_served"] >= 40 and live["live_errors"] == 0
    assert live["live_batching"] == 1 and 0 < live["live_calls"] <= live["live_served"]
    assert live["live_p99_ms"] > 0 and live["simulated_p99_ms"] > 0 and np.isfinite(live["prediction_error"])
    assert live["live_achieved_qps"] > 0 and live["live_validity"] in ("VALID", "INVALID")
    assert (result["folder"] / "loadgen" / "mlperf_log_detail.txt").is_file()

    # A path that raises answers every query with an error response: LoadGen finishes, the run says so.
    broken = [*base, "live.policy=static:dhe@cpu", "live.fault_path=dhe@cpu"]
    live = run_serving(load_serving_config(compose(broken, config_name="serving")), quiet=True)["live"]
    assert live["live_errors"] >= 40 and live["live_served"] == 0


def test_the_measured_gpu_scenario_reads_the_recorded_h200_profiles():
    from hydra import compose, initialize_config_dir

    from harness.serving import profiles as prof

    repo = Path(__file__).resolve().parent.parent
    with initialize_config_dir(config_dir=str(repo / "conf"), version_base="1.3"):
        cfg = compose("serving", overrides=["serving=mprec_headline_h200"])
    assert cfg.scaled_devices == [] and cfg.sizes.kind == "mlperf"
    [path] = cfg.profile_files
    assert path == "builtin:gpu_profiles_h200.json"
    loaded = prof.load(path)
    assert sorted(p.path for p in loaded) == ["dhe@cuda", "hybrid@cuda", "table@cuda", "tt@cuda"]
    assert all(p.device == "NVIDIA H200" and p.accuracy is None and "H200" in p.source for p in loaded)


def test_profiles_carry_each_sizes_reliability_and_the_study_names_unreliable_inputs(tmp_path):
    from harness.analysis.runs import join_quality, tidy
    from harness.serving import profiles as prof
    from harness.serving.run import reliability_of_inputs

    def rec(path, reliable):
        per = {"latency_p50_ms": {1: 0.5, 64: 2.0}, "latency_p99_ms": {1: 0.6, 64: 2.5},
               "samples_per_s": {1: 2000.0, 64: 32000.0}, "feasible": {1: 1.0, 64: 1.0}}
        if reliable is not None:
            per["reliable"] = reliable
        return {"run_id": path, "status": "FINISHED", "start_time": 0,
                "tags": {"path": path, "representation": path.split("@")[0], "backend": "cpu",
                         "device_name": "cpu"},
                "params": {"dataset.name": "synthetic_kaggle", "dataset.scale": "0.01"},
                "metrics": {"accuracy": 0.78, "param_bytes": 1e6}, "per_size": per}

    profiles = prof.from_runs(join_quality(tidy([rec("table@cpu", {1: 1.0, 64: 0.0}), rec("dhe@cpu", None)])))
    by_path = {p.path: p for p in profiles}
    assert by_path["table@cpu"].unreliable_sizes() == [64] and by_path["dhe@cpu"].unreliable_sizes() == []
    sentence = reliability_of_inputs(profiles)
    assert "unreliable inputs" in sentence and "table@cpu at 64" in sentence
    assert "reliability unknown for dhe@cpu" in sentence
    # A profile file keeps the flags (JSON null for unknown), and one without them is unknown.
    prof.save(profiles, tmp_path / "p.json", {"source": "test"})
    assert json.loads((tmp_path / "p.json").read_text())["paths"][0]["reliable"] in ([None, None], [1.0, 0.0])
    again = {p.path: p for p in prof.load(tmp_path / "p.json")}
    assert again["table@cpu"].unreliable_sizes() == [64]
    assert reliability_of_inputs([TABLE]) == "reliability unknown for table@cpu."
    trusted = PathProfile("table@cpu", "cpu", 0.75, (1, 64), (0.5, 2.0), reliable=(1.0, 1.0))
    assert reliability_of_inputs([trusted]) == "Every input latency passed the stability rules."



# --- the studies are right (issue 23) -----------------------------------------------------------------------

def _study_config(**overrides):
    from harness.core.conf import compose
    from harness.serving.run import load_serving_config

    items = [f"{k}={v}" for k, v in {"queries": 2000, "load_points": 3, "batching.enabled": "false",
                                     **overrides}.items()]
    return load_serving_config(compose(items, config_name="serving"))


def test_one_path_measured_on_two_workloads_is_never_one_profile():
    from harness.analysis.runs import join_quality, tidy
    from harness.core.errors import ConfigError
    from harness.serving import profiles as prof

    def rec(scale, ms, accuracy):
        per = {"latency_p50_ms": {1: ms, 64: 4 * ms}, "latency_p99_ms": {1: ms, 64: 4 * ms},
               "samples_per_s": {1: 1e3 / ms, 64: 64e3 / (4 * ms)}, "feasible": {1: 1.0, 64: 1.0}}
        return {"run_id": f"table-{scale}", "status": "FINISHED", "start_time": 0,
                "tags": {"path": "table@cpu", "representation": "table", "backend": "cpu",
                         "device_name": "cpu"},
                "params": {"dataset.name": "synthetic_kaggle", "dataset.scale": scale},
                "metrics": {"accuracy": accuracy, "param_bytes": 1e6}, "per_size": per}

    runs = join_quality(tidy([rec("0.01", 0.5, 0.70), rec("0.1", 5.0, 0.78)]))
    with pytest.raises(ConfigError, match=r"config key 'workload'.*2 workloads \(synthetic_kaggle x0.01; "
                                          r"synthetic_kaggle x0.1\)"):
        prof.from_runs(runs)
    [small] = prof.from_runs(runs, "synthetic_kaggle x0.01")
    assert small.sizes == (1, 64) and small.latency_ms == (0.5, 2.0) and small.accuracy == 0.70
    assert "synthetic_kaggle x0.01" in small.source
    with pytest.raises(ConfigError, match="'criteo x1' has no finished latency run"):
        prof.from_runs(runs, "criteo x1")


def test_the_headline_finds_policies_by_kind_and_computes_the_ratio_to_the_size_threshold_policy():
    from harness.serving.study import run_study

    study = run_study(_study_config(), [TABLE, DHE_GPU])
    kinds = dict(zip(study.table["policy"], study.table["kind"]))
    assert kinds["static:table@cpu"] == "static" and kinds["mprec"] == "mprec"
    [threshold] = [p for p, k in kinds.items() if k == "size_threshold"]
    assert threshold.startswith("threshold:")  # named otherwise than its kind: found by kind all the same
    head = study.headline
    row = study.table.set_index("policy").loc[threshold]
    assert head["size_threshold_correct_per_s"] == pytest.approx(row["correct_per_s"])
    assert head["ratio_vs_size_threshold"] == pytest.approx(
        head["mprec_correct_per_s"] / row["correct_per_s"]
    )
    # Why MP-Rec gains: the ratio is exactly the accuracy served times the samples served per second.
    assert head["accuracy_term"] * head["throughput_term"] == pytest.approx(head["ratio"])
    mprec = study.table.set_index("policy").loc[head["mprec_policy"]]
    static = study.table.set_index("policy").loc[head["best_static"]]
    assert head["accuracy_term"] == pytest.approx(mprec["accuracy_served"] / static["accuracy_served"])


def test_a_label_on_two_devices_is_two_servers_and_a_duplicate_is_refused():
    from harness.serving import profiles as prof

    here = PathProfile("table@cpu", "AMD EPYC", 0.75, (1, 64), (0.5, 2.0), source="this experiment")
    there = PathProfile("table@cpu", "Intel Xeon", 0.75, (1, 64), (5.0, 20.0), source="gpu check file")
    named = prof.distinguish([here, there])
    assert [p.name for p in named] == ["table@cpu (AMD EPYC)", "table@cpu (Intel Xeon)"]
    # Each keeps its own service table: a query on the slow one takes its own 5 ms, not the other's 0.5.
    for profile, expected in zip(named, (0.5, 5.0)):
        r = simulate(pol.Static(profile), named, np.array([0.001]), np.array([1]), 100.0)
        assert r.latency_ms[0] == pytest.approx(expected) and r.path_samples[profile.name] == 1
    with pytest.raises(ValueError,
                       match=r"two profiles of table@cpu on AMD EPYC: this experiment and a file"):
        prof.distinguish([here, PathProfile("table@cpu", "AMD EPYC", 0.7, (1,), (1.0,), source="a file")])


def test_scaled_stand_ins_exist_for_reduced_precision_and_int8_paths():
    from harness.serving.config import ScaledDevice
    from harness.serving.study import scaled_profiles

    measured = [PathProfile(p, "cpu", 0.75, (1, 64), (0.5, 2.0)) for p in ("table@cpu/bf16", "table:int8@cpu",
                                                                           "dhe[k=512]+cache@cpu")]
    stand_ins = scaled_profiles(measured, [ScaledDevice("cpu", "gpu-scaled", {"table": 4.0, "dhe": 8.0}, 0.1,
                                                        "x")])
    assert [p.path for p in stand_ins] == ["table@gpu-scaled/bf16", "table:int8@gpu-scaled",
                                           "dhe[k=512]+cache@gpu-scaled"]


class Recorder:
    """A fake adapter for live serving: records the rows each call served."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def serve(self, batch):
        self.rows.append(batch.dense.shape[0])


def test_live_serving_dispatches_every_part_of_a_split_query(monkeypatch):
    import sys
    import types

    from harness.data.pool import Batch
    from harness.serving.live import LivePath, serve

    completed, issued = [], {}

    class FakeLoadGen(types.SimpleNamespace):
        """Enough of mlperf_loadgen to issue two queries and collect their completions."""

    lg = FakeLoadGen(QuerySampleResponse=lambda sid, a, b: sid,
                     QuerySamplesComplete=lambda responses: completed.extend(responses),
                     ConstructSUT=lambda issue, flush: issued.setdefault("issue", issue),
                     ConstructQSL=lambda *a: None, DestroyQSL=lambda q: None, DestroySUT=lambda s: None,
                     TestSettings=types.SimpleNamespace, TestScenario=types.SimpleNamespace(Server=0),
                     TestMode=types.SimpleNamespace(PerformanceOnly=0),
                     LogOutputSettings=types.SimpleNamespace, LogSettings=types.SimpleNamespace)

    def start(sut, qsl, settings, log_settings):
        Path(log_settings.log_output.outdir, "mlperf_log_detail.txt").write_text("")  # LoadGen's log, empty
        samples = [types.SimpleNamespace(index=0, id=100), types.SimpleNamespace(index=1, id=101)]
        issued["issue"](samples)
        import time

        deadline = time.time() + 30
        while len(completed) < 2 and time.time() < deadline:
            time.sleep(0.01)

    lg.StartTestWithLogSettings = start
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", lg)
    cpu, gpu = Recorder(), Recorder()
    paths = [LivePath(TABLE, cpu), LivePath(DHE_GPU, gpu)]
    policy = pol.MPRecSplit([TABLE, DHE_GPU], min_size=64)
    batches = [Batch(torch.zeros(q, 13), torch.zeros(q, 26, 1, dtype=torch.long)) for q in (1024, 8)]
    result = serve(paths, policy, batches, np.array([1024, 8]), 10.0, 5.0, 1.0, log_dir=None)
    assert sorted(completed) == [100, 101]  # each query completed once, after all its parts
    assert sum(cpu.rows) + sum(gpu.rows) == 1032 and cpu.rows and gpu.rows  # 1024 split over both devices
    assert result.per_path["table@cpu"] >= 1 and result.per_path["dhe@gpu"] >= 1


def test_live_paths_with_conflicting_process_settings_are_refused_before_any_is_built():
    import types

    from harness.core.errors import ConfigError
    from harness.serving.live_paths import _refuse_conflicts

    def planned(name, threads, precision="fp32"):
        from backends.cpu import CpuBackend

        adapter = CpuBackend(types.SimpleNamespace(num_threads=threads, interop_threads=None,
                                                 allocator="retain"))
        run = types.SimpleNamespace(precision=types.SimpleNamespace(name=precision))
        return (types.SimpleNamespace(name=name), types.SimpleNamespace(adapter=adapter, run=run), None)

    _refuse_conflicts([planned("table@cpu", 2), planned("dhe@cpu", 2)])
    with pytest.raises(ConfigError,
                       match=r"table@cpu and dhe@cpu need different torch intra-op threads \(1 and 2\)"):
        _refuse_conflicts([planned("table@cpu", 1), planned("dhe@cpu", 2)])


def test_a_live_path_that_fails_to_build_closes_those_already_prepared(monkeypatch):
    import types

    from harness.serving import live_paths

    closed = []

    class Adapter:
        def __init__(self, name):
            self.name = name

        def process_settings(self, precision):
            return {}

        def close(self):
            closed.append(self.name)

    def fake_plan(name):
        run = types.SimpleNamespace(precision=types.SimpleNamespace(name="fp32"),
                                    dataset=types.SimpleNamespace(kind="synthetic"))
        return (types.SimpleNamespace(name=name, path=name), types.SimpleNamespace(adapter=Adapter(name),
                                                                                   run=run, spec=None), None)

    monkeypatch.setattr(live_paths, "_plans", lambda *a: [fake_plan("a@cpu"), fake_plan("b@cpu")])
    monkeypatch.setattr(live_paths, "SyntheticDataset", lambda *a: types.SimpleNamespace(generator=None))
    monkeypatch.setattr(live_paths, "prepare_on", lambda adapter, *a: None)

    def model(p, weights, store):
        if p.adapter.name == "b@cpu":
            raise RuntimeError("cannot build b")
        return object()

    monkeypatch.setattr(live_paths, "_model", model)
    cfg = types.SimpleNamespace(live=types.SimpleNamespace(fault_path=None))
    with pytest.raises(RuntimeError, match="cannot build b"):
        live_paths.build_live_paths(cfg, [], [], None)
    assert closed == ["a@cpu"]


def test_the_what_if_sweep_scales_the_devices_and_its_measured_point_is_the_study(tmp_path):
    from dataclasses import replace

    from harness.serving import whatif
    from harness.serving.study import run_study

    cfg = _study_config(**{"what_if.cpu_speedups": "[1,4]", "what_if.gpu_slowdowns": "[1,10]",
                           "what_if.queries": 500})
    table = whatif.what_if(cfg, [TABLE, DHE_GPU])
    assert len(table) == 2 * 2 * 2  # every point, with and without batching
    measured = run_study(replace(cfg, queries=500, load_points=1), [TABLE, DHE_GPU]).headline["ratio"]
    at = table.set_index(["cpu_speedup", "gpu_slowdown", "batching"])
    assert at.loc[(1, 1, False), "ratio"] == pytest.approx(measured)  # (1x, 1x) is the measured pair
    assert at.loc[(4, 10, False), "ratio"] != pytest.approx(measured)  # the scaled points differ
    assert (at.xs(True, level="batching")["why"] != "").all()  # batching off in this config: said why
    [fast_table, slow_gpu] = whatif.scaled([TABLE, DHE_GPU], 4, 10)
    assert fast_table.latency_ms == tuple(v / 4 for v in TABLE.latency_ms) and "what-if" in fast_table.source
    assert slow_gpu.latency_ms == tuple(v * 10 for v in DHE_GPU.latency_ms)
    assert whatif.plot(table, tmp_path / "whatif.png").stat().st_size > 0
