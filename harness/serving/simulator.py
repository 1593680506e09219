"""Open-loop query-serving simulator: Poisson arrivals, one FIFO server per device, profiled service times.

Arrivals are a Poisson process at the offered rate: exponential inter-arrival *times* (not integer gaps).
Each query's latency runs from its scheduled arrival to the completion of its last part, so queueing
counts. Paths on one device share its server. Everything is seeded: the same inputs give the same result.
One base stream of unit-rate gaps is scaled by 1/QPS, so results change smoothly with the offered load.

>>> import numpy as np
>>> from harness.serving.policies import Static
>>> from harness.serving.profiles import PathProfile
>>> table = PathProfile("table@cpu", "cpu", 0.75, (1, 1000), (1.0, 1.0))   # 1 ms per query
>>> r = simulate(Static(table), [table], arrivals(np.random.default_rng(0), 20_000, qps=500.0),
...              np.ones(20_000, dtype=int), target_ms=10.0)
>>> round(r.utilisation("cpu"), 2), r.percentile(50) < 2.0   # M/D/1 at rho = 0.5
(0.5, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from harness.serving.profiles import PathProfile


def arrivals(rng: np.random.Generator, n: int, qps: float) -> np.ndarray:
    """Scheduled arrival times (s) of an open-loop Poisson process at `qps`."""
    return np.cumsum(rng.exponential(1.0, n)) / qps


@dataclass
class SimResult:
    policy: str
    offered_qps: float
    target_ms: float
    latency_ms: np.ndarray
    sizes: np.ndarray
    accuracy: np.ndarray  # per query: samples-weighted accuracy of the parts (nan if a path has none)
    duration_s: float
    busy_s: dict[str, float]
    path_samples: dict[str, int] = field(default_factory=dict)

    def percentile(self, p: float) -> float:
        return float(np.percentile(self.latency_ms, p))

    def violation_rate(self) -> float:
        return float(np.mean(self.latency_ms > self.target_ms))

    def utilisation(self, device: str) -> float:
        return self.busy_s.get(device, 0.0) / self.duration_s

    @property
    def samples_per_s(self) -> float:
        return float(self.sizes.sum() / self.duration_s)

    @property
    def accuracy_served(self) -> float:
        """Samples-weighted accuracy of what was served (nan if some path has no measured quality)."""
        return float(np.sum(self.accuracy * self.sizes) / self.sizes.sum())

    @property
    def correct_per_s(self) -> float:
        """Correct predictions per second, counting only queries that met the target."""
        ok = self.latency_ms <= self.target_ms
        return float(np.sum(self.accuracy[ok] * self.sizes[ok]) / self.duration_s)

    def summary(self) -> dict[str, float]:
        return {"offered_qps": self.offered_qps, "p50_ms": self.percentile(50), "p95_ms": self.percentile(95),
                "p99_ms": self.percentile(99), "violation_rate": self.violation_rate(),
                "samples_per_s": self.samples_per_s, "accuracy_served": self.accuracy_served,
                "correct_per_s": self.correct_per_s}


def simulate(policy, profiles: list[PathProfile], arrival_s: np.ndarray, sizes: np.ndarray,
             target_ms: float) -> SimResult:
    """Serve every query with `policy`; returns per-query latencies and what was served."""
    if len(arrival_s) != len(sizes) or len(sizes) == 0:
        raise ValueError("simulate needs as many arrival times as query sizes, at least one")
    max_size = int(sizes.max())
    services = {p.path: p.service_table(max_size) for p in profiles}
    for p in profiles:
        p.use_table(services[p.path])
    busy = {p.device: 0.0 for p in profiles}
    busy_total = dict.fromkeys(busy, 0.0)
    path_samples = {p.path: 0 for p in profiles}
    n = len(sizes)
    latency = np.empty(n)
    accuracy = np.empty(n)
    arr, sz = arrival_s.tolist(), sizes.tolist()
    choose = policy.choose
    for i in range(n):
        a, q = arr[i], sz[i]
        waits = {d: (b - a) * 1e3 if b > a else 0.0 for d, b in busy.items()}
        finish, correct = a, 0.0
        for profile, part in choose(q, target_ms, waits):
            start = busy[profile.device]
            if start < a:
                start = a
            service = services[profile.path][part]
            end = start + service
            busy[profile.device] = end
            busy_total[profile.device] += service
            path_samples[profile.path] += part
            if end > finish:
                finish = end
            correct += (math.nan if profile.accuracy is None else profile.accuracy) * part
        latency[i] = (finish - a) * 1e3
        accuracy[i] = correct / q
    for p in profiles:
        p.use_table(None)
    duration = max(arr[-1], max(busy.values()))
    return SimResult(getattr(policy, "name", type(policy).__name__), n / arr[-1], target_ms, latency, sizes,
                     accuracy, duration, busy_total, path_samples)


def max_qps(policy, profiles: list[PathProfile], sizes: np.ndarray, target_ms: float, percentile: float,
            seed: int, steps: int = 14) -> tuple[float, SimResult | None]:
    """The highest offered load whose `percentile` latency meets the target (bisection), and its result."""
    base = np.cumsum(np.random.default_rng([seed, 0xA11]).exponential(1.0, len(sizes)))
    mean_size = float(np.mean(sizes))
    capacity = sum(1e3 / min(p.service_ms(mean_size) for p in profiles if p.device == d)
                   for d in {p.device for p in profiles})
    lo, hi, best = 0.0, 2.0 * capacity, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        result = simulate(policy, profiles, base / mid, sizes, target_ms)
        if result.percentile(percentile) <= target_ms:
            lo, best = mid, result
        else:
            hi = mid
    return lo, best
