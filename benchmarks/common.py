"""Interleaved A/B timing and the JSON report every benchmark writes."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from harness.tracking import environment


def torch_cpu_capabilities():
    """What the CPU adapter declares for this machine: a benchmark's model configured as a CPU run's is."""
    from backends.cpu import CpuBackend
    from harness.core.conf import compose
    from harness.pipeline.config import load_config

    return CpuBackend(load_config(compose(["+backend=cpu"])).backend).capabilities()

RESULTS = Path("results") / "benchmarks"


def block_median(fn: Callable[[int], Any], block_s: float, min_iters: int) -> float:
    """Median latency (s) of `fn(i)` over one block of at least `min_iters` iterations and `block_s`."""
    samples = []
    begin = time.perf_counter()
    i = 0
    while len(samples) < min_iters or time.perf_counter() - begin < block_s:
        t0 = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t0)
        i += 1
    return statistics.median(samples)


def interleaved(candidates: dict[str, Callable[[int], Any]], repetitions: int = 5, block_s: float = 0.5,
                min_iters: int = 5, warmup: int = 3) -> dict[str, dict[str, Any]]:
    """Time each candidate in turn, `repetitions` times (A B A B ...); medians of block medians.

    Candidates must synchronize inside `fn` (CPU torch ops are synchronous).
    """
    for fn in candidates.values():
        for i in range(warmup):
            fn(i)
    blocks: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repetitions):
        for name, fn in candidates.items():
            blocks[name].append(block_median(fn, block_s, min_iters))
    return {name: {"median_s": statistics.median(b), "blocks_s": b} for name, b in blocks.items()}


def timing_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every interleaved-timing benchmark takes: repetitions, block length, --tiny (CI)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--block-s", type=float, default=0.5)
    parser.add_argument("--tiny", action="store_true", help="seconds-long run on small shapes (CI)")
    return parser


def write_report(name: str, figures: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "environment": environment.capture(), "figures": figures}
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
