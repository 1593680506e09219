"""The benchmark scripts run on a tiny shape and emit every figure (a regression guard, not a timing)."""

from __future__ import annotations

import math


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_table_path_benchmark_emits_every_figure(tmp_path, monkeypatch):
    from benchmarks import table_path

    monkeypatch.chdir(tmp_path)
    figures = table_path.main(["--tiny"])
    p = figures["path_vs_bare"]
    for key in ("harness_samples_per_s", "bare_samples_per_s", "harness_over_bare", "loop_overhead_us",
                "query_size_1_latency_us", "overhead_fraction_of_q1"):
        assert _finite_positive(p[key]), key
    assert len(p["harness_blocks_s"]) == len(p["bare_blocks_s"]) == 5
    assert set(figures["layouts"]) == {1, 64, 1024}
    assert all(_finite_positive(row["per_table_over_fused"]) for row in figures["layouts"].values())
    assert (tmp_path / "results" / "benchmarks" / "table_path.json").is_file()


def test_representations_benchmark_emits_every_figure(tmp_path, monkeypatch):
    from benchmarks import representations

    monkeypatch.chdir(tmp_path)
    figures = representations.main(["--tiny"])
    assert _finite_positive(figures["gemm_peak"]["gflops"])
    assert set(figures["dhe_decoders"]) == {64, 1024}
    for row in figures["dhe_decoders"].values():
        for key in ("bmm_ms", "loop_ms", "bmm_gflops", "bmm_fraction_of_peak", "encode_ms"):
            assert _finite_positive(row[key]), key
    tt = figures["tt_vs_dense"]
    for key in ("tt_ms", "dense_rebuild_ms", "dense_over_tt", "tt_core_bytes", "dense_table_bytes"):
        assert _finite_positive(tt[key]), key


def test_criteo_reader_benchmark_emits_every_figure(tmp_path, monkeypatch):
    from benchmarks import criteo_reader

    monkeypatch.chdir(tmp_path)
    figures = criteo_reader.main(["--tiny"])
    assert set(figures["rows_per_s"]) == {"reader_one_core", "reader_threads", "pandas"}
    assert all(_finite_positive(v) for v in figures["rows_per_s"].values())
    assert _finite_positive(figures["reader_one_core_over_pandas"])


def test_dhe_cache_benchmark_emits_every_figure(tmp_path, monkeypatch):
    from benchmarks import dhe_cache

    monkeypatch.chdir(tmp_path)
    rows = dhe_cache.main(["--tiny"])["rows"]
    assert rows and all(0 <= r["hit_rate"] <= 1 and _finite_positive(r["speedup"]) for r in rows)


def test_serving_benchmark_emits_every_figure(tmp_path, monkeypatch):
    from benchmarks import serving

    monkeypatch.chdir(tmp_path)
    figures = serving.main(["--tiny"])
    assert len(figures) == 4 and all(_finite_positive(f["queries_per_s"]) for f in figures.values())
