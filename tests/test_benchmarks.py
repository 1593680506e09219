"""`python -m benchmarks --tiny` runs every benchmark on a tiny shape and emits every figure and ratio.

A regression guard, not a timing: nothing here compares a time with a bound (these machines are noisy);
the full-size figures and their ratios are in docs/performance.md.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

# One worker runs this module (its tiny_run fixture once, not once per worker) and the cluster tests, one
# after the other: a Ray cluster starting beside the benchmarks made one timing of theirs read 16 ms
# instead of 0.4, and made a fault land after the jobs it was meant to interrupt had finished.
pytestmark = pytest.mark.xdist_group("timing_and_clusters")

HAS_TORCHREC = (
    importlib.util.find_spec("torchrec") is not None and importlib.util.find_spec("fbgemm_gpu") is not None
)


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# Session-scoped: a module fixture is torn down whenever the worker moves to another module's test, and
# xdist hands this group's tests (these and tests/test_clusters.py) out interleaved: fresh-ci ran it twice.
@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One `python -m benchmarks --tiny` (TorchRec's comparison where scripts/install_bench.sh ran)."""
    from benchmarks import __main__ as suite

    folder = tmp_path_factory.mktemp("benchmarks")
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    only = [n for n in suite.BENCHMARKS if HAS_TORCHREC or n != "torchrec_compare"]
    try:
        result = suite.main(["--tiny", "--only", ",".join(only)])
    finally:
        mp.undo()
    reports = {name: json.loads((folder / "results" / "benchmarks" / f"{name}.json").read_text())["figures"]
               for name in only}
    return result, reports


def test_every_benchmark_ran_and_every_ratio_is_recorded(tiny_run):
    result, reports = tiny_run
    assert all(not str(src).startswith("missing") for src in result["reports"].values())
    ratios = result["ratios"]
    assert ratios and all(_finite_positive(r["value"]) for r in ratios.values())
    targeted = {k for k, r in ratios.items() if r["target"]}
    assert {"table_path.harness_over_bare", "table_path.overhead_fraction_of_q1", "harness.dry_run_s",
            "harness.default_sweep_s"} <= targeted
    assert any(k.startswith("limits.table.") for k in targeted)  # the largest size's (DHE's: >= 1024 only)
    assert (
        any(k.startswith("limits.dhe.") for k in ratios)
        and any(k.startswith("torchrec.") for k in ratios) == HAS_TORCHREC
    )
    assert all(isinstance(r["meets"], bool) for k, r in ratios.items() if k in targeted)


def test_table_path_figures(tiny_run):
    p = tiny_run[1]["table_path"]["path_vs_bare"]
    for key in ("harness_samples_per_s", "bare_samples_per_s", "harness_over_bare", "loop_overhead_us",
                "query_size_1_latency_us", "overhead_fraction_of_q1"):
        assert _finite_positive(p[key]), key
    assert len(p["harness_blocks_s"]) == len(p["bare_blocks_s"]) == 5
    layouts = tiny_run[1]["table_path"]["layouts"]
    assert set(layouts) == {"1", "64", "1024"}
    assert all(_finite_positive(row["per_table_over_fused"]) for row in layouts.values())


@pytest.mark.skipif(not HAS_TORCHREC, reason="TorchRec is not installed (scripts/install_bench.sh)")
def test_torchrec_comparison_figures(tiny_run):
    f = tiny_run[1]["torchrec_compare"]
    assert {c["ids_per_feature"] for c in f["cases"]} == {"1", "1-16"}
    for case in f["cases"]:
        for key in ("infer_ours_ms", "infer_torchrec_ebc_ms", "infer_torchrec_fused_forward_ms",
                    "train_ours_ms", "train_torchrec_fused_ms", "infer_ours_over_ebc",
                    "train_ours_over_fused"):
            assert _finite_positive(case[key]), key
        assert all(len(b) == 5 for b in case["blocks_s"].values())


def test_limits_figures(tiny_run):
    f = tiny_run[1]["limits"]
    assert all(_finite_positive(f["limits"][k]) for k in ("gather_gbps", "gather64_gbps", "copy_gbps",
                                                          "gemm_gflops"))
    for row in f["table"]["sizes"].values():
        assert _finite_positive(row["fraction_of_gather"]) and _finite_positive(row["gbps"])
    for row in f["dhe"]["sizes"].values():
        assert _finite_positive(row["decoders_fraction_of_gemm"]) and _finite_positive(
            row["lookup_fraction_of_gemm"]
        )
        assert row["lookup_ms"] >= row["decoders_ms"] * 0.5  # the whole lookup includes the decoders


def test_representations_figures(tiny_run):
    f = tiny_run[1]["representations"]
    assert _finite_positive(f["gemm_peak"]["gflops"])
    assert set(f["dhe_decoders"]) == {"64", "1024"}
    for row in f["dhe_decoders"].values():
        for key in ("bmm_ms", "loop_ms", "bmm_gflops", "bmm_fraction_of_peak", "encode_ms"):
            assert _finite_positive(row[key]), key
    for key in ("tt_ms", "dense_rebuild_ms", "dense_over_tt", "tt_core_bytes", "dense_table_bytes"):
        assert _finite_positive(f["tt_vs_dense"][key]), key


def test_data_serving_and_cache_figures(tiny_run):
    reports = tiny_run[1]
    reader = reports["criteo_reader"]
    assert set(reader["rows_per_s"]) == {"reader_one_core", "reader_threads", "pandas"}
    assert all(_finite_positive(v) for v in reader["rows_per_s"].values())
    assert len(reports["serving"]) == 4 and all(
        _finite_positive(f["queries_per_s"]) for f in reports["serving"].values()
    )
    rows = reports["dhe_cache"]["rows"]
    assert rows and all(0 <= r["hit_rate"] <= 1 and _finite_positive(r["speedup"]) for r in rows)


def test_harness_overhead_figures(tiny_run):
    f = tiny_run[1]["harness_overhead"]
    assert _finite_positive(f["dry_run_s"]) and len(f["dry_run_samples_s"]) == 2
    assert _finite_positive(f["sweep_s"]) and len(f["sweep_job_s"]) == 2  # table, tt (tiny)
    assert all(0 < s < f["sweep_s"] for s in f["sweep_job_s"].values())


def test_collect_names_what_is_missing(tmp_path, monkeypatch):
    from benchmarks import __main__ as suite

    monkeypatch.chdir(tmp_path)
    result = suite.main(["--collect", "--only", "limits"])
    assert result["ratios"] == {} and result["reports"]["limits"].startswith("missing")
    with pytest.raises(SystemExit):
        suite.main(["--collect", "--only", "nonsense"])


def test_precision_figures(tiny_run):
    f = tiny_run[1]["precision"]
    assert set(f["latency"]) == {"table", "tt", "dhe", "hybrid"}
    assert all(
        _finite_positive(r["fp32_over_this"])
        for rows in f["latency"].values()
        for sizes in rows.values()
        for r in sizes.values()
    )
    assert f["param_bytes"]["int8"] == 33762577 * 24 + 1903940  # rows x (16 + 8) bytes, fp32 MLPs
    assert f["param_bytes"]["int8_over_fp32"] < 0.4 and f["gemm_peak_gflops"]["bf16"] > 0
    assert f["param_bytes"]["int4"] == 33762577 * 12 + 1903940  # rows x (8 + 4) bytes
    assert set(f["accuracy"]["table"]) == {"fp32", "bf16", "int8", "int8+bf16", "int4"}
    assert f["accuracy"]["table"]["fp32"]["accuracy_delta"] == 0
    ratios = tiny_run[0]["ratios"]
    assert (
        "precision.table.q64.bf16_speedup" in ratios
        and ratios["precision.table.int8_param_bytes_over_fp32"]["target"]
        and ratios["precision.table.int4_param_bytes_over_fp32"]["meets"]  # 0.19x: within the 0.21x target
    )


def test_roofline_figures(tiny_run):
    """Every CPU path and precision against its own bound (issue 24): the bound from the same run's peaks."""
    f = tiny_run[1]["roofline"]
    peaks = f["peaks"]
    assert peaks["gemm_gflops"] > 0 and peaks["gemm_bf16_gflops"] > 0 and peaks["gather64_gbps"] > 0
    assert isinstance(f["cpu_flags"], list) and all(isinstance(flag, str) for flag in f["cpu_flags"])
    native_fp16 = {"fp16"} if f["fp16"].startswith("native") else set()  # emulated here: not run
    assert set(f["table"]["1"]) == {"fp32", "bf16", "int8", "int8+bf16", "int4"} | native_fp16
    assert set(f["dhe"]["64"]) == {"fp32", "bf16"}
    for rep in ("table", "dhe"):
        for rows in f[rep].values():
            for row in rows.values():
                assert row["p50_ms"] > 0 and row["bound_ms"] > 0 and row["batches"] >= 1
                assert row["above_roof"] == (row["fraction"] > 1)
    # int8 rows cost the cache line an fp32 row of dim 16 costs: their memory terms are equal (the bound
    # differs from fp32's only where the MLPs' precision does)
    table = f["table"]["64"]
    assert table["int8"]["bound_ms"] == pytest.approx(table["fp32"]["bound_ms"], rel=1e-9)
    assert table["int4"]["bound_ms"] == pytest.approx(table["fp32"]["bound_ms"], rel=1e-9)
    # bf16's bound is below fp32's wherever FLOPs matter: its GEMM roof is the bf16 peak
    dhe = f["dhe"]["64"]
    faster_bf16 = peaks["gemm_bf16_gflops"] > peaks["gemm_gflops"]
    assert (dhe["bf16"]["bound_ms"] < dhe["fp32"]["bound_ms"]) == faster_bf16
    # the hash's share of each DHE path's lookup, both timed among the forwards (no more than the lookup)
    for row in dhe.values():
        assert 0 < row["hash_ms"] < row["lookup_ms"]
        assert row["hash_share"] == row["hash_ms"] / row["lookup_ms"]
    shares = {f"roofline.dhe.q64.{label}.hash_share_of_lookup" for label in ("fp32", "bf16")}
    assert shares <= set(tiny_run[0]["ratios"])


def test_the_roofline_runs_fp16_only_where_the_cpu_computes_it(monkeypatch):
    from benchmarks import roofline

    monkeypatch.setattr(roofline, "native_cpu_dtype", lambda p: "emulated")
    assert [label for label, _, _ in roofline.paths("table")] == ["fp32", "bf16", "int8", "int8+bf16", "int4"]
    assert "gemm_fp16_gflops" not in roofline.peak_metrics()
    # A CPU with avx512_fp16 (torch emulates it here: slow, but the same code path)
    monkeypatch.setattr(roofline, "native_cpu_dtype", lambda p: "native (avx512_fp16)")
    assert roofline.paths("table")[-1] == ("fp16", "fp16", None) and roofline.paths("dhe")[-1][0] == "bf16"
    assert roofline.peak_metrics() == ("gemm_bf16_gflops", "gemm_fp16_gflops", "gemm_gflops", "gather64_gbps")
    rows = roofline.representation_rows("table", 0.001, (8,), repetitions=2, block_s=0.005)
    peaks = {"gemm_gflops": 100.0, "gemm_bf16_gflops": 200.0, "gemm_fp16_gflops": 400.0, "gather64_gbps": 5.0}
    row = roofline.rebound("table", 0.001, rows, peaks)[8]
    assert row["fp16"]["p50_ms"] > 0  # each path's bound: its own GEMM peak, the same bytes
    assert row["fp16"]["bound_ms"] < row["bf16"]["bound_ms"] < row["fp32"]["bound_ms"]


def test_the_int8_targets_are_held_to_the_spread_of_two_equal_models():
    from benchmarks.__main__ import SPREAD, _int8_never_slower

    def rows(int8_ms: float, mixed_ms: float) -> dict:
        p50 = {"fp32": 10.0, "bf16": 5.0, "int8": int8_ms, "int8+bf16": mixed_ms, "dlrm_reference": 1.0}
        return {label: {"p50_ms": ms, "fp32_over_this": 10.0 / ms} for label, ms in p50.items()}

    f = {"cpu_flags": ["avx2", "avx512_bf16"], "table": {"1": rows(10.5, 20.0), "1024": rows(10.1, 4.9)}}
    ratios = _int8_never_slower(f)
    assert not ratios["roofline.table.q1.int8.fp32_over_this"]["meets"]  # 0.95x
    assert ratios["roofline.table.q1024.int8.fp32_over_this"]["meets"] and 10 / 10.1 < 1  # within the spread
    assert ratios["roofline.table.q1.int8+bf16.fastest_other_over_this"]["target"] is None  # only from 1024
    fastest = ratios["roofline.table.q1024.int8+bf16.fastest_other_over_this"]
    assert fastest["meets"] and fastest["value"] == pytest.approx(5.0 / 4.9)  # bf16's, not the reference's
    assert fastest["target"] == f">= {SPREAD}"
    emulated = _int8_never_slower({**f, "cpu_flags": ["avx2"]})  # no native bf16: no such target
    assert emulated["roofline.table.q1024.int8+bf16.fastest_other_over_this"]["target"] is None


def test_table_lookups_are_timed_on_rows_no_earlier_call_left_in_cache():
    """A batch's rows times the pool cover twice the last-level cache (a pool of 4 kept q = 1024's rows in
    L3 and read a lookup at 223 % of the DRAM gather roof); small queries stop at MAX_POOL batches."""
    from benchmarks.common import LINE, MAX_POOL, cold_pool_size, last_level_cache_bytes

    llc = 32 << 20
    batches = cold_pool_size(26 * 1024, llc)
    assert batches == 40 and batches * 26 * 1024 * LINE >= 2 * llc > (batches - 1) * 26 * 1024 * LINE
    assert cold_pool_size(26, llc) == MAX_POOL and cold_pool_size(26 * 10**6, llc) == 1
    assert last_level_cache_bytes() >= 1 << 20
