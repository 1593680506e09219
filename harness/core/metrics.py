"""The per-query-size metrics the studies read back from a path's run, declared once.

A run records each at step = query size (harness/pipeline/record.py); `Store.load_runs` loads the
histories of exactly these, and the analysis' tidy table (harness/analysis/runs.py) gets one column per
entry, named by the value. A metric the mapping, the report or serving needs per size is one line here.
Runs recorded before a metric existed simply lack it: its column is NaN there.
"""

from __future__ import annotations

PER_SIZE = {
    "latency_p50_ms": "p50_ms",
    "latency_p90_ms": "p90_ms",
    "latency_p95_ms": "p95_ms",
    "latency_p99_ms": "p99_ms",
    "samples_per_s": "samples_per_s",
    "feasible": "feasible",  # 0: out of memory at this size
    "reliable": "reliable",  # 1 trusted, 0 flagged (docs/measurement.md), absent before issue 22
    "fits_device": "fits_device",  # harness/core/fit.py's verdict; absent where the capacity was unknown
    "memory_needed_bytes": "memory_needed_bytes",  # parameters + this size's activations
    "joules_per_sample": "joules_per_sample",  # only where energy counters are readable (core/energy.py)
}
