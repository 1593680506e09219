"""The serving simulator against queueing theory: M/D/1 and M/M/1 in closed form, the batching server
against a closed form (a burst) and an event-driven reference written apart from it.

Every case is seeded, so each figure is the same on every run; the tolerance (2 %) is on the simulator's
agreement with theory, not on a clock.
"""

from __future__ import annotations

import heapq
import math
from decimal import Decimal, getcontext

import numpy as np
import pytest

from harness.serving import policies as pol
from harness.serving.profiles import PathProfile
from harness.serving.simulator import Batching, arrivals, simulate

D_MS = 1.0  # M/D/1's fixed service time
FIXED = PathProfile("x@gpu", "gpu", 0.8, (1, 2), (D_MS, D_MS))


def md1_wait_cdf(t_ms: float, rho: float, d_ms: float = D_MS) -> float:
    """P(W <= t) of M/D/1's waiting time (Erlang, 1909):
    (1-rho) sum_{k<=t/D} (lam(kD-t))^k / k! e^{-lam(kD-t)}.
    Its terms alternate in sign and grow past 1e16, so it is summed in 60-digit decimals."""
    getcontext().prec = 60
    lam, t, d = Decimal(rho) / Decimal(d_ms), Decimal(t_ms), Decimal(d_ms)
    total = Decimal(0)
    for k in range(int(t_ms // d_ms) + 1):
        x = lam * (k * d - t)
        total += (x ** k if k else Decimal(1)) / math.factorial(k) * (-x).exp()
    return float((1 - Decimal(rho)) * total)


def md1_sojourn_quantile(q: float, rho: float) -> float:
    """The q-quantile of M/D/1's latency (waiting + D), by bisection on the waiting time's CDF."""
    lo, hi = 0.0, 200.0 * D_MS
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if md1_wait_cdf(mid, rho) < q else (lo, mid)
    return hi + D_MS


def pooled(profile: PathProfile, rho: float, replications: int, sizes=None, n: int = 1_000_000) -> np.ndarray:
    """Latencies of independent replications (each from an empty queue), pooled: at rho = 0.9 one long
    run's p99 wanders by +-4 % (its queue is correlated over ~400 ms), 8 replications' by +-2 %. The
    arrival rate is rho over the service time's expected mean, 1 ms in both models here."""
    out = []
    for rep in range(replications):
        draw = sizes(np.random.default_rng([rep, 1]), n) if sizes else np.ones(n, int)
        start = arrivals(np.random.default_rng([rep, 2]), n, rho / 1e-3)
        out.append(simulate(pol.Static(profile), [profile], start, draw, 1e9).latency_ms)
    return np.concatenate(out)


REPLICATIONS = {0.3: 2, 0.6: 4, 0.9: 8}


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_fixed_service_matches_md1_mean_and_p99(rho):
    latency = pooled(FIXED, rho, REPLICATIONS[rho])
    mean_ms = D_MS + rho * D_MS / (2 * (1 - rho))  # Pollaczek-Khinchine: rho / (2 mu (1 - rho)) waiting
    assert latency.mean() == pytest.approx(mean_ms, rel=0.02)
    assert np.percentile(latency, 99) == pytest.approx(md1_sojourn_quantile(0.99, rho), rel=0.02)


def test_the_md1_reference_is_right_where_it_is_easy():
    # P(W = 0) = 1 - rho; P(W <= D) = (1 - rho) e^{lam D}.
    assert md1_wait_cdf(0.0, 0.6) == pytest.approx(0.4)
    assert md1_wait_cdf(D_MS, 0.6) == pytest.approx(0.4 * math.exp(0.6))


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_exponential_service_matches_mm1_sojourn_time(rho):
    # Service linear in size (1 us a sample) and sizes geometric with mean 1000: service ~ Exp(1 ms).
    # M/M/1's sojourn time is exponential: P(T > t) = exp(-mu (1 - rho) t).
    linear = PathProfile("y@gpu", "gpu", 0.8, (1, 100_000), (0.001, 100.0))
    latency = pooled(linear, rho, REPLICATIONS[rho], sizes=lambda rng, n: rng.geometric(1 / 1000, n))
    scale_ms = 1.0 / (1.0 - rho)  # 1 / (mu (1 - rho)) with mu = 1 per ms
    assert np.percentile(latency, 50) == pytest.approx(math.log(2) * scale_ms, rel=0.02)
    assert np.percentile(latency, 99) == pytest.approx(math.log(100) * scale_ms, rel=0.02)


# --- the batching server ---------------------------------------------------------------------------------

GPU = PathProfile("z@gpu", "gpu", 0.8, (1, 4096), (0.5, 4.595))  # 0.5 ms + 1 us a sample


def test_a_burst_is_served_in_full_batches_after_the_first_call():
    # N queries of one sample at t=0: the first starts alone; the rest queue behind it and coalesce into
    # calls of B samples, each ending one call's time after the last.
    n, b = 1001, 100
    burst = np.arange(n) * 1e-12  # one after the other, all within a nanosecond of t=0
    r = simulate(pol.Static(GPU), [GPU], burst, np.ones(n, int), 1e9, Batching(b))
    first = GPU.service_ms(1)
    call = GPU.service_ms(b)
    ends = [first] + [first + call * (1 + i // b) for i in range(n - 1)]
    assert r.latency_ms == pytest.approx(np.array(ends) - burst * 1e3, abs=1e-9)


def event_driven_batcher(
    arrival_s: np.ndarray, sizes: np.ndarray, profile: PathProfile, most: int
) -> np.ndarray:
    """A reference written apart from the simulator: a heap of events; whenever the device frees, it takes
    the queued parts in arrival order while they fit in `most` samples, as one call."""
    events = [(t, 1, i) for i, t in enumerate(arrival_s)]  # (time, kind: 0 completion / 1 arrival, query)
    heapq.heapify(events)
    queue: list[int] = []
    busy, latency = False, np.empty(len(sizes))
    while events:
        t, kind, item = heapq.heappop(events)
        if kind == 1:
            queue.append(item)
        else:
            for i in item:
                latency[i] = (t - arrival_s[i]) * 1e3
            busy = False
        if not busy and queue:
            batch = [queue.pop(0)]
            samples = int(sizes[batch[0]])
            while queue and samples + sizes[queue[0]] <= most:
                samples += int(sizes[queue[0]])
                batch.append(queue.pop(0))
            heapq.heappush(events, (t + profile.service_ms(samples) / 1e3, 0, tuple(batch)))
            busy = True
    return latency


@pytest.mark.parametrize("qps", [200.0, 1500.0, 4000.0])
def test_the_batching_server_matches_an_event_driven_reference(qps):
    n = 20_000
    sizes = np.random.default_rng(5).integers(1, 300, n)
    arrival = arrivals(np.random.default_rng(6), n, qps)
    r = simulate(pol.Static(GPU), [GPU], arrival, sizes, 1e9, Batching(1024))
    assert r.latency_ms == pytest.approx(event_driven_batcher(arrival, sizes, GPU, 1024), rel=1e-9, abs=1e-9)
