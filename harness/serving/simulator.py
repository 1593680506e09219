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

from harness.core.paths import PathLabel
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
    joules: float = math.nan  # the energy of every call served; NaN where a path used has no energy measured
    calls: list[tuple] = field(default_factory=list, repr=False)  # (path key, samples) of every call

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

    @property
    def correct_per_joule(self) -> float:
        """Correct predictions (queries in time) per joule the calls took; NaN where energy is unknown."""
        return self.correct_per_s * self.duration_s / self.joules if self.joules > 0 else math.nan

    def summary(self) -> dict[str, float]:
        return {"offered_qps": self.offered_qps, "p50_ms": self.percentile(50), "p95_ms": self.percentile(95),
                "p99_ms": self.percentile(99), "violation_rate": self.violation_rate(),
                "samples_per_s": self.samples_per_s, "accuracy_served": self.accuracy_served,
                "correct_per_s": self.correct_per_s, "correct_per_joule": self.correct_per_joule}


@dataclass(frozen=True)
class Batching:
    """Device concurrency as a dynamic batcher (Triton's, without a queue delay): while a device is busy,
    the parts queued for one path coalesce into one call of their summed size, up to `max_samples`, served
    in the time the path's profile gives at that size; every query in it completes when the call does.
    `devices`: the devices that batch; empty: every device but host CPUs, unless `cpu` (a CPU's time grows
    with the size: a shared call only makes its first queries wait for the last)."""

    max_samples: int
    devices: tuple[str, ...] = ()
    cpu: bool = False

    def applies_to(self, profile: PathProfile) -> bool:
        if self.devices:
            return profile.device in self.devices
        return self.cpu or PathLabel.parse(profile.path).backend != "cpu"


def simulate(policy, profiles: list[PathProfile], arrival_s: np.ndarray, sizes: np.ndarray,
             target_ms: float, batching: Batching | None = None) -> SimResult:
    """Serve every query with `policy`; returns per-query latencies and what was served. With `batching`,
    queued parts for one path on a batching device share calls (`Batching`)."""
    if len(arrival_s) != len(sizes) or len(sizes) == 0:
        raise ValueError("simulate needs as many arrival times as query sizes, at least one")
    largest = max(int(sizes.max()), batching.max_samples if batching is not None else 0)
    # Keyed by (path, device): one label on two devices (a GPU machine's host CPU, this one's) is two servers.
    services = {p.key: p.service_table(largest) for p in profiles}
    energy = {p.key: p.joules_table(largest) for p in profiles}
    for p in profiles:  # the policies read service times from these tables while the simulation runs
        p.use_table(services[p.key])
    try:
        if batching is not None:
            result = _simulate_batched(policy, profiles, services, arrival_s, sizes, target_ms, batching)
        else:
            result = _simulate_fifo(policy, profiles, services, arrival_s, sizes, target_ms)
        result.joules = _joules(result.calls, energy)
        return result
    finally:
        for p in profiles:
            p.use_table(None)


def _simulate_fifo(policy, profiles: list[PathProfile], services: dict, arrival_s: np.ndarray,
                   sizes: np.ndarray, target_ms: float) -> SimResult:
    """One FIFO server per device: each part starts when its device is free."""
    busy = {p.device: 0.0 for p in profiles}
    busy_total = dict.fromkeys(busy, 0.0)
    path_samples = {p.name: 0 for p in profiles}
    n = len(sizes)
    latency = np.empty(n)
    accuracy = np.empty(n)
    calls: list[tuple] = []  # (path key, samples) of every call
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
            service = services[profile.key][part]
            end = start + service
            busy[profile.device] = end
            busy_total[profile.device] += service
            path_samples[profile.name] += part
            calls.append((profile.key, part))
            if end > finish:
                finish = end
            correct += (math.nan if profile.accuracy is None else profile.accuracy) * part
        latency[i] = (finish - a) * 1e3
        accuracy[i] = correct / q
    duration = max(arr[-1], max(busy.values()))
    return SimResult(getattr(policy, "name", type(policy).__name__), n / arr[-1], target_ms, latency, sizes,
                     accuracy, duration, busy_total, path_samples, calls=calls)


def _simulate_batched(policy, profiles: list[PathProfile], services: dict, arrival_s: np.ndarray,
                      sizes: np.ndarray, target_ms: float, batching: Batching) -> SimResult:
    """A dynamic batcher per device: each device runs calls back to back; the call queued behind the
    running one stays open, and a part for the same path joins it while it fits."""
    free_at = {p.device: 0.0 for p in profiles}  # when the device's last call (open or not) ends
    busy_total = dict.fromkeys(free_at, 0.0)
    # [path, start, samples, end] queued, not started
    open_call: dict[str, list | None] = dict.fromkeys(free_at)
    path_samples = {p.name: 0 for p in profiles}
    n = len(sizes)
    calls: list[list] = []  # every call, [path, start, samples, end]; queries point at theirs
    parts_of: list[list[int]] = []
    accuracy = np.empty(n)
    arr, sz = arrival_s.tolist(), sizes.tolist()
    choose = policy.choose
    for i in range(n):
        a, q = arr[i], sz[i]
        waits = {d: (b - a) * 1e3 if b > a else 0.0 for d, b in free_at.items()}
        mine, correct = [], 0.0
        for profile, part in choose(q, target_ms, waits):
            d, table = profile.device, services[profile.key]
            call = open_call[d]
            if call is not None and call[1] <= a:
                call = open_call[d] = None  # it has started: nothing joins a running call
            batches = batching.applies_to(profile)
            if (call is not None and call[0] == profile.key and batches
                    and call[2] + part <= batching.max_samples):
                grown = table[call[2] + part]
                busy_total[d] += grown - (call[3] - call[1])
                call[2] += part
                call[3] = call[1] + grown
                free_at[d] = call[3]  # the open call is the device's last
            else:
                start = max(free_at[d], a)
                call = [profile.key, start, part, start + table[part]]
                calls.append(call)
                busy_total[d] += table[part]
                free_at[d] = call[3]
                # Queued behind a running call: open to later parts (on a device that batches).
                open_call[d] = call if start > a and batches else None
            mine.append(id(call))
            path_samples[profile.name] += part
            correct += (math.nan if profile.accuracy is None else profile.accuracy) * part
        parts_of.append(mine)
        accuracy[i] = correct / q
    ends = {id(c): c[3] for c in calls}
    latency = np.array([(max(ends[c] for c in parts_of[i]) - arr[i]) * 1e3 for i in range(n)])
    duration = max(arr[-1], max(free_at.values()))
    name = getattr(policy, "name", type(policy).__name__)
    return SimResult(f"{name} +batching", n / arr[-1], target_ms, latency, sizes, accuracy, duration,
                     busy_total, path_samples, calls=[(c[0], c[2]) for c in calls])


def _joules(calls: list[tuple], energy: dict) -> float:
    """The energy of `calls` from each path's table (J by call size); NaN if a path used has none."""
    total = 0.0
    for key, samples in calls:
        table = energy[key]
        if table is None:
            return math.nan
        total += table[samples]
    return total


def max_qps(policy, profiles: list[PathProfile], sizes: np.ndarray, target_ms: float, percentile: float,
            seed: int, steps: int = 14, batching: Batching | None = None) -> tuple[float, SimResult | None]:
    """The highest offered load whose `percentile` latency meets the target (bisection), and its result."""
    base = np.cumsum(np.random.default_rng([seed, 0xA11]).exponential(1.0, len(sizes)))
    mean_size = float(np.mean(sizes))
    capacity = sum(1e3 / min(p.service_ms(mean_size) for p in profiles if p.device == d)
                   for d in {p.device for p in profiles})
    if batching is not None:  # batching serves more than one query per call: the bracket must allow it
        capacity *= max(1.0, batching.max_samples / mean_size)
    lo, hi, best = 0.0, 2.0 * capacity, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        result = simulate(policy, profiles, base / mid, sizes, target_ms, batching)
        if result.percentile(percentile) <= target_ms:
            lo, best = mid, result
        else:
            hi = mid
    return lo, best
