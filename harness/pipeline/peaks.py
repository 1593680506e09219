"""Measured peaks of a device: streaming copy and random-row gather bandwidth, GEMM throughput in fp32 and
in the reduced precisions the adapter runs (bf16 everywhere; fp16 and TF32 where native).

The analysis places every path on a roofline drawn from these (datasheet figures may be shown beside
them, labelled as such). The adapter supplies the kernels (backends/torch_kernels.py for torch devices);
the harness times them with its own loop and the adapter's synchronize, and caches the result per device
in `<results_dir>/device_peaks.json`, so a device is measured once, not once per run.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from harness.pipeline.timing import LadderSettings, time_iterations

CACHE_FILE = "device_peaks.json"
_SETTINGS = LadderSettings(warmup_iters=2, warmup_s=0.1, min_iters=5, min_time_s=0.5, max_iters=10_000,
                           max_time_s=3.0)
_KERNELS_VERSION = 3  # bumped when the kernel set changes (2: gather64, 3: reduced-precision GEMMs)
_METRIC = {"copy": "copy_gbps", "gather": "gather_gbps", "gather64": "gather64_gbps", "gemm": "gemm_gflops",
           "gemm_bf16": "gemm_bf16_gflops", "gemm_fp16": "gemm_fp16_gflops", "gemm_tf32": "gemm_tf32_gflops"}


def cache_key(adapter, device) -> str:
    threads = adapter.run_params().get("num_threads", "")
    return f"{device.backend}|{device.name}|{device.framework} {device.framework_version}|threads={threads}"


def measure_peaks(adapter, size_scale: float = 1.0) -> dict[str, float]:
    peaks = {}
    for name, (launch, work, unit) in adapter.peak_kernels(size_scale).items():
        timing = time_iterations(lambda i: launch(), adapter.synchronize, _SETTINGS)
        seconds = statistics.median(timing.latencies_s)
        peaks[_METRIC.get(name, f"{name}_per_s")] = work / seconds / 1e9  # GB/s or GFLOP/s
    return peaks


def device_peaks(adapter, device, results_dir: str | Path, size_scale: float = 1.0) -> dict[str, float]:
    """Cached peaks for this device (measured now if the cache has none); {} if the adapter has no kernels."""
    path = Path(results_dir) / CACHE_FILE
    key = cache_key(adapter, device) + f"|scale={size_scale:g}|kernels={_KERNELS_VERSION}"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if key in cache:
        return {k: v for k, v in cache[key].items() if isinstance(v, float)}
    peaks = measure_peaks(adapter, size_scale)
    if peaks:
        cache[key] = {**peaks, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=2))
        tmp.replace(path)  # atomic: a concurrent job reads the old file or the new one, never half of it
    return peaks
