"""Measured peaks of a device: streaming copy and random-row gather bandwidth, GEMM throughput in fp32 and
in the precision a run computes in (only the peaks a run needs, so a first run costs seconds, not minutes).

The analysis places every path on a roofline drawn from these (datasheet figures may be shown beside
them, labelled as such). The adapter supplies the kernels (backends/torch_kernels.py for torch devices);
the harness times them with its own loop and the adapter's synchronize, and caches the result per device
in `<results_dir>/device_peaks.json`, so a device is measured once, not once per run.

A peak is a roof: one measured while other processes took the CPU (or the device) is too low, and every
path would then appear above it. So each kernel is timed under its own `LoadProbe`, with the device's own
load (the adapter's `device_load`: other processes on a GPU) read before and after it, and a kernel whose
reading breaks the interference rule (harness/pipeline/stability.py) serves its own run, flagged, but is
never cached (a burst during one kernel is not averaged away over the others; the quiet ones are kept). A
cache entry says when it was measured, under what load and with which library versions (`python -m
harness.doctor` reads them). The file is read, changed and written under a lock: parallel jobs keep
each other's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from harness.core.load import LoadProbe, LoadReading
from harness.core.precision import gemm_peak_metric
from harness.pipeline.timing import LadderSettings, time_iterations
from harness.tracking.environment import library_versions

CACHE_FILE = "device_peaks.json"
REFUSED_FILE = "device_peaks_refused.json"  # the last peaks measured under load and not cached, per device
# Each kernel's calls are short (a GEMM is sized to <= 50 ms a call: backends/torch_kernels.py), so a
# kernel is timed within ~2 s: 2 warm-up calls or 0.1 s, then 0.5 s (at most 1.5 s) of timed calls.
_SETTINGS = LadderSettings(warmup_iters=2, warmup_s=0.1, min_iters=5, min_time_s=0.5, max_iters=10_000,
                           max_time_s=1.5)
SECONDS_PER_KERNEL = 1.2  # what the announcement says one kernel takes (its buffers and GEMM probe included)
# Bumped when the kernel set or the entries change (2: gather64, 3: reduced-precision GEMMs, 4: measured
# under a load probe, with its reading and the library versions; entries before 4 were never checked;
# 5: GEMMs sized by a probe call, only the precisions a run needs, an entry filled in as runs need more;
# 6: on a CPU the faster of torch.mm and F.linear, the op an MLP runs; 7: and oneDNN's fused linear, which
# the MLPs and DHE's fp32 decoders run on CPUs since issue 24; 8: on a CPU each gather is the faster of
# index_select and embedding_bag: with index_select alone a table path's lookup read 130 % of the roof).
KERNELS_VERSION = 8
_METRIC = {"copy": "copy_gbps", "gather": "gather_gbps", "gather64": "gather64_gbps", "gemm": "gemm_gflops",
           "gemm_bf16": "gemm_bf16_gflops", "gemm_fp16": "gemm_fp16_gflops", "gemm_tf32": "gemm_tf32_gflops"}
BANDWIDTHS = ("copy_gbps", "gather_gbps", "gather64_gbps")


def needed(precision: str) -> tuple[str, ...]:
    """The peaks a run in `precision` needs: the bandwidths, the fp32 GEMM (every roofline's reference)
    and its own precision's GEMM; never the precisions it does not compute in.

    >>> needed("bf16")
    ('copy_gbps', 'gather_gbps', 'gather64_gbps', 'gemm_gflops', 'gemm_bf16_gflops')
    """
    own = gemm_peak_metric(precision)
    return (*BANDWIDTHS, "gemm_gflops", *(() if own == "gemm_gflops" else (own,)))


def _precisions(metrics) -> tuple[str, ...]:
    """The compute precisions whose GEMMs `metrics` name."""
    return tuple("fp32" if m == "gemm_gflops" else m.removeprefix("gemm_").removesuffix("_gflops")
                 for m in metrics if m.startswith("gemm"))


@dataclass
class Peaks:
    """A device's peaks as this run uses them: the values, whether they came from the cache, and, when
    measured now under interference, why they are not trusted (then they were not cached)."""

    values: dict[str, float]
    cached: bool = False
    unreliable: list[str] = field(default_factory=list)
    measured_at: str = ""

    @property
    def reliable(self) -> bool:
        return not self.unreliable


def cache_key(adapter, device) -> str:
    threads = adapter.run_params().get("num_threads", "")
    return f"{device.backend}|{device.name}|{device.framework} {device.framework_version}|threads={threads}"


def _full_key(adapter, device, size_scale: float) -> str:
    return cache_key(adapter, device) + f"|scale={size_scale:g}|kernels={KERNELS_VERSION}"


def _launch(launch, step: int) -> object:
    return launch()  # a kernel ignores which iteration it is


@dataclass(frozen=True)
class KernelReading:
    """What else used the host and the device while one peak kernel was timed."""

    load: LoadReading
    device_others: float | None  # other processes on the device, before or after (None: not measurable)

    def reasons(self, load_reasons) -> list[str]:
        """Why this kernel's figure is no roof: the host rules (`load_reasons`) and the device's users."""
        device = [f"{self.device_others:.0f} other processes used the device"] if self.device_others else []
        return [*load_reasons(self.load), *device]


def measure_peaks(adapter, size_scale: float = 1.0,
                  only=None) -> tuple[dict[str, float], dict[str, KernelReading]]:
    """Time the adapter's peak kernels (or only those whose metrics are in `only`: a name or a
    collection), each under its own load probe and between two looks at the device's other users."""
    # In the order asked (a set's order changes with the interpreter's hash seed: the kernels' would too).
    ordered = None if only is None else ([only] if isinstance(only, str) else list(dict.fromkeys(only)))
    wanted = None if ordered is None else set(ordered)
    precisions = None if ordered is None else _precisions(ordered)
    kernels = adapter.peak_kernels(size_scale, precisions)
    device_load: Callable[[], dict[str, float]] = getattr(adapter, "device_load", dict)
    peaks, readings = {}, {}
    for name, (launch, work, _unit) in kernels.items():
        metric = _METRIC.get(name, f"{name}_per_s")
        if wanted is not None and metric not in wanted:
            continue
        before, probe = device_load(), LoadProbe()
        probe.start()
        timing = time_iterations(functools.partial(_launch, launch), adapter.synchronize, _SETTINGS)
        load, after = probe.stop(), device_load()
        seconds = statistics.median(timing.latencies_s)
        peaks[metric] = work / seconds / 1e9  # GB/s or GFLOP/s
        others = [d["device_other_processes"] for d in (before, after) if "device_other_processes" in d]
        readings[metric] = KernelReading(load, max(others) if others else None)
    return peaks, readings


def kernel_reasons(readings: dict[str, KernelReading], load_reasons) -> dict[str, list[str]]:
    """The kernels whose readings break a rule, each with why (`while timing <kernel>` said)."""
    out = {}
    for metric, reading in readings.items():
        why = reading.reasons(load_reasons)
        if why:
            out[metric] = [f"{w} (while timing {metric.rsplit('_', 1)[0]})" for w in why]
    return out


@contextlib.contextmanager
def _locked_cache(path: Path) -> Iterator[dict]:
    """The cache's entries, read and (when changed by the caller) written back under an exclusive lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            cache = json.loads(path.read_text()) if path.is_file() else {}
            before = json.dumps(cache, sort_keys=True)
            yield cache
            if json.dumps(cache, sort_keys=True) != before:
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(cache, indent=2))
                tmp.replace(path)  # atomic for readers that take no lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_cache(results_dir: str | Path, file: str = CACHE_FILE) -> dict:
    """Every entry of a results folder's peak cache ({} where there is none); `file=REFUSED_FILE`: the
    peaks measured under load and not cached, with when and why."""
    path = Path(results_dir) / file
    if not path.is_file():
        return {}
    with _locked_cache(path) as cache:
        return dict(cache)


def _entry(peaks: dict[str, float], readings: list[KernelReading]) -> dict:
    """A cache entry: the peaks, when, the busiest host reading among their kernels, the libraries."""
    busiest = max((r.load for r in readings), key=lambda load: load.other_cores or 0.0)
    return {"peaks": peaks, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "load": {"other_cores": busiest.other_cores, "steal_cores": busiest.steal_cores,
                     "load_avg": busiest.load_after, "cores": busiest.cores},
            "libraries": library_versions()}


def device_peaks(adapter, device, results_dir: str | Path, size_scale: float, load_reasons,
                 precision: str = "fp32", announce=None) -> Peaks:
    """The peaks a run in `precision` needs (`needed`): cached for this device, or those missing measured
    now (and `announce(metrics, seconds)` told first); {} values if the adapter has no kernels.

    `load_reasons(reading)` says why a reading is interference (the stability rules); a measurement with
    reasons is returned flagged and not cached."""
    path = Path(results_dir) / CACHE_FILE
    key = _full_key(adapter, device, size_scale)
    want = needed(precision)
    with _locked_cache(path) as cache:
        entry = cache.get(key, {})
        have = {m: v for m, v in entry.get("peaks", {}).items() if m in want}
        # what the adapter was asked for before and has no kernel for (a device without bf16)
        absent = set(entry.get("absent", ()))
    missing = [m for m in want if m not in have and m not in absent]
    if not missing:
        return Peaks(have, cached=True, measured_at=entry.get("measured_at", ""))
    if announce is not None:
        announce(missing, len(missing) * SECONDS_PER_KERNEL)
    values, readings = measure_peaks(adapter, size_scale, only=missing)
    disturbed = kernel_reasons(readings, load_reasons)
    peaks = Peaks({**have, **values}, cached=False, unreliable=[w for why in disturbed.values() for w in why],
                  measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if disturbed:  # kept aside, so the doctor can say why there is no cache (or only part of one)
        with _locked_cache(Path(results_dir) / REFUSED_FILE) as refused:
            refused[key] = {"at": peaks.measured_at, "reasons": peaks.unreliable}
    quiet = {m: v for m, v in values.items() if m not in disturbed}
    if quiet:  # the kernels timed quietly are cached; a later run measures the others again
        with _locked_cache(path) as cache:
            fresh = _entry(quiet, [readings[m] for m in quiet])
            earlier = cache.get(key, {})  # another run's peaks of this device: kept, these added
            fresh["peaks"] = {**earlier.get("peaks", {}), **quiet}
            fresh["absent"] = sorted(set(earlier.get("absent", ())) | {m for m in missing if m not in values})
            cache[key] = fresh
    return peaks


def remeasure_peak(adapter, device, results_dir: str | Path, size_scale: float, metric: str,
                   load_reasons) -> tuple[float | None, list[str]]:
    """One peak measured again (a path went above it): the new value and why it is not trusted, if so.
    A trusted value replaces the cached one."""
    values, readings = measure_peaks(adapter, size_scale, only=metric)
    value = values.get(metric)
    reasons = kernel_reasons(readings, load_reasons).get(metric, [])
    if value and not reasons:
        with _locked_cache(Path(results_dir) / CACHE_FILE) as cache:
            entry = cache.get(_full_key(adapter, device, size_scale))
            if entry is not None:
                entry["peaks"][metric] = value
                entry["rechecked_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return value, reasons
