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
LINE = 64  # bytes: what a random table row costs from memory, however narrow (one cache line)
DEFAULT_LLC_BYTES = 64 << 20  # where sysfs does not say: larger than most server CPUs' L3 per socket
MAX_POOL = 1024  # batches at the most: small queries keep their ids within bounds (q = 1: 6.8 MB of rows)


def last_level_cache_bytes() -> int:
    """The largest cache cpu0 sees (sysfs), else DEFAULT_LLC_BYTES."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else DEFAULT_LLC_BYTES


def cold_pool_size(rows_per_batch: int, llc_bytes: int | None = None) -> int:
    """How many distinct batches to cycle so that their table rows cover twice the last-level cache: each
    lookup then reads rows no earlier call left in cache, as a DRAM-gather bound assumes (one batch timed
    again and again keeps its rows in L3: 1.7 MB of rows at q = 1024 on the Kaggle shape, and read a lookup
    at 223 % of the 64-byte-row gather roof here)."""
    llc = llc_bytes or last_level_cache_bytes()
    return max(1, min(MAX_POOL, -(-2 * llc // (rows_per_batch * LINE))))


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
