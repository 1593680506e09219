"""How far a measurement can be trusted: intervals, the stability rules, re-measurement, checked peaks.

Every input is planted (samples, load readings, peak kernels): no test here reads a clock to decide.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from harness.core import trust
from harness.core.load import LoadProbe, LoadReading, PlantedProbe, cpu_ticks, run_cores
from harness.core.schema import StabilityConfig
from harness.pipeline import peaks as pk
from harness.pipeline.stability import Ceiling, Judge, measure_reliably, neighbours
from harness.pipeline.timing import QuerySizeResult, order_statistic_ranks, quantile_ci, robust_cv, summarize

RULES = StabilityConfig(max_other_cores=0.1, max_steal_cores=0.1, max_robust_cv=0.25, order_tolerance=0.05,
                        peak_tolerance=0.05, retries=3, retry_pause_s=0.0,
                        retry_budget=3.0)  # generous: most tests here are about the rules, not the budget


def reading(other: float | None = 0.0, steal: float | None = 0.0, cores: int = 2) -> LoadReading:
    return LoadReading(seconds=2.0, cores=cores, other_cores=other, steal_cores=steal, load_before=0.1,
                       load_after=0.1, mhz=None, resolution_cores=0.02)


def result(q: int, ms: float | list[float], other: float = 0.0, attempt: int = 1, **load) -> QuerySizeResult:
    values = ms if isinstance(ms, list) else [ms * (1 + 0.01 * (i % 5)) for i in range(200)]
    samples = [v / 1e3 for v in values]
    return QuerySizeResult(q, True, 0.001, 1, samples, summarize(samples, q), load=reading(other, **load),
                           attempt=attempt)


# --- intervals -------------------------------------------------------------------------------------------

def test_order_statistic_ranks_match_the_published_table():
    # The distribution-free 95 % interval of a median of 100 (e.g. Conover, Practical Nonparametric
    # Statistics, table A3): the 40th and 61st smallest; of 20: the 6th and 15th.
    assert order_statistic_ranks(100, 0.5) == (40, 61)
    assert order_statistic_ranks(20, 0.5) == (6, 15)
    # p99's upper side needs 368 samples (0.99^n <= 2.5 %); with fewer it is the largest sample.
    assert order_statistic_ranks(366, 0.99)[1] == 366 and order_statistic_ranks(1000, 0.99)[1] < 1000


@pytest.mark.parametrize("q, n", [(0.5, 40), (0.5, 400), (0.99, 1000)])
def test_intervals_cover_the_true_quantile_about_95_percent_of_the_time(q, n):
    rng = np.random.default_rng(7)
    truth = -np.log(1 - q)  # the q-quantile of Exp(1)
    hits = sum(low <= truth <= high for low, high in
               (quantile_ci(sorted(rng.exponential(size=n)), q) for _ in range(2000)))
    assert 0.93 <= hits / 2000 <= 0.99  # order-statistic intervals are exact or slightly conservative


def test_summarize_records_the_intervals_beside_the_percentiles():
    stats = summarize([i / 1000 for i in range(1, 101)], 1)
    assert stats.p50_ci_low_ms == pytest.approx(40.0) and stats.p50_ci_high_ms == pytest.approx(61.0)
    assert stats.p50_ci_low_ms <= stats.p50_ms <= stats.p50_ci_high_ms
    assert stats.p99_ci_low_ms <= stats.p99_ms
    assert stats.p99_ci_high_ms != stats.p99_ci_high_ms  # 100 calls cannot bound p99 above: open (NaN)


def test_an_interval_too_few_calls_bound_is_recorded_open_and_convicts_nobody():
    from harness.pipeline.record import size_metrics

    class Cost:
        def flops(self, q):
            return 1e6 * q

        def bytes_read(self, q):
            return 1e4 * q

    forty = result(64, [1.0 + 0.01 * i for i in range(40)])
    rows = {key: value for key, value, q in size_metrics(forty, Cost(), {})}
    assert "latency_p99_ci_high_ms" not in rows and rows["latency_p99_ci_open"] == 1.0
    assert rows["latency_p99_ci_low_ms"] > 0 and rows["latency_p50_ci_open"] == 0.0
    full = result(64, [1.0 + 0.001 * i for i in range(400)])
    assert {k: v for k, v, q in size_metrics(full, Cost(), {})}["latency_p99_ci_open"] == 0.0
    # Five calls bound no side of p50: a smaller size slower than a larger one is not convicted on them.
    few_small, few_large = result(1, [9.0, 9.1, 9.2, 9.3, 9.4]), result(64, [1.0, 1.1, 1.2, 1.3, 1.4])
    assert Judge(RULES, 2).order([few_small, few_large]) == {}
    assert Judge(RULES, 2).order([result(1, 9.0), result(64, 1.0)])  # with 200 calls it is


def test_robust_cv_ignores_one_outlier_that_the_plain_cv_does_not():
    # Measured on a quiet machine: one 27 ms call among 9,718 of 0.16 ms gave CV 1.41.
    samples = sorted([0.16 * (1 + 0.02 * (i % 7)) for i in range(9717)] + [27.0])
    assert summarize([s / 1e3 for s in samples], 1).cv > 1.0
    assert robust_cv(samples) < 0.1


# --- the rules -------------------------------------------------------------------------------------------

def test_other_processes_on_the_runs_cores_flag_a_size():
    judge = Judge(RULES, host_threads=2)
    assert judge.size(result(64, 1.0, other=0.05)) == []
    assert judge.size(result(64, 1.0, other=1.7)) == ["other processes used 1.70 cores"]


def test_two_one_cpu_jobs_on_a_two_core_node_flag_each_other_and_pinned_ones_do_not():
    # Two Ray jobs (num_cpus: 1), unpinned on a 2-core node: each one's reading shows the other's core.
    # A run's idle core is not spare: it shares caches, memory bandwidth and, unpinned, its threads.
    one_thread = Judge(RULES, host_threads=1)
    assert one_thread.size(result(64, 1.0, other=0.95)) == ["other processes used 0.95 cores"]
    # Pinned to their own cores (taskset -c 0 / -c 1): each reads only its core (and its SMT siblings).
    pinned = QuerySizeResult(64, True, 0.001, 1, [0.001] * 200, summarize([0.001] * 200, 64),
                             load=reading(0.0, cores=1))
    assert Judge(RULES, host_threads=1).size(pinned) == []


def test_the_watched_cores_are_the_given_cpus_and_their_smt_siblings(monkeypatch, tmp_path):
    from harness.core import load

    real_path = load.Path

    def fake_path(name):  # cpu0's sibling is cpu2 (an SMT pair), cpu1 has none
        if str(name).endswith("cpu0/topology/thread_siblings_list"):
            (tmp_path / "s0").write_text("0,2\n")
            return real_path(tmp_path / "s0")
        if str(name).endswith("cpu1/topology/thread_siblings_list"):
            return real_path(tmp_path / "missing")
        return real_path(name)

    monkeypatch.setattr(load, "Path", fake_path)
    assert load.watched_cores((0,)) == (0, 2) and load.watched_cores((1,)) == (1,)


def test_steal_and_dispersion_and_device_users_are_reasons_too():
    judge = Judge(RULES, host_threads=2)
    assert judge.size(result(8, 1.0, steal=0.5)) == ["the hypervisor stole 0.50 cores"]
    spread = [1.0 + (i % 10) * 0.2 for i in range(200)]  # 1 to 2.8 ms: robust CV ~0.5
    assert judge.size(result(8, spread))[0].startswith("robust CV")
    busy_gpu = result(8, 1.0)
    busy_gpu.extra["device_other_processes"] = 2.0
    assert judge.size(busy_gpu) == ["2 other processes used the device"]


def test_what_the_machine_does_not_report_is_not_a_reason():
    assert Judge(RULES, host_threads=2).size(result(8, 1.0, other=None, steal=None)) == []
    assert reading(None, None).unmeasurable() == ["other processes' CPU time (/proc/stat)",
                                                  "steal time (/proc/stat)",
                                                  "CPU frequency (cpufreq, /proc/cpuinfo)"]
    assert "interference_other_cores" not in reading(None, None).metrics()  # never recorded as zero


def test_a_smaller_size_slower_than_a_larger_one_flags_both():
    judge = Judge(RULES, host_threads=2)
    ladder = [result(64, 1.0), result(1024, 20.0), result(4096, 12.0)]  # 1024 slower than 4096
    reasons = judge.ladder(ladder)
    assert sorted(reasons) == [1024, 4096]
    assert reasons[1024][0].startswith("q=1024 slower than q=4096")
    # Within the intervals (equal latencies, as small sizes on a CPU often are) nothing is flagged.
    assert judge.ladder([result(1, 0.30), result(8, 0.30)]) == {}


def test_a_size_above_the_roof_rechecks_the_peak_once_then_flags_it():
    calls = []
    ceiling = Ceiling(lambda q: 2e9 * q, 100.0, "gemm_gflops", 0.05, recheck=lambda: calls.append(1) or 120.0)
    judge = Judge(RULES, host_threads=2, ceiling=ceiling)
    # 2 GFLOP a sample at 8 samples in 100 ms: 160 GFLOP/s, above 100 and above the rechecked 120.
    assert "above the measured gemm peak 120" in judge.size(result(8, 100.0))[0]
    assert calls == [1] and ceiling.rechecked == (100.0, 120.0)
    judge.size(result(8, 100.0))
    assert calls == [1]  # once per run
    # A recheck that finds the real peak higher clears the size.
    fine = Ceiling(lambda q: 2e9 * q, 100.0, "gemm_gflops", 0.05, recheck=lambda: 400.0)
    assert Judge(RULES, 2, fine).size(result(8, 100.0)) == []


# --- measured again, then flagged ------------------------------------------------------------------------

class Ladder:
    """A fake `measure(sizes, attempt)`: each size's latency, and interference planted per (size, attempt)."""

    def __init__(self, ms: dict[int, float], busy: dict[tuple[int, int], float]) -> None:
        self.ms, self.busy, self.calls = ms, busy, []

    def __call__(self, sizes, attempt):
        self.calls.append((list(sizes), attempt))
        return [result(q, self.ms[q], other=self.busy.get((q, attempt), 0.0), attempt=attempt) for q in sizes]


def test_interference_that_passes_is_measured_again_and_not_flagged():
    fake = Ladder({1: 0.1, 64: 1.0, 4096: 40.0}, busy={(64, 1): 1.8})
    ladder = measure_reliably(fake, [1, 64, 4096], Judge(RULES, 2), sleep=lambda s: None)
    assert ladder.reasons == {}
    assert fake.calls == [([1, 64, 4096], 1), ([64, 4096], 2)]  # with its neighbour, side by side
    assert [r.attempt for r in ladder.results] == [1, 2, 2]
    assert len(ladder.attempts[64]) == 2


def test_interference_that_persists_is_flagged_after_the_bounded_retries():
    fake = Ladder({1: 0.1, 64: 1.0, 4096: 40.0}, busy={(64, a): 1.8 for a in range(1, 10)})
    pauses = []
    ladder = measure_reliably(fake, [1, 64, 4096], Judge(RULES, 2), sleep=pauses.append)
    assert ladder.reasons == {64: ["other processes used 1.80 cores"]}
    assert len(fake.calls) == 1 + RULES.retries and len(pauses) == RULES.retries
    assert not ladder.reliable(64) and ladder.reliable(4096)
    assert trust.describe(ladder.reasons) == "q=64: other processes used 1.80 cores"


def test_a_steady_neighbour_stops_re_measurement_at_once_and_every_disturbed_size_stays_flagged():
    steady = {(q, a): 0.9 for q in (1, 64, 4096) for a in range(1, 9)}
    fake = Ladder({1: 0.1, 64: 1.0, 4096: 40.0}, busy=steady)
    notes = []
    ladder = measure_reliably(fake, [1, 64, 4096], Judge(RULES, 2), sleep=lambda s: None,
                              machine_now=lambda: reading(0.95), note=notes.append)
    assert fake.calls == [([1, 64, 4096], 1)]  # no retry: the neighbour was still there
    assert set(ladder.reasons) == {1, 64, 4096}
    assert notes == ["not measured again: q=1, q=64, q=4096 (other processes used 0.95 cores just now, as "
                     "while they were timed: a steady neighbour; a retry cannot succeed until it stops)"]
    assert ladder.notes == notes


def test_a_burst_is_measured_again_once_the_machine_is_quiet():
    fake = Ladder({1: 0.1, 64: 1.0, 4096: 40.0}, busy={(64, 1): 0.9})
    notes = []
    ladder = measure_reliably(fake, [1, 64, 4096], Judge(RULES, 2), sleep=lambda s: None,
                              machine_now=lambda: reading(0.0), note=notes.append)
    assert ladder.reasons == {} and fake.calls[1] == ([64, 4096], 2)
    assert notes == ["measuring again (attempt 2 of 4): q=64: other processes used 0.90 cores"]


def test_re_measurement_stops_within_its_budget():
    from dataclasses import replace

    rules = replace(RULES, retry_budget=0.5)
    noisy = [10.0 if i % 2 else 30.0 for i in range(200)]  # robust CV ~1.5: broken in every attempt
    fake = Ladder({1: 0.1, 64: noisy, 4096: 40.0}, busy={})
    fake_call = fake.__call__
    first = sum(sum(r.latencies_s) + r.first_call_s for r in fake_call([1, 64, 4096], 1))
    fake.calls.clear()
    notes = []
    ladder = measure_reliably(fake, [1, 64, 4096], Judge(rules, 2), sleep=lambda s: None,
                              machine_now=lambda: reading(0.0), note=notes.append)
    retried = [r for q in ladder.attempts for r in ladder.attempts[q][1:]]
    assert retried and sum(sum(r.latencies_s) + r.first_call_s for r in retried) <= 0.5 * first
    assert 4096 not in {q for sizes, attempt in fake.calls[1:] for q in sizes}  # its neighbour did not fit
    assert 64 in ladder.reasons and "re-measurement budget" in notes[-1]


def test_a_size_a_steady_neighbour_disturbed_is_not_timed_again_even_as_a_neighbour():
    noisy = [0.5 if i % 2 else 1.5 for i in range(200)]  # robust CV ~1.5: flagged, not by the load
    fake = Ladder({1: 0.1, 64: noisy, 4096: 40.0}, busy={(4096, a): 0.9 for a in range(1, 9)})
    notes: list[str] = []
    ladder = measure_reliably(fake, [1, 64, 4096], Judge(RULES, 2), sleep=lambda s: None,
                              machine_now=lambda: reading(0.95), note=notes.append)
    assert fake.calls[1] == ([1, 64], 2)  # its neighbour is 1: 4096 is still under the steady neighbour
    assert all(4096 not in sizes for sizes, attempt in fake.calls[1:])
    assert set(ladder.reasons) == {64, 4096}


def test_the_notes_name_the_sizes_measured_again_and_those_the_budget_left_out():
    from dataclasses import replace

    rules = replace(RULES, retry_budget=0.5)
    cheap = [0.05 if i % 2 else 0.15 for i in range(200)]  # both flagged for dispersion, every attempt
    dear = [20.0 if i % 2 else 60.0 for i in range(200)]  # most of the first pass: it cannot fit
    fake = Ladder({1: cheap, 64: 1.0, 4096: dear}, busy={})
    notes: list[str] = []
    measure_reliably(fake, [1, 64, 4096], Judge(rules, 2), sleep=lambda s: None,
                     machine_now=lambda: reading(0.0), note=notes.append)
    assert fake.calls[1] == ([1, 64], 2)
    assert notes[0].startswith("not measured again: q=4096 (beyond what is left of the re-measurement "
                               "budget, 0.5 x the first pass")
    assert notes[1].startswith("measuring again (attempt 2 of 4): q=1: ") and "4096" not in notes[1]


def test_a_spent_budget_ends_re_measurement_without_a_pause_or_a_look():
    from dataclasses import replace

    rules = replace(RULES, retry_budget=0.0, retry_pause_s=5.0)
    fake = Ladder({1: 0.1, 64: 1.0, 4096: 40.0}, busy={(64, 1): 0.9})
    pauses: list[float] = []
    looks: list[int] = []
    notes: list[str] = []
    ladder = measure_reliably(fake, [1, 64, 4096], Judge(rules, 2), sleep=pauses.append,
                              machine_now=lambda: looks.append(1) or reading(0.0), note=notes.append)
    assert pauses == [] and looks == [] and len(fake.calls) == 1
    assert 64 in ladder.reasons and notes == [
        "not measured again: q=64 (beyond what is left of the re-measurement budget, 0 x the first pass, "
        "0.0 s: measure.stability.retry_budget)"]


def test_the_neighbour_of_the_largest_size_is_the_next_smaller():
    assert neighbours([4096], [1, 64, 4096]) == [64, 4096]
    assert neighbours([1, 4096], [1, 64, 4096]) == [1, 64, 4096]


def test_a_planted_probe_reports_the_planted_cores_and_a_real_one_reads_this_machine():
    probe = PlantedProbe(1.5)
    probe.start()
    assert probe.stop().other_cores == 1.5
    real = LoadProbe()
    real.start()
    got = real.stop()
    assert got.cores == len(run_cores())
    assert (got.other_cores is None) == (cpu_ticks(run_cores()) is None)


# --- peaks that are checked ------------------------------------------------------------------------------

class Quiet(PlantedProbe):
    """Planted other processes and no steal: a VM's real steal over a half-second kernel would flake the
    peak tests (each kernel is bracketed on its own)."""

    def stop(self) -> LoadReading:
        return replace(super().stop(), steal_cores=0.0)


class PeakAdapter:
    """Peak kernels that do nothing: the values are whatever the (fast) loop times; the load is planted.
    It has no gather kernels and GEMMs in fp32 and bf16; `asked` keeps the precisions each call wanted."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.asked: list = []

    def run_params(self):
        return {"num_threads": 2}

    def peak_kernels(self, scale, precisions=None):
        self.asked.append(precisions)
        kernels = {"copy": (lambda: None, 1e9, "bytes")}
        for p in precisions or ("fp32", "bf16"):
            kernels["gemm" if p == "fp32" else f"gemm_{p}"] = (lambda: None, 1e9, "flops")
        return kernels

    def synchronize(self, out):
        return None


class Device:
    def __init__(self, name: str = "fake cpu") -> None:
        self.backend, self.name, self.framework, self.framework_version = "cpu", name, "torch", "0"


def test_the_peak_cache_refuses_a_loaded_measurement(tmp_path, monkeypatch):
    judge = Judge(RULES, host_threads=2)
    monkeypatch.setattr(pk, "LoadProbe", lambda: Quiet(1.8))
    loaded = pk.device_peaks(PeakAdapter(), Device(), tmp_path, 1.0, judge.load_reasons)
    assert loaded.values and not loaded.reliable and "other processes used 1.80 cores" in loaded.unreliable[0]
    assert pk.read_cache(tmp_path) == {}  # used by its run, never cached
    monkeypatch.setattr(pk, "LoadProbe", lambda: Quiet(0.0))
    quiet = pk.device_peaks(PeakAdapter(), Device(), tmp_path, 1.0, judge.load_reasons)
    assert quiet.reliable and not quiet.cached
    [entry] = pk.read_cache(tmp_path).values()
    assert entry["load"]["other_cores"] == 0.0 and "torch" in entry["libraries"] and entry["measured_at"]
    again = pk.device_peaks(PeakAdapter(), Device(), tmp_path, 1.0, judge.load_reasons)
    assert again.cached and again.values == quiet.values


def test_a_burst_during_one_peak_kernel_refuses_that_kernel_and_keeps_the_quiet_ones(tmp_path, monkeypatch):
    judge = Judge(RULES, host_threads=2)
    probes = iter([0.0, 1.8, 0.0])  # copy quiet, the fp32 GEMM under a burst, bf16 GEMM quiet
    monkeypatch.setattr(pk, "LoadProbe", lambda: Quiet(next(probes)))
    peaks = pk.device_peaks(PeakAdapter(), Device(), tmp_path, 1.0, judge.load_reasons, precision="bf16")
    assert peaks.unreliable == ["other processes used 1.80 cores (while timing gemm)"]
    [entry] = pk.read_cache(tmp_path).values()
    assert set(entry["peaks"]) == {"copy_gbps", "gemm_bf16_gflops"}  # the GEMM under the burst is not kept
    [refused] = pk.read_cache(tmp_path, pk.REFUSED_FILE).values()
    assert refused["reasons"] == peaks.unreliable
    # The next run measures only what is missing.
    monkeypatch.setattr(pk, "LoadProbe", lambda: Quiet(0.0))
    adapter = PeakAdapter()
    again = pk.device_peaks(adapter, Device(), tmp_path, 1.0, judge.load_reasons, precision="bf16")
    assert again.reliable and adapter.asked == [("fp32",)]


def test_a_device_peak_is_judged_by_the_devices_own_users_too(tmp_path, monkeypatch):
    class Gpu(PeakAdapter):
        def device_load(self):
            return {"device_other_processes": 1.0}

    monkeypatch.setattr(pk, "LoadProbe", lambda: Quiet(0.0))  # the host is quiet
    peaks = pk.device_peaks(Gpu(), Device("fake gpu"), tmp_path, 1.0, Judge(RULES, 1).load_reasons)
    assert not peaks.reliable and "1 other processes used the device (while timing copy)" in peaks.unreliable
    assert pk.read_cache(tmp_path) == {}


def test_a_run_measures_only_the_peaks_it_needs_and_the_cache_fills_in(tmp_path, monkeypatch):
    judge = Judge(RULES, host_threads=2)
    monkeypatch.setattr(pk, "LoadProbe", lambda: Quiet(0.0))
    adapter, told = PeakAdapter(), []
    fp32 = pk.device_peaks(adapter, Device(), tmp_path, 1.0, judge.load_reasons, "fp32",
                           lambda metrics, s: told.append(metrics))
    assert adapter.asked == [("fp32",)] and set(fp32.values) == {"copy_gbps", "gemm_gflops"}
    assert told == [["copy_gbps", "gather_gbps", "gather64_gbps", "gemm_gflops"]]  # said before measuring
    again = pk.device_peaks(adapter, Device(), tmp_path, 1.0, judge.load_reasons, "fp32", told.append)
    assert again.cached and len(adapter.asked) == 1 and len(told) == 1  # no gather kernel: not asked again
    bf16 = pk.device_peaks(adapter, Device(), tmp_path, 1.0, judge.load_reasons, "bf16")
    assert adapter.asked[-1] == ("bf16",) and not bf16.cached  # only the missing GEMM
    [entry] = pk.read_cache(tmp_path).values()
    assert set(entry["peaks"]) == {"copy_gbps", "gemm_gflops", "gemm_bf16_gflops"}
    assert entry["peaks"]["gemm_gflops"] == fp32.values["gemm_gflops"]  # the fp32 run's value kept


def test_a_gemm_peak_is_sized_to_a_short_call_from_a_probe():
    from backends.torch_kernels import CALL_BUDGET_S, gemm_side, torch_peak_kernels

    def slow(side):  # a device doing 2 GFLOP/s (an emulated precision): 2048^2 would take 8.6 s a call
        return (lambda: time.sleep(2 * side**3 / 2e9)), (lambda out: None)

    probed: list[int] = []
    side = gemm_side(lambda s: probed.append(s) or slow(s), 2048)
    assert 256 <= side <= 512 and 2 * side**3 / 2e9 <= CALL_BUDGET_S * 1.5
    assert probed == [256]  # 17 ms at 256^2: no probe at 512^2 (67 ms a call) on a slow device
    kernels = torch_peak_kernels("cpu", 1 << 30, 0.01, ("fp32",))
    assert set(kernels) == {"copy", "gather", "gather64", "gemm"}  # no GEMM of a precision not asked for


def test_a_cpu_gather_roof_takes_the_faster_of_index_select_and_embedding_bag():
    """With index_select alone as the 64-byte-row roof, a table lookup (embedding_bag, which prefetches)
    read 130 % of it: the roof is the faster kernel, and either gathers the same rows."""
    import torch

    from backends.torch_kernels import _fastest_gather

    rows, index = torch.rand(4096, 16), torch.randint(0, 4096, (1000,))
    out = torch.empty(1000, 16)

    def slow():
        time.sleep(0.02)
        return torch.index_select(rows, 0, index, out=out)

    chosen = _fastest_gather(torch, rows, index, slow)
    assert chosen is not slow and torch.equal(chosen(), rows[index])  # embedding_bag: bags of one id

    def instant():
        return out

    assert _fastest_gather(torch, rows, index, instant) is instant


@pytest.mark.parametrize("fastest", ["_linear", "_onednn_linear"])
def test_a_cpu_gemm_peak_takes_the_fastest_of_mm_linear_and_onednn(monkeypatch, fastest):
    # With oneDNN capped at AVX2 a bf16 torch.mm ran at 1-3 GFLOP/s, a bf16 F.linear (an MLP's op) at
    # 20-35: a roof from mm alone put every bf16 size "above the peak"; on an EPYC oneDNN's fused linear,
    # which the MLPs run, was 1.45x aten's fp32 GEMM: a roof without it put fp32 paths above it.
    import torch

    from backends import torch_kernels as tk

    if fastest == "_onednn_linear" and not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    for name in {"_plain_mm", "_linear", "_onednn_linear"} - {fastest}:
        real = getattr(tk, name)

        def slow(a, b, c, real=real):
            time.sleep(0.02)
            return real(a, b, c)

        monkeypatch.setattr(tk, name, slow)
    kernels = tk.torch_peak_kernels("cpu", 1 << 30, 0.01, ("fp32", "bf16"))
    chosen = getattr(tk, fastest)
    assert kernels["gemm"][0].func is chosen and kernels["gemm_bf16"][0].func is chosen


def test_a_rechecked_peak_replaces_the_cached_one_only_when_quiet(tmp_path, monkeypatch):
    judge = Judge(RULES, host_threads=2)
    monkeypatch.setattr(pk, "LoadProbe", lambda: Quiet(0.0))
    pk.device_peaks(PeakAdapter(), Device(), tmp_path, 1.0, judge.load_reasons)
    key = next(iter(pk.read_cache(tmp_path)))
    cache = json.loads((tmp_path / pk.CACHE_FILE).read_text())
    cache[key]["peaks"]["gemm_gflops"] = 1e-9  # as if cached under load by an older version
    (tmp_path / pk.CACHE_FILE).write_text(json.dumps(cache))
    monkeypatch.setattr(pk, "LoadProbe", lambda: Quiet(1.8))
    value, reasons = pk.remeasure_peak(PeakAdapter(), Device(), tmp_path, 1.0, "gemm_gflops",
                                       judge.load_reasons)
    assert value > 1e-9 and reasons and pk.read_cache(tmp_path)[key]["peaks"]["gemm_gflops"] == 1e-9
    monkeypatch.setattr(pk, "LoadProbe", lambda: Quiet(0.0))
    value, reasons = pk.remeasure_peak(PeakAdapter(), Device(), tmp_path, 1.0, "gemm_gflops",
                                       judge.load_reasons)
    assert not reasons and pk.read_cache(tmp_path)[key]["peaks"]["gemm_gflops"] == value


def test_parallel_jobs_keep_each_others_cache_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(pk, "LoadProbe", lambda: Quiet(0.0))
    judge = Judge(RULES, host_threads=2)
    jobs = [threading.Thread(target=pk.device_peaks, args=(PeakAdapter(), Device(f"cpu {i}"), tmp_path, 1.0,
                                                          judge.load_reasons)) for i in range(8)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert len(pk.read_cache(tmp_path)) == 8


def test_the_advice_fits_the_cause_and_names_the_runs_own_peak_cache():
    gpu = trust.advice({64: ["2 other processes used the device"]}, "/data/results")
    assert "nvidia-smi" in gpu and "num_threads" not in gpu  # host threads are beside the point
    host = trust.advice({64: ["other processes used 1.20 cores"]})
    assert "taskset -c 0 python -m harness backend.num_threads=1" in host
    peak = trust.advice({8: ["achieved 13 GFLOP/s, above the measured gemm peak 3 (the peak is suspect)"]},
                        "/data/results")
    assert "remove /data/results/device_peaks.json" in peak


def test_reading_the_roofs_verdict_measures_nothing_only_the_judge_rechecks():
    calls = []
    ceiling = Ceiling(lambda q: 2e9 * q, 100.0, "gemm_gflops", 0.05, recheck=lambda: calls.append(1) or 400.0)
    fast = result(8, 100.0)  # 160 GFLOP/s against a 100 GFLOP/s roof
    assert ceiling.above(fast) and "above the measured gemm peak 100" in ceiling.reason(fast)
    assert calls == []  # a getter: no peak measured behind the reader's back
    assert Judge(RULES, 2, ceiling).size(fast) == [] and calls == [1]  # the rule rechecks, once


def test_one_parser_reads_a_process_stat():
    import os

    from harness.core.processes import proc_stat, start_ticks

    me = proc_stat(os.getpid())
    assert me is not None and me.ppid == os.getppid() and me.state in "RS" and me.cpu_ticks >= 0
    assert me.start == start_ticks(os.getpid())
    assert proc_stat(2**22 + 7) is None  # above pid_max: no such process
