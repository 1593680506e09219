"""The timing contract: timed ladders over query sizes, and the statistics of their raw samples.

The harness owns the clock; the backend owns synchronization. Every timed iteration is

    t0 = clock()
    out = backend.fetch(backend.run(backend.to_device(batch)))
    backend.synchronize(out)
    t1 = clock()

so no clock is read around work the device has not finished, and a device backend's latency runs from a
host batch to its result on the host, as a served query's does (`to_device` and `fetch` are nothing on a
CPU). The device's own time for the model alone, where it keeps one, is recorded beside it. The first
call of each query size (compilation, lazy allocation, cold caches) is timed apart; warm-up runs by count
*and* by time; the measured phase runs until both a minimum count and a minimum time are met (or a
cap), and every raw per-iteration latency is kept. A `LoadProbe` (harness/core/load.py) brackets each
measured phase, so every size says how busy the machine was while it was timed;
harness/pipeline/stability.py judges the result.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

from backends.base import Backend
from harness.core.energy import EnergyMeter
from harness.core.load import LoadProbe, LoadReading

Clock = Callable[[], float]


@dataclass(frozen=True)
class LadderSettings:
    """How long each query size is timed; no defaults here: a run's come from conf/ (`measure.*`)."""

    warmup_iters: int
    warmup_s: float
    min_iters: int
    min_time_s: float
    max_iters: int
    max_time_s: float

    @classmethod
    def of(cls, measure) -> "LadderSettings":
        """The settings of a validated `measure` config section."""
        return cls(**{f.name: getattr(measure, f.name) for f in fields(cls)})


CONFIDENCE = 0.95  # of the intervals recorded beside p50 and p99


@dataclass(frozen=True)
class LatencyStats:
    """Summary of raw latencies (seconds in, milliseconds out). Percentiles interpolate linearly; their
    95 % confidence intervals are distribution-free, from order statistics (`quantile_ci`)."""

    n: int
    mean_ms: float
    std_ms: float
    cv: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    samples_per_s: float  # query_size / mean latency: one query at a time, back to back
    p50_ci_low_ms: float = math.nan
    p50_ci_high_ms: float = math.nan
    p99_ci_low_ms: float = math.nan
    p99_ci_high_ms: float = math.nan
    # 1.4826 x median absolute deviation / median: the CV a normal distribution would have, but blind to
    # a few outliers (one 27 ms call among 9,718 of 0.16 ms gives CV 1.41 on a quiet machine, robust CV 0.06)
    robust_cv: float = math.nan

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _log_binomial_pmf(k: int, n: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
            + (n - k) * math.log1p(-p))


def order_statistic_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> tuple[int, int]:
    """1-based ranks (l, u) of the sorted samples that bracket the q-quantile with at least `confidence`
    (the number of samples below the quantile is Binomial(n, q)); clamped to [1, n] where n is too small
    to bound a side (p99's upper side needs 368 samples: below that it is the largest sample).

    >>> order_statistic_ranks(100, 0.5)
    (40, 61)
    """
    low, high = interval_ranks(n, q, confidence)
    return (1 if low is None else low), (n if high is None else high)


def interval_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> tuple[int | None, int | None]:
    """As `order_statistic_ranks`, with None for a side that n samples cannot bound: the interval is open
    there (no order statistic reaches `confidence`). Both sides of p50 need 6 samples, p99's upper side
    368 (0.99^n <= 2.5 %).

    >>> interval_ranks(5, 0.5), interval_ranks(6, 0.5), interval_ranks(367, 0.99), interval_ranks(368, 0.99)
    ((None, None), (1, 6), (359, None), (360, 368))
    """
    p, tail = min(max(q, 1e-12), 1 - 1e-12), (1.0 - confidence) / 2
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    # The CDF below mean - 12 sd is < 1e-30: start there rather than at 0 (n can be 100,000).
    start = max(0, int(mean - 12 * sd) - 1)
    cdf, low, high = 0.0, None, None
    for k in range(start, n + 1):
        cdf += math.exp(_log_binomial_pmf(k, n, p))
        if low is None and cdf > tail:  # P(B <= k - 1) <= tail: the (k)th smallest is below the quantile
            low = k
        if cdf >= 1 - tail:  # P(B <= k) >= 1 - tail: the (k + 1)th smallest is above it
            high = k + 1
            break
    # Rank 0 (below the smallest sample) or n + 1 (above the largest) is no sample: that side is open.
    return (low if low is not None and 1 <= low <= n else None,
            high if high is not None and 1 <= high <= n else None)


def quantile_ci(sorted_values: Sequence[float], q: float,
                confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free `confidence` interval of the q-quantile (0 < q < 1) of already sorted values;
    NaN for a side too few values bound (`interval_ranks`): never the extreme value posing as a bound."""
    low, high = interval_ranks(len(sorted_values), q, confidence)
    return (math.nan if low is None else sorted_values[low - 1],
            math.nan if high is None else sorted_values[high - 1])


def robust_cv(sorted_values: Sequence[float]) -> float:
    """1.4826 x MAD / median (sorted values in)."""
    median = percentile(sorted_values, 50)
    if median <= 0:
        return 0.0
    deviations = sorted(abs(v - median) for v in sorted_values)
    return 1.4826 * percentile(deviations, 50) / median


def summarize(latencies_s: Sequence[float], query_size: int) -> LatencyStats:
    if not latencies_s:
        raise ValueError("no latency samples to summarize")
    values = sorted(latencies_s)
    n = len(values)
    mean = sum(values) / n
    # Sample standard deviation (n - 1): these are samples of a latency distribution.
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    ms = 1e3
    return LatencyStats(
        n=n,
        mean_ms=mean * ms,
        std_ms=std * ms,
        cv=std / mean if mean > 0 else 0.0,
        min_ms=values[0] * ms,
        p50_ms=percentile(values, 50) * ms,
        p90_ms=percentile(values, 90) * ms,
        p95_ms=percentile(values, 95) * ms,
        p99_ms=percentile(values, 99) * ms,
        max_ms=values[-1] * ms,
        samples_per_s=query_size / mean if mean > 0 else float("inf"),
        **_intervals(values, ms),
        robust_cv=robust_cv(values),
    )


def _intervals(values: list[float], scale: float) -> dict[str, float]:
    p50, p99 = quantile_ci(values, 0.50), quantile_ci(values, 0.99)
    return {"p50_ci_low_ms": p50[0] * scale, "p50_ci_high_ms": p50[1] * scale,
            "p99_ci_low_ms": p99[0] * scale, "p99_ci_high_ms": p99[1] * scale}


TICK_S = 0.5  # how often the timed loop tells its reporter how far it is (between calls, off the clock)


class Reporter:
    """What a measurement says as it goes (harness/app/console.py draws it; this base says nothing): which
    size it is timing and in which attempt, how far the timed loop is, each size's result, and notes (why
    sizes are measured again, or not)."""

    def size(self, query_size: int, attempt: int, planned_s: float = 0.0) -> None:
        """Timing of `query_size` starts (attempt 2, 3, ...: measured again), for at least `planned_s`."""

    def tick(self, calls: int, seconds: float) -> None:
        """The timed loop has made `calls` timed calls in `seconds` so far."""

    def done(self, result: "QuerySizeResult") -> None:
        """A size is measured."""

    def note(self, text: str) -> None:
        """One line worth keeping (a re-measurement and its reason, a budget spent)."""


SILENT = Reporter()


@dataclass
class Timing:
    """What one query size's timing produced: first call apart, warm-up count, raw samples."""

    first_call_s: float
    warmup_iters: int
    latencies_s: list[float]
    device_latencies_s: list[float] = field(default_factory=list)  # device-side (CUDA events), if any


def time_iterations(
    step: Callable[[int], Any],
    synchronize: Callable[[Any], None],
    settings: LadderSettings,
    clock: Clock = time.perf_counter,
    device_time: Callable[[], float | None] | None = None,
    on_steady: Callable[[], None] | None = None,
    on_tick: Callable[[int, float], None] | None = None,
) -> Timing:
    """Time `step(i)` (which launches iteration i) with `synchronize(out)` inside every timed region.

    `device_time()`, read after the clock, gives the device's own time for the iteration just done;
    `on_tick(calls, seconds)` is told every TICK_S how far the measured phase is (between calls, never
    inside a timed region).
    """
    t0 = clock()
    synchronize(step(0))
    first_call = clock() - t0

    i = 1
    warm_start = clock()
    while i <= settings.warmup_iters or clock() - warm_start < settings.warmup_s:
        synchronize(step(i))
        i += 1
        if clock() - warm_start > settings.max_time_s:
            break
    warmup = i - 1
    if on_steady is not None:
        on_steady()

    samples: list[float] = []
    device_samples: list[float] = []
    append = samples.append
    begin = clock()
    next_tick = begin + TICK_S
    while True:
        t0 = clock()
        out = step(i)
        synchronize(out)
        t1 = clock()
        append(t1 - t0)
        if device_time is not None:
            elapsed = device_time()
            if elapsed is not None:
                device_samples.append(elapsed)
        i += 1
        elapsed = t1 - begin
        n = len(samples)
        if n >= settings.max_iters or elapsed >= settings.max_time_s:
            break
        if n >= settings.min_iters and elapsed >= settings.min_time_s:
            break
        if on_tick is not None and t1 >= next_tick:
            on_tick(n, elapsed)
            next_tick = t1 + TICK_S
    return Timing(first_call_s=first_call, warmup_iters=warmup, latencies_s=samples,
                  device_latencies_s=device_samples)


@dataclass
class QuerySizeResult:
    query_size: int
    feasible: bool
    first_call_s: float | None = None
    warmup_iters: int = 0
    latencies_s: list[float] = field(default_factory=list)
    stats: LatencyStats | None = None
    error: str | None = None
    device_latencies_s: list[float] = field(default_factory=list)  # the device's own timer, if it has one
    device_stats: LatencyStats | None = None
    extra: dict[str, float] = field(default_factory=dict)  # the adapter's per-size metrics
    load: LoadReading | None = None  # how busy the host was during the measured phase
    attempt: int = 1  # 2, 3, ...: measured again because the first attempts broke a stability rule

    @property
    def timed(self) -> LatencyStats:
        """The statistics of a feasible size (an infeasible one has none: asking is a bug)."""
        if self.stats is None:
            raise ValueError(f"query size {self.query_size} was not measured ({self.error})")
        return self.stats

    @property
    def first_call_ms(self) -> float:
        return (self.first_call_s or 0.0) * 1e3


def host_to_host(backend, pool: list) -> Callable[[int], Any]:
    """Iteration i of the timed loop: pooled batch i's copy to the device, the model, the copy back."""
    count, run = len(pool), backend.run
    if not (_overrides(backend, "to_device") or _overrides(backend, "fetch")):
        return lambda i: run(pool[i % count])  # nothing to copy (a CPU): not even a call more
    to_device, fetch = backend.to_device, backend.fetch
    return lambda i: fetch(run(to_device(pool[i % count])))


def _overrides(backend, method: str) -> bool:
    """Whether the adapter has `method` of its own, beyond the contract's default (backends/base.py)."""
    own = getattr(type(backend), method, None)
    return own is not None and own is not getattr(Backend, method)


def run_ladder(
    backend,
    query_sizes: Sequence[int],
    make_pool: Callable[[int], list],
    settings: LadderSettings,
    on_size_done: Callable[[QuerySizeResult], None] | None = None,
    clock: Clock = time.perf_counter,
    probe: Callable[[int], LoadProbe] | None = None,
    attempt: int = 1,
    reporter: Reporter = SILENT,
    energy: EnergyMeter | None = None,
) -> list[QuerySizeResult]:
    """Measure `backend` at each query size; an out-of-memory size is recorded infeasible and skipped.

    `make_pool(query_size)` returns host batches; the backend places them on its device before timing.
    `probe(query_size)`, if given, brackets each measured phase (from the end of warm-up to the last
    timed call). Errors other than out-of-memory propagate: they are bugs, not measurements.
    """
    results = []
    for query_size in query_sizes:
        error = None
        reporter.size(query_size, attempt, settings.min_time_s)
        try:
            watch = probe(query_size) if probe is not None else None
            result = _time_size(backend, query_size, make_pool, settings, clock, watch, attempt, reporter,
                                energy)
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not backend.is_out_of_memory(exc):
                raise
            error = f"out of memory: {exc}"
        if error is not None:  # released here, once the error (and with it the size's pool) is gone
            backend.release_memory()
            result = QuerySizeResult(query_size=query_size, feasible=False, error=error, attempt=attempt)
        results.append(result)
        reporter.done(result)
        if on_size_done is not None:
            on_size_done(result)
    return results


def _time_size(backend, query_size: int, make_pool: Callable[[int], list], settings: LadderSettings,
               clock: Clock, watch: LoadProbe | None, attempt: int,
               reporter: Reporter = SILENT, energy: EnergyMeter | None = None) -> QuerySizeResult:
    """One query size: its pool staged, captured (CUDA graphs), timed under the load probe. The pool is
    this function's own, so it is dropped before the next size allocates its own."""
    pool = [backend.place(batch) for batch in make_pool(query_size)]
    backend.begin_size(query_size)
    captured = {}
    t0 = clock()  # CUDA graphs: captured once per size, before its first call; timed apart
    if getattr(backend, "capture", lambda staged: False)(pool[0]):
        captured["capture_s"] = clock() - t0  # like compile time: never in the samples

    device_load: Callable[[], dict[str, float]] = getattr(backend, "device_load", dict)
    device_before: dict[str, float] = {}

    def on_steady() -> None:
        backend.mark_steady()
        device_before.update(device_load())  # the device's other users, before the phase...
        if energy is not None:
            energy.start()
        if watch is not None:
            watch.start()  # the last thing before the measured phase's first clock read

    timing = time_iterations(host_to_host(backend, pool), backend.synchronize, settings, clock,
                             device_time=backend.device_time_s, on_steady=on_steady, on_tick=reporter.tick)
    load = watch.stop() if watch is not None else None
    joules = energy.stop() if energy is not None else None
    device = bracketed(device_before, device_load())  # ...and after it
    if joules is not None and timing.latencies_s:  # the phase's energy over the samples it served
        served = len(timing.latencies_s) * backend.queries_per_call * query_size
        device["joules_per_sample"] = joules / served
    per_call = backend.queries_per_call
    if per_call != 1:  # one call served `per_call` queries back to back: per-query time
        timing.first_call_s /= per_call
        timing.latencies_s = [t / per_call for t in timing.latencies_s]
        timing.device_latencies_s = [t / per_call for t in timing.device_latencies_s]
    device_s = timing.device_latencies_s
    return QuerySizeResult(query_size=query_size, feasible=True, first_call_s=timing.first_call_s,
                           warmup_iters=timing.warmup_iters, latencies_s=timing.latencies_s,
                           stats=summarize(timing.latencies_s, query_size), device_latencies_s=device_s,
                           device_stats=summarize(device_s, query_size) if device_s else None,
                           extra={**backend.end_size(), **device, **captured}, load=load, attempt=attempt)


def bracketed(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The device's load over a phase from a look before and one after: the most other processes seen
    (one that came or went during it disturbed it), the rest as read after; what only one look could
    read is kept from it.

    >>> bracketed({"device_other_processes": 1.0}, {"device_other_processes": 0.0, "device_util": 9.0})
    {'device_other_processes': 1.0, 'device_util': 9.0}
    """
    out = {**before, **after}
    if "device_other_processes" in before and "device_other_processes" in after:
        out["device_other_processes"] = max(before["device_other_processes"], after["device_other_processes"])
    return out
