"""Whether each query size's measurement can be trusted, and what the ladder does when it cannot.

The rules (docs/measurement.md, thresholds in conf/config.yaml under `measure.stability`), per size:

- **interference**: other processes used more CPU on the run's cores than the run left spare
  (cores - the adapter's `host_threads()`), by more than `max_other_cores` (beyond the reading's tick
  resolution); the hypervisor stole more than `max_steal_cores`; other processes held the device;
- **dispersion**: the robust CV (1.4826 MAD / median) is above `max_robust_cv`. The plain CV is recorded
  but not ruled on: one outlier among thousands of sub-millisecond calls sets it above 1 on a quiet machine;
- **order**: a smaller query size is slower than a larger one beyond both p50 intervals (and
  `order_tolerance`): q=1024 slower than q=4096 is interference, not a property of the path;
- **roof**: the achieved GFLOP/s is above the measured GEMM peak of the path's precision by more than
  `peak_tolerance`; the peak is then measured again, once, and the size judged against the new one.

A size that breaks a rule is measured again, with a neighbouring size so drift shows (at most `retries`
more rounds, `retry_pause_s` apart); what still breaks one is recorded `reliable` = 0 with its reasons.
Bandwidth is not ruled on: hot rows served from cache (Zipf ids) legitimately beat a DRAM gather peak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from harness.core.load import LoadReading
from harness.core.schema import StabilityConfig
from harness.pipeline.timing import QuerySizeResult

Reasons = dict[int, list[str]]  # query size -> why its measurement cannot be trusted


@dataclass
class Ceiling:
    """The GEMM roof a path is judged against; re-measured once (`recheck`) the first time a size is
    above it, since a peak measured under load is too low."""

    flops_per_query: Callable[[int], float]
    peak_gflops: float | None
    metric: str  # e.g. gemm_bf16_gflops
    tolerance: float
    recheck: Callable[[], float | None] | None = None
    rechecked: tuple[float, float] | None = None  # (peak before, peak measured again)

    def achieved_gflops(self, r: QuerySizeResult) -> float:
        return self.flops_per_query(r.query_size) / (r.timed.mean_ms / 1e3) / 1e9

    def reason(self, r: QuerySizeResult) -> str | None:
        if not self.peak_gflops:
            return None
        achieved = self.achieved_gflops(r)
        if (
            achieved > self.peak_gflops * (1 + self.tolerance)
            and self.recheck is not None
            and not self.rechecked
        ):
            before, again = self.peak_gflops, self.recheck()
            self.rechecked = (before, again if again else before)
            self.peak_gflops = again or before
        if achieved > self.peak_gflops * (1 + self.tolerance):
            return (
                f"achieved {achieved:,.0f} GFLOP/s, above the measured {self.metric.removesuffix('_gflops')} "
                f"peak {self.peak_gflops:,.0f} (the peak is suspect)"
            )
        return None


@dataclass
class Judge:
    """The rules in force for one path: its thresholds, the host threads it keeps busy, its roof."""

    rules: StabilityConfig
    host_threads: int
    ceiling: Ceiling | None = None

    def load_reasons(self, load: LoadReading | None) -> list[str]:
        """Why a phase's host load makes its timing untrustworthy ([] if it does not, or is unknown)."""
        out: list[str] = []
        if load is None:
            return out
        if load.other_cores is not None:
            spare = max(0, load.cores - self.host_threads)
            if load.other_cores > spare + self.rules.max_other_cores + load.resolution_cores:
                left = (
                    f" (the run's {self.host_threads} threads left {spare} of {load.cores} spare)"
                    if spare
                    else ""
                )
                out.append(f"other processes used {load.other_cores:.2f} cores{left}")
        if (
            load.steal_cores is not None
            and load.steal_cores > self.rules.max_steal_cores + load.resolution_cores
        ):
            out.append(f"the hypervisor stole {load.steal_cores:.2f} cores")
        return out

    def size(self, r: QuerySizeResult) -> list[str]:
        """Why this one size's measurement cannot be trusted ([] if it can; an infeasible size has none)."""
        if not r.feasible or r.stats is None:
            return []
        out = self.load_reasons(r.load)
        others = r.extra.get("device_other_processes", 0)
        if others > 0:
            out.append(f"{others:.0f} other processes used the device")
        if r.timed.robust_cv > self.rules.max_robust_cv:
            out.append(f"robust CV {r.timed.robust_cv:.2f} > {self.rules.max_robust_cv:g}")
        above = self.ceiling.reason(r) if self.ceiling is not None else None
        if above:
            out.append(above)
        return out

    def order(self, results: Sequence[QuerySizeResult]) -> Reasons:
        """Sizes that are slower than a larger size beyond both p50 intervals: both are flagged."""
        done = sorted((r for r in results if r.feasible and r.stats is not None), key=lambda r: r.query_size)
        out: Reasons = {}
        for i, small in enumerate(done):
            for large in done[i + 1:]:
                if small.timed.p50_ci_low_ms > large.timed.p50_ci_high_ms * (1 + self.rules.order_tolerance):
                    why = (
                        f"q={small.query_size} slower than q={large.query_size} (p50 "
                        f"{small.timed.p50_ms:.3g} vs {large.timed.p50_ms:.3g} ms, beyond both intervals)"
                    )
                    for q in (small.query_size, large.query_size):
                        out.setdefault(q, []).append(why)
        return out

    def ladder(self, results: Sequence[QuerySizeResult]) -> Reasons:
        """Every rule over a whole ladder: per size, then the order of sizes."""
        out: Reasons = {}
        for r in results:
            reasons = self.size(r)
            if reasons:
                out[r.query_size] = reasons
        for q, reasons in self.order(results).items():
            out.setdefault(q, []).extend(reasons)
        return out


@dataclass
class Ladder:
    """A ladder measured with its retries: the attempt used per size, every attempt, what is unreliable."""

    results: list[QuerySizeResult]
    attempts: dict[int, list[QuerySizeResult]] = field(default_factory=dict)
    reasons: Reasons = field(default_factory=dict)

    def reliable(self, query_size: int) -> bool:
        return query_size not in self.reasons


def neighbours(flagged: Sequence[int], sizes: Sequence[int]) -> list[int]:
    """The flagged sizes and, for each, the next larger size of the ladder (the next smaller at its top),
    in the ladder's order: measured again side by side, so drift between attempts shows.

    >>> neighbours([64], [1, 8, 64, 256]), neighbours([256], [1, 8, 64, 256])
    ([64, 256], [64, 256])
    """
    ordered = sorted(sizes)
    wanted = set(flagged)
    for q in flagged:
        i = ordered.index(q)
        if len(ordered) > 1:
            wanted.add(ordered[i + 1] if i + 1 < len(ordered) else ordered[i - 1])
    return [q for q in sizes if q in wanted]


def measure_reliably(measure: Callable[[list[int], int], list[QuerySizeResult]], sizes: Sequence[int],
                     judge: Judge, sleep: Callable[[float], None] = time.sleep) -> Ladder:
    """`measure(sizes, attempt)` the ladder; re-measure what breaks a rule (bounded), then flag what still
    does.

    Of a size's attempts, the latest that passes the per-size rules is used (else the latest): a retry
    that was left alone replaces a disturbed first attempt, and a neighbour measured again beside a
    flagged size is compared with it side by side.
    """
    sizes = list(sizes)
    attempts = {r.query_size: [r] for r in measure(sizes, 1)}
    current = [attempts[q][-1] for q in sizes]
    reasons = judge.ladder(current)
    for attempt in range(2, judge.rules.retries + 2):
        if not reasons:
            break
        sleep(judge.rules.retry_pause_s)
        for r in measure(neighbours(sorted(reasons), sizes), attempt):
            attempts[r.query_size].append(r)
        current = [_usable(attempts[q], judge) for q in sizes]
        reasons = judge.ladder(current)
    return Ladder(current, attempts, reasons)


def _usable(tries: list[QuerySizeResult], judge: Judge) -> QuerySizeResult:
    passing = [r for r in tries if not judge.size(r)]
    return passing[-1] if passing else tries[-1]
