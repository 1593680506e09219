"""Serving simulator throughput: queries simulated per second, per policy (target: 1M queries < 10 s).

    python -m benchmarks.serving            # 1,000,000 queries per policy
    python -m benchmarks.serving --tiny     # 20,000 (CI)

Profiles: four made-up paths on two devices (shapes like this project's CPU measurements and a 20-40x
faster device); sizes lognormal (median 165); offered load 60% of the two devices' capacity.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import write_report
from harness.serving import policies as pol
from harness.serving.profiles import PathProfile
from harness.serving.simulator import arrivals, simulate
from harness.serving.sizes import lognormal

SIZES = (1, 8, 64, 256, 1024, 4096)


def profiles() -> list[PathProfile]:
    table = PathProfile("table@cpu", "cpu", 0.757, SIZES, (0.5, 0.8, 1.8, 5.0, 18.0, 73.0))
    dhe = PathProfile("dhe@cpu", "cpu", 0.775, SIZES, (2.7, 4.8, 17.0, 60.0, 250.0, 1000.0))
    return [table, dhe, table.scaled("gpu", 20, 0.2, "made up"), dhe.scaled("gpu", 40, 0.3, "made up")]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    n = 20_000 if args.tiny else args.queries
    paths = profiles()
    rng = np.random.default_rng(0)
    sizes = lognormal(rng, n, 165, 0.8, 4096)
    qps = 0.6 * 1e3 / paths[2].service_ms(165) + 0.6 * 1e3 / paths[0].service_ms(165)
    times = arrivals(rng, n, qps)
    figures = {}
    for policy in (pol.Static(paths[0]), pol.SizeThreshold(paths[0], paths[3], 128), pol.MPRec(paths),
                   pol.MPRecSplit(paths, min_size=64)):
        t0 = time.perf_counter()
        result = simulate(policy, paths, times, sizes, target_ms=10.0)
        seconds = time.perf_counter() - t0
        figures[policy.name] = {"queries": n, "seconds": seconds, "queries_per_s": n / seconds,
                                "p99_ms": result.percentile(99)}
        print(f"{policy.name:40s} {n:,} queries in {seconds:6.2f} s = {n / seconds:>11,.0f} queries/s")
    print(f"written: {write_report('serving', figures)}")
    return figures


if __name__ == "__main__":
    main()
