"""Whether each query size's measurement can be trusted, and what the ladder does when it cannot.

The rules (docs/measurement.md, thresholds in conf/config.yaml under `measure.stability`), per size:

- **interference**: other processes used more than `max_other_cores` of the cores the run was given
  (its affinity) and their SMT siblings, beyond the reading's tick resolution, however many of them its
  threads use (`harness/core/load.py` `interference`: two measuring jobs on one node flag each other;
  pinned to their own cores, they do not); the hypervisor stole more than `max_steal_cores`; other
  processes held the device;
- **dispersion**: the robust CV (1.4826 MAD / median) is above `max_robust_cv`. The plain CV is recorded
  but not ruled on: one outlier among thousands of sub-millisecond calls sets it above 1 on a quiet machine;
- **order**: a smaller query size is slower than a larger one beyond both p50 intervals (and
  `order_tolerance`): q=1024 slower than q=4096 is interference, not a property of the path;
- **roof**: the achieved GFLOP/s is above the measured GEMM peak of the path's precision by more than
  `peak_tolerance`; the peak is then measured again, once, and the size judged against the new one.

A size that breaks a rule is measured again, with a neighbouring size so drift shows (at most `retries`
more rounds, `retry_pause_s` apart, costing at most `retry_budget` x the first pass; a size disturbed by
other processes only once the machine is quiet again); what still breaks one is recorded `reliable` = 0
with its reasons.
Bandwidth is not ruled on: hot rows served from cache (Zipf ids) legitimately beat a DRAM gather peak.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from harness.core.load import LoadReading, interference
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

    def above(self, r: QuerySizeResult) -> bool:
        """Whether this size went above the roof (beyond the tolerance). Reads only."""
        peak = self.peak_gflops
        return peak is not None and peak > 0 and self.achieved_gflops(r) > peak * (1 + self.tolerance)

    def recheck_once(self) -> None:
        """Measure the peak again (the first time a size is above it: a peak measured under load is too
        low); later calls do nothing. This is the one place the Ceiling measures."""
        if self.recheck is None or self.rechecked:
            return
        before = self.peak_gflops or 0.0
        again = self.recheck()
        self.rechecked = (before, again if again else before)
        self.peak_gflops = again or before

    def reason(self, r: QuerySizeResult) -> str | None:
        """Why this size is above the roof as it stands, or None. Reads only (`Judge.size` rechecks first)."""
        if not self.above(r):
            return None
        return (f"achieved {self.achieved_gflops(r):,.0f} GFLOP/s, above the measured "
                f"{self.metric.removesuffix('_gflops')} peak {self.peak_gflops:,.0f} (the peak is suspect)")


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
        disturbed = interference(load, self.rules.max_other_cores)
        if disturbed:
            out.append(disturbed)
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
        if self.ceiling is not None:
            if self.ceiling.above(r):
                self.ceiling.recheck_once()  # explicitly: measuring again is this rule's one side effect
            above = self.ceiling.reason(r)
            if above:
                out.append(above)
        return out

    def order(self, results: Sequence[QuerySizeResult]) -> Reasons:
        """Sizes that are slower than a larger size beyond both p50 intervals: both are flagged. An open
        side (too few calls, NaN) bounds nothing: no comparison with it convicts."""
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
    """A ladder measured with its retries: the attempt used per size, every attempt, what is unreliable,
    and notes on what was not measured again and why (a steady neighbour, the budget spent)."""

    results: list[QuerySizeResult]
    attempts: dict[int, list[QuerySizeResult]] = field(default_factory=dict)
    reasons: Reasons = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

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


def seconds_of(r: QuerySizeResult) -> float:
    """What measuring a size costs, from its result: its timed calls and its first call (warm-up is a
    fixed share beside them)."""
    return sum(r.latencies_s) + (r.first_call_s or 0.0)


def measure_reliably(measure: Callable[[list[int], int], list[QuerySizeResult]], sizes: Sequence[int],
                     judge: Judge, sleep: Callable[[float], None] = time.sleep,
                     machine_now: Callable[[], LoadReading | None] = lambda: None,
                     note: Callable[[str], None] = lambda text: None) -> Ladder:
    """`measure(sizes, attempt)` the ladder; re-measure what breaks a rule where that can help, within a
    budget, then flag what still breaks one.

    Before each round the machine is looked at (`machine_now()`, a short load reading): while other
    processes still hold the run's cores, a size disturbed by them is not measured again (a steady
    neighbour: a retry cannot succeed, it only multiplies the time); a size flagged for another reason, or
    any flagged size once the machine is quiet, is. All rounds together cost at most `retry_budget` times
    the first pass (`seconds_of` each size); a round that does not fit measures the flagged sizes without
    their neighbours, or stops. Of a size's attempts, the latest that passes the per-size rules is used
    (else the latest). `note(text)` hears each decision; the ladder keeps them.
    """
    sizes = list(sizes)
    attempts = {r.query_size: [r] for r in measure(sizes, 1)}
    current = [attempts[q][-1] for q in sizes]
    reasons = judge.ladder(current)
    budget = judge.rules.retry_budget * sum(seconds_of(r) for r in current)
    spent, notes = 0.0, []

    def say(text: str) -> None:
        notes.append(text)
        note(text)

    def spent_note(qs: Sequence[int]) -> str:
        return (f"not measured again: {_sizes(qs)} (beyond what is left of the re-measurement budget, "
                f"{judge.rules.retry_budget:g} x the first pass, {budget:.1f} s: "
                "measure.stability.retry_budget)")

    for attempt in range(2, judge.rules.retries + 2):
        if not reasons:
            break
        if not _within_budget(sorted(reasons), sizes, attempts, budget - spent):
            say(spent_note(sorted(reasons)))  # no pause, no look: nothing flagged fits what is left
            break
        sleep(judge.rules.retry_pause_s)
        again, steady = _worth_measuring_again(reasons, current, judge, machine_now(), say)
        round_sizes = _within_budget(again, [q for q in sizes if q not in steady], attempts, budget - spent)
        retried = [q for q in again if q in round_sizes]
        if [q for q in again if q not in round_sizes]:
            say(spent_note([q for q in again if q not in round_sizes]))
        if not retried:
            break
        say(f"measuring again (attempt {attempt} of {judge.rules.retries + 1}): "
            + "; ".join(f"q={q}: {reasons[q][0]}" for q in retried))
        for r in measure(round_sizes, attempt):
            attempts[r.query_size].append(r)
            spent += seconds_of(r)
        current = [_usable(attempts[q], judge) for q in sizes]
        reasons = judge.ladder(current)
    return Ladder(current, attempts, reasons, notes)


def _worth_measuring_again(reasons: Reasons, current: list[QuerySizeResult], judge: Judge,
                           now: LoadReading | None, say: Callable[[str], None]) -> tuple[list[int], set[int]]:
    """The flagged sizes a retry can help, and the sizes (flagged or not) a steady neighbour disturbed:
    on a quiet machine (or one not read) all flagged sizes and none; while other processes still hold the
    cores, the flagged sizes they did not disturb, and every size they did (not worth timing again, not
    even as a neighbour for the order check)."""
    flagged = sorted(reasons)
    busy = judge.load_reasons(now)
    if not busy:
        return flagged, set()
    steady = {r.query_size for r in current if judge.load_reasons(r.load)}
    disturbed = [q for q in flagged if q in steady]
    if disturbed:
        say(f"not measured again: {_sizes(disturbed)} ({busy[0]} just now, as while they were timed: a "
            "steady neighbour; a retry cannot succeed until it stops)")
    return [q for q in flagged if q not in steady], steady


def _within_budget(again: list[int], sizes: list[int], attempts: dict[int, list[QuerySizeResult]],
                   left_s: float) -> list[int]:
    """The round's sizes: of `again`, the smaller ones that fit in `left_s` (all, where they do), with
    their neighbours among `sizes` if those fit too; [] when none does."""
    cost = lambda qs: sum(seconds_of(attempts[q][-1]) for q in qs)  # noqa: E731 - one line
    chosen: list[int] = []
    for q in sorted(again):
        if cost([*chosen, q]) <= left_s:
            chosen.append(q)
    if not chosen:
        return []
    with_neighbours = neighbours(chosen, sizes)
    return with_neighbours if cost(with_neighbours) <= left_s else [q for q in sizes if q in chosen]


def _sizes(qs: Sequence[int]) -> str:
    return ", ".join(f"q={q}" for q in qs)


def _usable(tries: list[QuerySizeResult], judge: Judge) -> QuerySizeResult:
    passing = [r for r in tries if not judge.size(r)]
    return passing[-1] if passing else tries[-1]
