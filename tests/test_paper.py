"""MP-Rec's claims table (issue 25, harness/serving/paper.py): each claim's rule on planted profiles, a
claim that cannot be computed saying why, and `experiment=mprec_paper_smoke` end to end."""

from __future__ import annotations

import csv

import mlflow
import pandas as pd
import pytest

from harness.serving.paper import add_to_report, markdown, terabyte_stand_in, workloads_by_role
from harness.serving.paper_claims import claims_table, device_speedup, region
from harness.serving.profiles import PathProfile

SIZES = (1, 64, 256)


def profile(path: str, device: str, latency: tuple[float, ...], run_id: str | None = None,
            accuracy: float | None = 0.78, source: str = "measured") -> PathProfile:
    return PathProfile(path, device, accuracy, SIZES, latency, latency, source, run_id)


def test_claim_a_is_the_widest_device_gap_of_one_representation_at_a_size_both_measured():
    profiles = [profile("dhe@cpu", "cpu", (1.0, 8.0, 40.0), "r1"),
                profile("dhe@cuda", "gpu", (0.5, 0.6, 2.0)),
                profile("table@cpu", "cpu", (0.1, 0.5, 2.0), "r2"),
                profile("table@cuda", "gpu", (0.4, 0.5, 0.6)),
                # a stand-in is no measurement: its 1000x gap is not a figure
                profile("tt@cpu", "cpu", (1.0, 1.0, 1.0)),
                profile("tt@cuda", "gpu", (1e-3, 1e-3, 1e-3), source="Terabyte stand-in (NOT measured)")]
    best = device_speedup({"Kaggle": {"profiles": profiles}})
    assert best is not None
    assert (best["numbers"], best["size"]) == ("dhe/fp32", 256)
    assert (best["slow"], best["fast"]) == ("dhe@cpu", "dhe@cuda")
    assert best["ratio"] == pytest.approx(20.0)
    # One device: nothing to compare, and the table says why rather than a NaN.
    assert device_speedup({"Kaggle": {"profiles": profiles[::2][:2]}}) is None


def test_the_terabyte_stand_in_keeps_launch_time_and_scales_what_size_adds_and_says_so():
    gpu = [profile("table@cuda", "gpu", (1.0, 1.5, 3.0)), profile("tt@cuda", "gpu", (1.0, 1.0, 1.0))]
    kaggle = [profile("table@cpu", "cpu", (0.5, 2.0, 8.0))]
    terabyte = [profile("table@cpu", "cpu", (0.5, 6.0, 16.0))]
    [stand_in] = terabyte_stand_in(gpu, kaggle, terabyte)  # tt has no CPU pair to scale by: none
    assert stand_in.latency_ms == pytest.approx((1.0, 1.0 + 0.5 * 3, 1.0 + 2.0 * 2))
    assert stand_in.p99_ms == pytest.approx(stand_in.latency_ms)
    assert stand_in.source.startswith("Terabyte stand-in (NOT measured)") and stand_in.accuracy is None


def test_the_what_if_region_names_where_mprec_reaches_2x_and_the_papers_figure():
    table = pd.DataFrame({"cpu_speedup": [1, 1, 4, 1], "gpu_slowdown": [1, 10, 10, 1],
                          "batching": [False, False, False, True], "ratio": [1.2, 2.2, 3.0, 9.0]})
    text = region(table, 2.49)
    assert "(1x, 1x) point (1.20x there" in text
    assert ">= 2x at CPU 1x faster/GPU 10x slower, CPU 4x faster/GPU 10x slower" in text
    assert ">= 2.49x at CPU 4x faster/GPU 10x slower" in text  # batched points are not the paper's setting
    assert region(None, 2.49).startswith("what-if map not drawn")


def test_every_claim_has_a_row_and_one_that_cannot_be_computed_says_why():
    runs = pd.DataFrame({"run_id": ["r1"], "status": ["FINISHED"], "workload": ["synthetic_kaggle x0.01"],
                         "representation": ["table"], "accuracy": [0.78], "param_bytes": [1e6],
                         "flops_per_sample": [1e4], "start_time": [0]})
    claims = claims_table({}, runs)  # no serving study at all, no hybrid run
    assert [c.key for c in claims] == list("abcdefg")
    for c in claims:
        assert c.value is None and "- (" in c.measured and "nan" not in c.measured.lower(), c
    assert "needs finished table and hybrid runs" in claims[5].measured
    text = markdown("x", claims)
    assert text.count("\n| (") == 7


def test_two_kaggle_workloads_are_refused_naming_both():
    runs = pd.DataFrame({"status": ["FINISHED"] * 3,
                         "workload": ["synthetic_kaggle x0.01", "synthetic_kaggle x0.05",
                                      "synthetic_terabyte x0.01"]})
    with pytest.raises(ValueError, match="x0.01; synthetic_kaggle x0.05"):
        workloads_by_role(runs)
    assert workloads_by_role(runs.iloc[1:]) == {"Kaggle": "synthetic_kaggle x0.05",
                                                "Terabyte": "synthetic_terabyte x0.01"}


def test_the_report_gains_one_claims_section_replaced_on_a_rerun(tmp_path):
    report = tmp_path / "report.html"
    assert not add_to_report(report, "| (a) x | y |")  # no analysis yet: nothing to add to
    report.write_text("<html><body><h1>Mapping</h1></body></html>")
    for figure in ("1.10x", "1.20x"):
        assert add_to_report(report, f"| (b) serving | 2.49x | {figure} | def | here | borrowed | ok | why |")
    page = report.read_text()
    assert page.count('<section id="paper">') == 1 and "1.20x" in page and "1.10x" not in page
    assert page.index("<h1>Mapping</h1>") < page.index('<section id="paper">') < page.index("</body>")


def test_the_smoke_experiment_prints_records_and_reports_every_claim(run_harness, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_harness("experiment=mprec_paper_smoke", store_uri=store, timeout=540)
    assert "MP-Rec's claims, measured" in proc.stdout
    folder = tmp_path / "results" / "mprec_paper_smoke" / "paper"
    rows = list(csv.DictReader(open(folder / "paper.csv")))
    assert [r["key"] for r in rows] == list("abcdefg")
    assert "$" in rows[-1]["measured"]  # what a million correct predictions cost (conf/prices.yaml)
    for row in rows:  # every figure computed here, or a sentence saying why not; never a bare NaN
        assert row["measured"] and "nan" not in row["measured"].lower(), row
        assert row["definition"] and row["why"], row
    by_key = {r["key"]: r for r in rows}
    # (a) and (b) compare this CPU with the shipped H200 profiles; (c) serves a labelled Terabyte stand-in.
    assert "NVIDIA H200" in by_key["a"]["why"] and float(by_key["a"]["value"]) > 1
    assert "from a profile file" in by_key["b"]["borrowed_inputs"]
    assert "stand-in" in by_key["c"]["borrowed_inputs"] and "NOT measured" in by_key["c"]["borrowed_inputs"]
    assert (folder / "serving_kaggle" / "whatif.png").is_file() and (folder / "serving_terabyte").is_dir()
    report = (tmp_path / "results" / "mprec_paper_smoke" / "analysis" / "report.html").read_text()
    assert report.count('<section id="paper">') == 1
    mlflow.set_tracking_uri(store)
    studies = mlflow.search_runs(experiment_names=["mprec_paper_smoke-studies"], output_format="list")
    [paper] = [r for r in studies if r.data.tags.get("mprec.kind") == "paper"]
    assert paper.data.metrics["claim_a"] == pytest.approx(float(by_key["a"]["value"]))
    assert {"claim_b", "claim_c", "claim_d", "claim_e", "claim_g"} <= set(paper.data.metrics)
    assert paper.data.metrics["claim_b"] == pytest.approx(float(by_key["b"]["value"]))
