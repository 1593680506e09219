"""The mapping's rules on hand-made run tables with known answers (no MLflow, no clock, no device)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from harness.analysis import mapping as mp
from harness.analysis.output import AnalysisConfig, write_analysis
from harness.analysis.runs import join_quality, tidy
from harness.core import trust
from harness.core.schema import TrackingConfig

GB = 1e9
SETTINGS = mp.MappingSettings(targets_ms=(1, 10, 100), percentile="p99", rank_by="correct_throughput")


def record(path, status="FINISHED", sizes=None, accuracy=0.78, param_bytes=1e6, capacity=16 * GB,
           start=0, error=None, scale="0.1", quality_key=None, unreliable=None):
    """An MLflow-like run record; sizes = {query size: (p99 ms, samples/s)} or {q: None} for out of memory;
    unreliable = {q: why} flags those sizes (None: a run recorded before reliability was judged)."""
    rep, backend = path.split("@")
    sizes = sizes or {}
    per_size = {
        "latency_p50_ms": {q: v[0] * 0.8 for q, v in sizes.items() if v},
        "latency_p90_ms": {q: v[0] * 0.9 for q, v in sizes.items() if v},
        "latency_p95_ms": {q: v[0] * 0.95 for q, v in sizes.items() if v},
        "latency_p99_ms": {q: v[0] for q, v in sizes.items() if v},
        "samples_per_s": {q: v[1] for q, v in sizes.items() if v},
        "feasible": {q: float(v is not None) for q, v in sizes.items()},
    }
    if unreliable is not None:
        per_size["reliable"] = {q: float(q not in unreliable) for q, v in sizes.items() if v}
    metrics = {"param_bytes": param_bytes, "flops_per_sample": 1e6, "bytes_read_per_sample": 2e3,
               "bytes_read_per_query_fixed": 1e6, "device_memory_bytes": capacity,
               "device_gemm_gflops": 60.0, "device_gather_gbps": 5.0, "device_copy_gbps": 10.0}
    if accuracy is not None:
        metrics["accuracy"] = accuracy
    tags = {"path": path, "representation": rep, "backend": backend, "device_name": backend.upper()}
    if error:
        tags["error"] = error
    if quality_key:
        tags["quality_key"] = quality_key
    if unreliable:
        tags["unreliable"] = trust.describe({q: [why] for q, why in unreliable.items()})
    return {"run_id": f"{path}-{start}", "status": status, "start_time": start, "tags": tags,
            "params": {"dataset.name": "synthetic_kaggle", "dataset.scale": scale}, "metrics": metrics,
            "per_size": per_size if sizes else {}}


def table_of(*records):
    return join_quality(tidy(list(records)))


def cell(table, q, target):
    return table[(table["query_size"] == q) & (table["target_ms"] == target)].iloc[0]


def test_infeasible_paths_are_never_chosen():
    runs = table_of(
        record("table@ipu", sizes={64: (0.1, 1e9)}, param_bytes=2.2 * GB, capacity=0.9 * GB),  # does not fit
        record("hybrid@cpu", sizes={64: None, 1: (0.5, 1e5)}),  # out of memory at 64
        record("dhe@cpu", sizes={64: (5.0, 1e4), 1: (2.0, 500)}),
    )
    table = mp.mapping(runs, SETTINGS)
    assert cell(table, 64, 10)["choice"] == "dhe@cpu"
    assert not (table["choice"] == "table@ipu").any()
    assert cell(table, 1, 1)["choice"] == "hybrid@cpu"
    assert not ((table["query_size"] == 64) & (table["choice"] == "hybrid@cpu")).any()


def test_choice_maximises_correct_predictions_and_reports_runner_up_and_margin():
    runs = table_of(record("table@cpu", sizes={64: (2.0, 30_000)}, accuracy=0.75),
                    record("dhe@gpu", sizes={64: (1.5, 32_000)}, accuracy=0.80))
    c = cell(mp.mapping(runs, SETTINGS), 64, 10)
    assert c["choice"] == "dhe@gpu" and c["score"] == pytest.approx(0.80 * 32_000)
    assert c["runner_up"] == "table@cpu"
    assert c["margin"] == pytest.approx(0.80 * 32_000 / (0.75 * 30_000) - 1)


def test_ties_are_broken_deterministically():
    same = dict(accuracy=0.8)
    a = record("b_path@cpu", sizes={8: (3.0, 1000)}, param_bytes=2e6, **same)
    b = record("a_path@cpu", sizes={8: (3.0, 1000)}, param_bytes=2e6, **same)  # same score, latency, size
    c = record("c_path@cpu", sizes={8: (3.0, 1000)}, param_bytes=1e6, **same)  # smaller model
    d = record("d_path@cpu", sizes={8: (2.5, 1000)}, param_bytes=9e6, **same)  # lower latency
    for order in ([a, b, c, d], [d, c, b, a], [c, a, d, b]):
        assert cell(mp.mapping(table_of(*order), SETTINGS), 8, 10)["choice"] == "d_path@cpu"
    for order in ([a, b, c], [c, b, a]):
        assert cell(mp.mapping(table_of(*order), SETTINGS), 8, 10)["choice"] == "c_path@cpu"
    for order in ([a, b], [b, a]):
        assert cell(mp.mapping(table_of(*order), SETTINGS), 8, 10)["choice"] == "a_path@cpu"


def test_a_target_no_path_meets_says_so():
    c = cell(mp.mapping(table_of(record("table@cpu", sizes={64: (2.0, 30_000)})), SETTINGS), 64, 1)
    assert not mp.chosen(c["choice"]) and "no path meets p99 <= 1 ms" in c["note"]


def test_a_path_without_quality_is_never_given_one():
    runs = table_of(record("tt@cpu", sizes={64: (1.0, 90_000)}, accuracy=None),
                    record("table@cpu", sizes={64: (2.0, 30_000)}, accuracy=0.75))
    c = cell(mp.mapping(runs, SETTINGS), 64, 10)
    assert c["choice"] == "table@cpu" and "unrated (no quality): tt@cpu" in c["note"]
    assert runs.loc[runs["path"] == "tt@cpu", "accuracy"].isna().all()
    # A workload where no path has a measured quality is ranked by throughput rather than choosing nothing.
    only_unrated = cell(
        mp.mapping(table_of(record("tt@cpu", sizes={64: (1.0, 9e4)}, accuracy=None)), SETTINGS), 64, 10
    )
    assert only_unrated["choice"] == "tt@cpu" and only_unrated["basis"] == "throughput"
    by_throughput = mp.MappingSettings(targets_ms=(10,), percentile="p99", rank_by="throughput")
    assert cell(mp.mapping(runs, by_throughput), 64, 10)["choice"] == "tt@cpu"


def test_a_latency_only_experiment_is_ranked_by_throughput_and_says_so_once(tmp_path):
    records = [record("table@cpu", sizes={1: (0.12, 8000), 4096: (30.0, 140_000)}, accuracy=None),
               record("dhe@cpu", sizes={1: (0.5, 2000), 4096: (400.0, 10_000)}, accuracy=None)]
    out = write_analysis(records, _config(tmp_path), tmp_path, {}, 24 * GB)
    notices = [s for s in out.summary if "quality is not measured" in s]
    assert len(notices) == 1 and "train.steps=2000" in notices[0]
    assert "[synthetic_kaggle x0.1] p99 <= 1, 10 ms: table@cpu for query sizes 1;" in " ".join(out.summary)
    assert "quality is not measured for synthetic_kaggle x0.1 " in notices[0]
    assert not any("no measured quality" in m for m in out.missing)  # said once, in the summary
    names = {p.name for p in out.figures}
    assert "mapping_synthetic_kaggle_x0_1.png" in names and not any(n.startswith("pareto") for n in names)
    assert "samples/s (quality not measured" in (tmp_path / "mapping.md").read_text()


def test_a_model_measured_twice_under_two_names_is_ranked_once_and_said_so():
    table = record("table@cpu", sizes={64: (1.0, 60_000)})
    tt = record("tt@cpu", sizes={64: (0.9, 65_000)})  # faster by noise: the same model
    tt["tags"]["same_model_as"] = "table"
    runs = table_of(table, tt)
    c = cell(mp.mapping(runs, SETTINGS), 64, 10)
    assert c["choice"] == "table@cpu" and not mp.chosen(c["runner_up"])
    assert (
        "tt@cpu (synthetic_kaggle x0.1): exactly the table@cpu model at this scale (tag same_model_as): left "
        "out of the mapping"
    ) in mp.missing_report(runs)
    # without its twin measured, it is a path like any
    alone = cell(mp.mapping(table_of(tt), SETTINGS), 64, 10)
    assert alone["choice"] == "tt@cpu"


def test_quality_is_borrowed_only_between_runs_of_the_identical_quality_configuration():
    runs = table_of(record("dhe@cpu", sizes={64: (9.0, 5000)}, accuracy=0.81, start=1, quality_key="q1"),
                    record("dhe@gpu", sizes={64: (1.0, 90_000)}, accuracy=None, start=2, quality_key="q1"),
                    record("dhe@tpu", sizes={64: (1.0, 90_000)}, accuracy=None, start=3, quality_key="q2"),
                    record("dhe@ipu", sizes={64: (1.0, 90_000)}, accuracy=None, start=4))
    accuracy = runs.groupby("path")["accuracy"].first()
    assert accuracy["dhe@gpu"] == 0.81  # the same training, served on another device
    assert math.isnan(accuracy["dhe@tpu"])  # another training (another k, steps, seed...): not the same model
    assert math.isnan(accuracy["dhe@ipu"])  # no quality key (it never trained): never given one


def test_a_dhe_k_sweep_is_as_many_paths_as_values_of_k():
    # The labels name k (harness/core/paths.py: variant): each k is its own path, rated by its own runs.
    runs = table_of(record("dhe[k=512,decoder=512-128]@cpu", sizes={64: (4.0, 16_000)}, accuracy=0.775),
                    record("dhe@cpu", sizes={64: (9.0, 7000)}, accuracy=0.781, start=1))
    table = mp.mapping(runs, SETTINGS)
    assert set(mp.paths_table(runs, SETTINGS)["path"]) == {"dhe@cpu", "dhe[k=512,decoder=512-128]@cpu"}
    c = cell(table, 64, 10)
    assert c["choice"] == "dhe[k=512,decoder=512-128]@cpu" and c["runner_up"] == "dhe@cpu"


def test_runs_of_one_path_trained_differently_are_said_and_the_rated_one_used():
    runs = table_of(record("dhe@cpu", sizes={64: (9.0, 7000)}, accuracy=0.78, start=1, quality_key="a"),
                    record("dhe@cpu", sizes={64: (9.5, 6900)}, accuracy=None, start=2, quality_key="b"))
    assert mp.latest_finished(runs)["run_id"].unique().tolist() == ["dhe@cpu-1"]  # the latest rated run
    [line] = [m for m in mp.missing_report(runs) if "training configurations" in m]
    assert (
        line.startswith("dhe@cpu (synthetic_kaggle x0.1): 2 runs of 2 training configurations")
        and "dhe@cpu-1" in line
    )


def test_two_machines_measuring_one_path_are_two_paths_named_by_host():
    from harness.serving.profiles import distinguish, from_runs

    def on(host, ms, start, path="table@cpu", mode="eager"):
        rec = record(path, sizes={1: (ms, 1e3 / ms), 64: (4 * ms, 64e3 / (4 * ms))}, start=start)
        rec["tags"].update({"mprec.owner": f"{host}:123:456", "device_name": "AMD EPYC", "mode": mode})
        rec["run_id"] = f"{path}-{host}"
        return rec

    runs = table_of(on("aaaa1111", 1.0, 0), on("bbbb2222", 2.0, 1))
    paths = mp.paths_table(runs, SETTINGS)
    assert sorted(paths["path"]) == ["table@cpu (host aaaa1111)", "table@cpu (host bbbb2222)"]  # none dropped
    assert cell(mp.mapping(runs, SETTINGS), 1, 10)["choice"] == "table@cpu (host aaaa1111)"  # the faster
    profiles = distinguish(from_runs(runs))
    assert sorted(p.name for p in profiles) == ["table@cpu (AMD EPYC, host aaaa1111)",
                                                "table@cpu (AMD EPYC, host bbbb2222)"]
    assert {p.path for p in profiles} == {"table@cpu"}  # the label itself stays parseable
    # One machine's eager sizes are never stitched to another's CUDA graphs as one profile.
    cuda = table_of(on("aaaa1111", 1.0, 0, "dhe@cuda"), on("bbbb2222", 0.5, 1, "dhe@cuda+graphs", "graphs"))
    assert len(from_runs(cuda)) == 2
    # One machine: the labels as they were.
    assert list(mp.paths_table(table_of(on("aaaa1111", 1.0, 0)), SETTINGS)["path"]) == ["table@cpu"]


def test_pareto_front_on_a_small_set():
    points = pd.DataFrame({"x": [1.0, 2.0, 3.0, 2.0, 0.5, 3.0], "y": [0.9, 0.8, 0.7, 0.7, 0.95, 0.6]})
    assert mp.pareto_front(points, "x", "y").tolist() == [True, True, True, False, True, False]


def test_regime_sentences_merge_query_size_ranges():
    runs = table_of(record("table@cpu", sizes={1: (0.5, 2000), 8: (0.8, 10_000), 64: (20.0, 30_000)}),
                    record("dhe@gpu", sizes={64: (3.0, 20_000), 1024: (8.0, 120_000)}))
    sentences = mp.regimes(mp.mapping(runs, SETTINGS))
    assert "p99 <= 1 ms: table@cpu for query sizes 1-8; no path for query sizes 64-1024." in sentences[0]
    assert "p99 <= 10 ms: table@cpu for query sizes 1-8; dhe@gpu for query sizes 64-1024." in sentences[1]
    # same winners: one line
    merged = mp.regimes(mp.mapping(runs, replace(SETTINGS, targets_ms=(10, 25, 100))))
    assert merged == [
        "[synthetic_kaggle x0.1] p99 <= 10 ms: table@cpu for query sizes 1-8; dhe@gpu for query sizes "
        "64-1024.",
        "[synthetic_kaggle x0.1] p99 <= 25, 100 ms: table@cpu for query sizes 1-64; dhe@gpu "
        "for query sizes 1024.",
    ]


def _config(tmp_path) -> AnalysisConfig:
    return AnalysisConfig(experiment_name="x", parent_run_id=None, targets_ms=[1, 10], percentile="p99",
                          rank_by="correct_throughput", prices_file=None, output_dir=str(tmp_path),
                          log_to_mlflow=False, plots=True, devices={"ipu_gc200": 9e8, "cpu_here": None},
                          tracking=TrackingConfig(uri=None, results_dir=str(tmp_path), parent_run_id=None,
                                                  retry_s=120, request_timeout_s=60))


def test_a_partial_experiment_reports_what_is_missing(tmp_path):
    records = [record("table@cpu", sizes={1: (0.5, 2000), 64: (2.0, 30_000)}, param_bytes=2.2 * GB),
               record("dhe@cuda", status="FAILED", error="BackendUnavailable: no GPU driver found"),
               record("table@cuda", status="FAILED", error="BackendUnavailable: no GPU driver found"),
               record("hybrid@cpu", status="FAILED", error="RuntimeError: injected fault"),
               record("tt@cpu", sizes={64: (1.0, 90_000)}, accuracy=None)]
    errors = {r["run_id"]: r["tags"]["error"] for r in records if "error" in r["tags"]}
    out = write_analysis(records, _config(tmp_path), tmp_path, errors, 24 * GB)
    missing = "\n".join(out.missing)
    # Paths whose backend is not on the machine are grouped apart from real failures, one line per reason.
    assert ("could not run here: dhe@cuda (synthetic_kaggle x0.1), table@cuda (synthetic_kaggle x0.1): "
            "no GPU driver found") in out.missing
    assert (
        "run hybrid@cpu-0 is FAILED: RuntimeError: injected fault" in missing
        and "cuda-0 is FAILED" not in missing
    )
    assert "tt@cpu" in missing and "no measured quality" in missing
    for name in ("paths.csv", "mapping.csv", "mapping.md", "feasibility.csv"):
        assert (tmp_path / name).is_file()
    assert {p.name for p in out.figures} >= {"mapping_synthetic_kaggle_x0_1.png", "roofline_CPU.png"}
    feasibility = pd.read_csv(tmp_path / "feasibility.csv")
    row = feasibility[feasibility["representation"] == "table"].iloc[0]
    assert not row["ipu_gc200"] and row["cpu_here"]  # 2.2 GB fits 24 GB of RAM, not a 900 MB IPU


def test_a_run_measured_again_after_an_interruption_is_not_reported_missing():
    sizes = {64: (1.0, 64000)}
    killed = record("table@cpu", status="KILLED", start=1, error="interrupted (Ctrl-C)")
    rerun = record("table@cpu", sizes=sizes, start=2)
    earlier_finished = record("dhe@cpu", sizes=sizes, start=1)
    failed_after = record("dhe@cpu", status="FAILED", start=2, error="RuntimeError: boom")
    missing = "\n".join(mp.missing_report(table_of(killed, rerun, earlier_finished, failed_after)))
    assert "table@cpu" not in missing  # its KILLED run was redone: the rerun is what the analysis uses
    assert "run dhe@cpu-2 is FAILED" in missing  # its latest attempt failed after the finished one


def test_an_empty_experiment_yields_a_report_not_a_crash(tmp_path):
    out = write_analysis([], _config(tmp_path), tmp_path, {}, 24 * GB)
    assert out.missing == ["no runs of kind 'latency' in this experiment"]
    assert "no runs" in (tmp_path / "mapping.md").read_text()


def test_paths_table_reports_throughput_and_fraction_of_peak():
    runs = table_of(record("dhe@cpu", sizes={1024: (100.0, 10_000)}))
    paths = mp.paths_table(runs, SETTINGS)
    row = paths.iloc[0]
    assert row["achieved_gflops"] == pytest.approx(1e6 * 10_000 / 1e9)
    assert row["fraction_of_gemm_peak"] == pytest.approx(10.0 / 60.0)
    assert row["achieved_gbps"] == pytest.approx((2e3 * 10_000 + 1e6 * 10_000 / 1024) / 1e9)
    assert row["peak_correct_throughput"] == pytest.approx(0.78 * 10_000)
    assert np.isfinite(row["p99_ms@1024"])


# --- measurements that are not trusted (issue 22) ----------------------------------------------------------

def test_an_unreliable_measurement_is_not_chosen_over_a_reliable_path_that_meets_the_target():
    # The busy machine's table@cpu at 1024 looked fastest; dhe@cpu's figure there is trusted.
    runs = table_of(record("table@cpu", sizes={1024: (5.0, 900_000)}, accuracy=0.78,
                           unreliable={1024: "other processes used 1.70 cores"}),
                    record("dhe@cpu", sizes={1024: (8.0, 120_000)}, accuracy=0.79, unreliable={}))
    c = cell(mp.mapping(runs, SETTINGS), 1024, 10)
    assert c["choice"] == "dhe@cpu" and c["runner_up"] == "table@cpu"
    assert "table@cpu set aside (unreliable measurement), dhe@cpu chosen on reliable figures" in c["note"]
    assert "table@cpu (other processes used 1.70 cores)" in c["note"] and not c["reliable"]
    # With no reliable alternative, the unreliable path is chosen: flagged, never dropped silently.
    alone = table_of(
        record("table@cpu", sizes={1024: (5.0, 900_000)}, unreliable={1024: "robust CV 0.61 > 0.25"})
    )
    alone_table = mp.mapping(alone, SETTINGS)
    alone = cell(alone_table, 1024, 10)
    assert alone["choice"] == "table@cpu" and not alone["reliable"]
    # The sentences say whose measurement was unreliable: the winner's own, or the one it was compared with.
    assert "table@cpu for query sizes 1024 (its own measurement unreliable)" in " ".join(
        mp.regimes(alone_table, "p99"))
    assert ("dhe@cpu for query sizes 1024 (its own measurements reliable, compared with an unreliable "
            "measurement of table@cpu)") in " ".join(mp.regimes(mp.mapping(runs, SETTINGS), "p99"))


def test_no_path_meets_on_an_unreliable_figure_is_a_flagged_cell_and_sentence():
    # The case: a 2 MB model "too slow" at 1024 because another job took the cores.
    runs = table_of(record("table@cpu", sizes={1: (0.3, 3000), 1024: (400.0, 2500)}, accuracy=None,
                           unreliable={1024: "other processes used 1.70 cores"}))
    table = mp.mapping(runs, SETTINGS)
    c = cell(table, 1024, 100)
    assert not mp.chosen(c["choice"]) and not c["reliable"] and "other processes used 1.70 cores" in c["note"]
    assert cell(table, 1, 1)["reliable"]
    sentences = mp.regimes(table, "p99")
    assert "no path for query sizes 1024 (compared with an unreliable measurement of table@cpu)" in (
        " ".join(sentences))
    [notice] = mp.reliability_notices(table, runs)
    assert notice.startswith("[synthetic_kaggle x0.1] 3 of 6 cells compared unreliable measurements")
    assert "table@cpu at 1024" in notice


def test_runs_recorded_before_reliability_was_judged_are_unknown_not_flagged(tmp_path):
    runs = table_of(record("table@cpu", sizes={64: (2.0, 30_000)}))  # no `reliable` metric
    assert runs["reliable"].isna().all()
    c = cell(mp.mapping(runs, SETTINGS), 64, 10)
    assert c["choice"] == "table@cpu" and c["reliable"]
    assert mp.reliability_notices(mp.mapping(runs, SETTINGS), runs) == [
        "reliability unknown for synthetic_kaggle x0.1: some runs were recorded before measurements were "
        "judged (no `reliable` metric); force=true measures them again."
    ]
    paths = mp.paths_table(runs, SETTINGS)
    assert math.isnan(paths.iloc[0]["reliable@64"])
    out = write_analysis([record("table@cpu", sizes={64: (2.0, 30_000)})], _config(tmp_path), tmp_path, {},
                         24 * GB)
    assert "<td>unknown</td>" in out.report.read_text()


def test_a_path_above_its_roof_is_flagged_in_the_paths_table_and_the_report(tmp_path):
    # 1 MFLOP a sample at 100,000 samples/s: 100 GFLOP/s against a 60 GFLOP/s peak.
    fast = record("table@cpu", sizes={4096: (40.0, 100_000)}, unreliable={})
    row = mp.paths_table(table_of(fast), SETTINGS).iloc[0]
    assert row["fraction_of_gemm_peak"] == pytest.approx(100 / 60) and row["above_roof"]
    page = write_analysis([fast], _config(tmp_path), tmp_path, {}, 24 * GB).report.read_text()
    assert "above the roof" in page and "167%" in page


# --- the mapping on planted profiles with known crossovers (issue 23) ---------------------------------------

def linear_path(path, fixed_ms, per_sample_ms, sizes=(1, 64, 256, 1024, 4096), accuracy=0.78, **kw):
    """A path whose p99 is fixed + per-sample x q exactly (p50 = 0.8 p99 in `record`): known crossovers."""
    return record(path, sizes={q: (fixed_ms + per_sample_ms * q, q / (fixed_ms + per_sample_ms * q) * 1e3)
                               for q in sizes}, accuracy=accuracy, **kw)


def test_a_planted_crossover_gives_exactly_the_known_mapping():
    # fast@cpu: 1 ms + 10 us a sample; big@gpu: 5 ms + 1 us a sample: they cross at 444 samples.
    settings = mp.MappingSettings(targets_ms=(1, 10, 50), percentile="p99", rank_by="throughput")
    table = mp.mapping(table_of(linear_path("fast@cpu", 1.0, 0.010), linear_path("big@gpu", 5.0, 0.001)),
                       settings)
    got = {(int(c.query_size),
            c.target_ms): c.choice if mp.chosen(c.choice) else None for c in table.itertuples()}
    assert got == {
        (1, 1): None, (64, 1): None, (256, 1): None, (1024, 1): None, (4096, 1): None,  # 1.01 ms at best
        (1, 10): "fast@cpu", (64, 10): "fast@cpu", (256, 10): "fast@cpu",  # below the crossover
        (1024, 10): "big@gpu", (4096, 10): "big@gpu",  # above it (fast@cpu: 11.2 ms misses 10 ms at 1024)
        (1, 50): "fast@cpu", (64, 50): "fast@cpu", (256, 50): "fast@cpu", (1024, 50): "big@gpu",
        (4096, 50): "big@gpu",
    }
    # Where both meet the target, the margin is the planted throughput ratio.
    c = cell(table, 256, 10)
    assert c["runner_up"] == "big@gpu" and c["margin"] == pytest.approx((5 + 0.256) / (1 + 2.56) - 1)


def test_planted_ties_infeasible_and_unfitting_cells():
    settings = mp.MappingSettings(targets_ms=(100,), percentile="p99", rank_by="throughput")
    runs = table_of(
        linear_path("b_twin@cpu", 1.0, 0.01),
        linear_path("a_twin@cpu", 1.0, 0.01),  # identical: the name decides
        linear_path(
            "huge@cpu", 0.1, 0.0001, param_bytes=20 * GB, capacity=16 * GB
        ),  # fastest, but does not fit
        record(
            "oom@cpu", sizes={1: (0.05, 20_000), 64: None}, accuracy=0.78
        ),  # fastest at 1, out of memory at 64
    )
    table = mp.mapping(runs, settings)
    assert cell(table, 1, 100)["choice"] == "oom@cpu"
    assert [cell(table, q, 100)["choice"] for q in (64, 256, 1024, 4096)] == ["a_twin@cpu"] * 4
    assert cell(table, 64, 100)["runner_up"] == "b_twin@cpu" and cell(table, 64, 100)["margin"] == 0
    assert not (table["choice"] == "huge@cpu").any()
