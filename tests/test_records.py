"""A run records what it recorded before the layout change (issue 14): same params, tags, metrics, artifacts;
since issue 15, plus the `compare/` metrics that open MLflow's chart view; since issue 16, plus the
path's precision (fp32 here) as a param, a tag and a plan entry, and the tables' storage as a param; since
issue 17, its execution mode (eager here) as a tag and a plan entry; since issue 18, the tracking retry
bounds as params and the token a retried create finds its run by as a tag; since issue 22, the stability
rules and the planted-interference switch as params, and per size the intervals of p50 and p99, the robust
CV, the host's load while it was timed, `reliable` and `attempts` (and whether the peaks were measured
quietly), the raw samples' attempt columns; since issue 23, `analysis_scope` as a param, each size's
`memory_needed_bytes` (the fit rule's input), and a path label that names the settings which differ from
conf/'s defaults (the DHE case's k, decoder and cache budget). Nothing else changes: run keys included.

The reference shapes were captured from the code before the move (tests/record_shape.py says how);
run keys are hashes of the resolved config, so equal run keys also mean an unchanged config schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.pipeline.record import COMPARE

from .conftest import harness_env
from .record_shape import CASES, record

REFERENCE = json.loads((Path(__file__).parent / "data" / "record_shapes.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_run_records_the_same_params_tags_metrics_and_artifacts_as_before_the_move(case, tmp_path):
    now = record(case, tmp_path, env=harness_env())
    before = REFERENCE[case]
    # issue 15, below
    added = {k: now["metrics"].pop(k) for k in list(now["metrics"]) if k.startswith(COMPARE)}
    # Issue 16: fp32 runs say they are fp32 and nothing else changes (their run keys included).
    assert now["params"].pop("precision.name") == "fp32"
    if "representation.layout" in now["params"]:  # the representations that keep tables
        assert now["params"].pop("representation.storage") == "fp32"
    assert now["tags"].pop("precision") == "fp32"
    assert now["plan"].pop("precision") == "fp32"
    # ...and a run that measures the device's peaks measures the GEMM peak of each reduced precision the
    # backend runs too (bf16 here; fp16 where the CPU has it natively).
    # Issue 38 took that back: a run measures only the peaks it needs (an fp32 run: no bf16 GEMM).
    # A size above the roof rechecks the peak and records the one before (issue 22): that depends on the
    # machine's load while the peaks were timed, not on the code, so it is not part of the shape.
    if now["metrics"].pop("device_gemm_gflops_before_recheck", None) is not None:
        # the recheck logs the new peak at step 0 again: the shape is the set of steps, not how often
        now["metrics"]["device_gemm_gflops"] = sorted(set(now["metrics"]["device_gemm_gflops"]))
    extra_peaks = {k for k in now["metrics"] if k.startswith("device_gemm_") and k != "device_gemm_gflops"}
    assert extra_peaks == set()
    # Issue 17: and eager.
    assert now["tags"].pop("mode") == now["plan"].pop("mode") == "eager"
    # Issue 18: how long MLflow calls retry, and each run's create token (harness/tracking/retry.py).
    assert float(now["params"].pop("tracking.retry_s")) == 120
    assert float(now["params"].pop("tracking.request_timeout_s")) == 60
    assert now["tags"].pop("mprec.create_token") == "<present>"
    # Issue 22: how far each figure can be trusted (docs/measurement.md).
    stability = {k for k in now["params"] if k.startswith("measure.stability.")}
    assert {k.rsplit(".", 1)[1] for k in stability} == {"max_other_cores", "max_steal_cores", "max_robust_cv",
                                                        "order_tolerance", "peak_tolerance", "retries",
                                                        "retry_pause_s", "retry_budget"}
    for key in stability:
        now["params"].pop(key)
    assert now["params"].pop("debug.interference") == "null"
    # Issue 38: the planted look at the machine; what was not measured again and why (only on a busy machine)
    assert now["params"].pop("debug.machine_load") == "null"
    now["tags"].pop("remeasured", None)
    # Issue 24: how the model computes where it runs: the device's module settings (a CPU's), and the DHE
    # hash's kernel (its C variant depends on the CPU's vector extensions)
    settings = {k.split(".", 1)[1]: now["params"].pop(k) for k in list(now["params"])
                if k.startswith("module_settings.")}
    assert settings or case == "failed", "module_settings.* not recorded"
    if settings:  # recorded once the model is prepared (a run that fails before has none)
        assert (settings["hash_method"], settings["pair_select"], settings["one_id_lookup"]) \
            == ("float64", "int16_gather", "embedding_bag")
        dhe = settings.pop("dhe_hash", None)
        assert (dhe is not None) == case.startswith("dhe")
        assert dhe is None or dhe.startswith(("C ", "torch float64"))
    # Issue 24, slice 5: the CPU's tables on huge pages (a switch, on by default), and what a run moved
    # there and under which kernel mode (recorded where the backend prepared the model)
    assert now["params"].pop("backend.huge_pages") == "true"
    moved = now["params"].pop("backend_resolved.huge_page_bytes", None)
    assert moved is None or int(moved) >= 0
    assert (now["params"].pop("backend_resolved.transparent_huge_pages", None) is None) == (moved is None)
    # Issue 24, slice 5: DHE's hash family, multiply_shift by default: other codes, so a model of its own
    # (keys that differ from the universal hash's, which keeps the reference's: tests/test_identity.py)
    if case.startswith("dhe"):
        assert now["params"].pop("representation.hash") == "multiply_shift"
        assert now["plan"]["embedding_details"].pop("dhe_hash") == "multiply_shift"
        for key in ("run_key", "quality_key"):
            assert now["tags"][key] != before["tags"][key]
            now["tags"][key] = before["tags"][key]
        assert now["plan"]["run_key"] != before["plan"]["run_key"]
        now["plan"]["run_key"] = before["plan"]["run_key"]
    # Issue 23: the sweep's analysis scope; a label naming the settings that differ from the defaults.
    assert now["params"].pop("analysis_scope") == "sweep"
    variant = {"dhe_cache_trained": "dhe[k=16,decoder=16-8,cache.rows=8]+cache@cpu"}.get(case)
    if variant:
        assert now["tags"]["path"] == now["plan"]["path"] == variant
        now["tags"]["path"] = now["plan"]["path"] = before["tags"]["path"]
    if now["status"] == "FINISHED":
        sizes = before["metrics"]["latency_p50_ms"]
        # Issue 39: an interval's side too few calls bound is open: not recorded there, and flagged.
        bounds = {k: now["metrics"].pop(k, []) for k in
                  (f"latency_{p}_ci_{side}_ms" for p in ("p50", "p99") for side in ("low", "high"))}
        assert all(set(steps) <= set(sizes) for steps in bounds.values())
        assert bounds["latency_p99_ci_low_ms"] == sizes  # p99's lower side is bounded from one call on
        opened = {k: now["metrics"].pop(k) for k in ("latency_p50_ci_open", "latency_p99_ci_open")}
        assert opened == {k: sizes for k in opened}
        trust = {"memory_needed_bytes"}  # issue 23: the fit rule's input per size
        trust |= {"latency_robust_cv", "reliable", "attempts", "interference_other_cores",
                  "interference_steal_cores", "load_avg_before", "load_avg_after", "cpu_mhz"}
        assert {k: now["metrics"].pop(k) for k in trust} == {k: sizes for k in trust}
        if "device_gemm_gflops" in before["metrics"]:
            assert now["metrics"].pop("device_peaks_reliable") == [0]
        # Present only where a size still broke a rule after its retries, or where the kernel does not report
        # steal or frequency: they depend on the machine and its load, not on the code.
        now["tags"].pop("unreliable", None)
        now["tags"].pop("uncached_unreliable", None)  # issue 39: the uncached ladder is judged too
        # Issue 25: what the energy figures sum, or why there are none (this machine's counters).
        energy = now["tags"].pop("energy")
        assert energy.startswith("not measurable here: ") or "RAPL" in energy or "NVML" in energy
        now["metrics"].pop("joules_per_sample", None)
        if "cache_speedup" in now["metrics"]:
            for key in ("uncached_reliable", "cache_speedup_reliable"):
                assert now["metrics"].pop(key) == now["metrics"]["cache_speedup"], key  # at every size
        now["tags"].pop("interference_not_measurable", None)
        now["tags"].pop("peaks_unreliable", None)
    assert now["status"] == before["status"]
    assert now["params"] == before["params"]
    assert now["tags"] == before["tags"]  # run_key and quality_key included: the same hashes
    assert now["metrics"] == before["metrics"]  # every metric, at the same steps
    if now["status"] == "FINISHED":  # the comparison metrics duplicate figures of the run, for MLflow's UI
        sizes = before["metrics"]["latency_p50_ms"]
        expected = {f"{COMPARE}{k}": sizes for k in ("latency_p50_ms", "latency_p99_ms", "samples_per_s")}
        expected[f"{COMPARE}param_bytes"] = [0]
        if "accuracy" in before["metrics"]:
            expected.update({f"{COMPARE}accuracy": [0], f"{COMPARE}correct_preds_per_s": sizes})
        assert added == expected
    assert now["artifacts"] == before["artifacts"]
    assert now["plan"] == before["plan"]  # the analytic cost and the representation details
