"""One path measured into one MLflow run: a readable sequence of stages (docs/architecture.md).

    record the plan -> check the device -> build -> train or reuse quality -> attach caches -> prepare
    -> measure peaks -> time the ladder -> record the results

The run exists before this starts (the job creates it, so it always knows the run's id); the recorder
ends it FINISHED, or FAILED with the error when a stage raises, and the adapter is closed whatever
happens (an IPU is detached, a device released), so one failed path never holds the device for the next.
This module and its stages import torch; planning (harness/pipeline/plan.py) does not, so a dry run never
loads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager

from backends.base import Backend, DeviceInfo
from harness.core import trust
from harness.core.energy import EnergyMeter, RaplZones
from harness.core.load import LoadProbe, LoadReading, PlantedProbe
from harness.core.precision import gemm_peak_metric
from harness.data.pool import Pools
from harness.data.sources import open_dataset
from harness.pipeline import record
from harness.pipeline.cache import IdCounter, attach_caches, cache_comparison, cache_enabled
from harness.pipeline.peaks import CACHE_FILE, Peaks, device_peaks, remeasure_peak
from harness.pipeline.plan import Plan
from harness.pipeline.quality import into_precision, train_or_reuse
from harness.pipeline.stability import Ceiling, Judge, Reasons, measure_reliably
from harness.pipeline.timing import SILENT, LadderSettings, QuerySizeResult, Reporter, run_ladder
from harness.tracking import RunRecorder, Store
from harness.workload.device import ModuleSettings, configure_for, recorded
from harness.workload.dlrm import build_model

log = logging.getLogger(__name__)

# The terminal's progress over the ladder (harness/app/console.py): given the path's label and the number
# of sizes, a context yielding the reporter the measurement tells what it is doing.
Progress = Callable[[str, int], ContextManager[Reporter]]
GLANCE_S = 0.5  # the look at the machine before the ladder and before each re-measurement round


def no_progress(label: str, total: int) -> ContextManager[Reporter]:
    return contextlib.nullcontext(SILENT)


@dataclass
class PathResult:
    run_id: str
    path: str
    device: DeviceInfo
    results: list[QuerySizeResult]
    unreliable: Reasons = field(default_factory=dict)  # sizes that still broke a stability rule, and why


def measure_path(p: Plan, run_id: str, progress: Progress = no_progress) -> PathResult:
    """Build, (train,) prepare and measure the path, recording into run `run_id`."""
    run, adapter = p.run, p.adapter
    with RunRecorder(Store(run.tracking, run.experiment_name), run_id, p.run_tags()) as recorder:
        try:
            record.record_plan(recorder, p)
            device = check_device(p, recorder)
            model, build_s = build(p)
            dataset = open_dataset(run.dataset, p.spec)
            counter = IdCounter(model) if cache_enabled(p.spec) else None
            quality: dict[str, float] = {}
            if run.train.steps > 0:
                quality = train_or_reuse(run, model, dataset, recorder,
                                         observe=counter.observe if counter else None)
                record.record_reader_stats(recorder, dataset)  # training's pass over the file
            quality = into_precision(run, model, dataset, quality, recorder)
            caches = attach_caches(model, p.spec, dataset, counter, recorder)
            pools = Pools(dataset, run.measure.pool_samples)
            prepare(p, model, pools, device, build_s, recorder)
            judge = Judge(run.measure.stability, adapter.host_threads())
            peaks = measure_peaks(p, device, recorder, judge)
            judge.ceiling = ceiling(p, device, peaks, recorder, judge)
            settings = LadderSettings.of(run.measure)
            probe = probes(run.debug.interference)
            look = glances(run.debug.machine_load)
            energy = EnergyMeter(RaplZones(), adapter.energy_joules)
            recorder.set_tags({"energy": energy.describe()})  # what joules_per_sample sums, or why absent

            def judged(sizes, reporter: Reporter = SILENT):
                """The ladder over `sizes`, measured as every ladder of a run is: the load probe, the
                stability rules, re-measurement within its budget."""
                return measure_reliably(
                    lambda todo, attempt: run_ladder(adapter, todo, pools, settings, probe=probe,
                                                     attempt=attempt, reporter=reporter, energy=energy),
                    sizes, judge, machine_now=look, note=reporter.note)

            with progress(p.path, len(run.workload.query_sizes)) as reporter:
                warn_if_busy(judge, reporter, look)
                ladder = judged(run.workload.query_sizes, reporter)
            if ladder.notes:
                recorder.set_tags({"remeasured": " | ".join(ladder.notes)[:5000]})
            extra, uncached = cache_comparison(caches, judged, run.workload.query_sizes, pools, ladder)
            if uncached:  # why the uncached ladder's sizes were flagged
                recorder.set_tags({"uncached_unreliable": trust.describe(uncached)})
            record.record_ladder(recorder, p, ladder, peaks.values, extra, quality.get("accuracy"),
                                 device.kind)
            if run.train.steps == 0:  # nothing trained: the rows read are the timing pools'
                record.record_reader_stats(recorder, dataset)
        finally:
            close_quietly(adapter)
    return PathResult(run_id, p.path, device, ladder.results, ladder.reasons)


def close_quietly(adapter: Backend) -> None:
    """Release the device; a failure to release is logged, never raised over the error that ended the
    run (or over a measurement that succeeded)."""
    try:
        adapter.close()
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("closing the %s adapter failed: %s: %s", adapter.name, type(exc).__name__, exc)


def check_device(p: Plan, recorder: RunRecorder) -> DeviceInfo:
    """The backend is here, the device is described and recorded, and the model can fit on it."""
    p.adapter.require_available()
    p.adapter.check_precision(p.run.precision.name)
    device = p.adapter.device_info()
    record.record_device(recorder, device)
    inject_fault(p.run.debug.fault)
    if p.fits(1) is False:
        raise MemoryError(
            f"{p.path} needs {p.cost.memory_needed(1):,} bytes but {device.name} has {p.capacity_bytes:,} "
            f"(with headroom {p.run.workload.memory_headroom}); lower dataset.scale or pick another path"
        )
    return device


def build(p: Plan):
    """The torch DLRM of the plan's spec, seeded; and how long building took."""
    t0 = time.perf_counter()
    model = build_model(p.spec, seed=p.run.seed)
    return model, time.perf_counter() - t0


def prepare_on(adapter: Backend, model, example, precision: str = "fp32") -> ModuleSettings:
    """The model configured for the adapter's device (harness/workload/device.py) and its precision's
    device-wide switches set (the model's dtypes are already the path's), then handed to it; the settings
    it was configured with."""
    adapter.check_precision(precision)
    settings = configure_for(model, adapter.capabilities())
    adapter.use_precision(precision)
    adapter.prepare(model, example)
    return settings


def prepare(p: Plan, model, pools: Pools, device: DeviceInfo, build_s: float, recorder: RunRecorder) -> None:
    """Hand the model to the adapter (placement, compilation), timed apart from the steady state."""
    t0 = time.perf_counter()
    settings = prepare_on(p.adapter, model, pools(1)[0], p.run.precision.name)
    prepare_s = time.perf_counter() - t0
    recorder.log_params({"backend_resolved": p.adapter.run_params(),
                         "module_settings": recorded(model, settings)})
    recorder.log_metrics({"build_s": build_s, "prepare_s": prepare_s,
                          "device_memory_bytes": device.memory_bytes, **p.adapter.prepare_metrics()})


def measure_peaks(p: Plan, device: DeviceInfo, recorder: RunRecorder, judge: Judge) -> Peaks:
    """The device's copy/gather bandwidth and GEMM peak (cached per device), if `measure.device_peaks`;
    peaks measured under interference serve this run flagged (tag `peaks_unreliable`) and are not cached."""
    if not p.run.measure.device_peaks:
        return Peaks({})
    cache = os.path.join(p.run.tracking.results_dir, CACHE_FILE)

    def announce(metrics: list[str], seconds: float) -> None:
        log.info("measuring this device's peaks (%s): about %.0f s, once; later runs read them from %s",
                 ", ".join(m.rsplit("_", 1)[0] for m in metrics), seconds, cache)

    peaks = device_peaks(p.adapter, device, p.run.tracking.results_dir, p.run.measure.peaks_scale,
                         judge.load_reasons, p.run.precision.name, announce)
    if peaks.values:
        recorder.log_metrics({**{f"device_{k}": v for k, v in peaks.values.items()},
                              "device_peaks_reliable": float(peaks.reliable)})
    if not peaks.reliable:
        recorder.set_tags(
            {
                "peaks_unreliable": "; ".join(peaks.unreliable) + ": those peaks serve this run only, "
                "not cached (the kernels timed quietly are)"
            }
        )
    return peaks


def ceiling(p: Plan, device: DeviceInfo, peaks: Peaks, recorder: RunRecorder, judge: Judge) -> Ceiling | None:
    """The GEMM roof of the path's precision; above it, the peak is measured again once and both recorded
    (`device_<peak>_before_recheck`, `device_<peak>`)."""
    metric = gemm_peak_metric(p.run.precision.name)
    if not peaks.values.get(metric):
        return None

    def recheck() -> float | None:
        before = peaks.values[metric]
        value, reasons = remeasure_peak(p.adapter, device, p.run.tracking.results_dir,
                                        p.run.measure.peaks_scale, metric, judge.load_reasons)
        if value:
            peaks.values[metric] = value
            recorder.log_metrics({f"device_{metric}_before_recheck": before, f"device_{metric}": value})
        if reasons:
            recorder.set_tags(
                {"peaks_unreliable": "; ".join(reasons) + f" while {metric} was measured again"}
            )
        return value

    tolerance = p.run.measure.stability.peak_tolerance
    return Ceiling(p.cost.flops, peaks.values[metric], metric, tolerance, recheck)


def glances(planted: float | None) -> Callable[[], LoadReading]:
    """How busy the machine is right now: a short load reading (`debug.machine_load` plants it)."""

    def glance() -> LoadReading:
        probe = LoadProbe() if planted is None else PlantedProbe(planted)
        probe.start()
        time.sleep(GLANCE_S)
        return probe.stop()

    return glance


def warn_if_busy(judge: Judge, reporter: Reporter, glance: Callable[[], LoadReading]) -> None:
    """Say once, before the ladder, that other processes hold the run's cores, what that will cost and
    what to do about it."""
    busy = judge.load_reasons(glance())
    if busy:
        reporter.note(
            f"the machine is busy ({busy[0]}): sizes timed while it lasts are flagged, and measured again "
            f"only if the machine is quiet by then, for at most +{judge.rules.retry_budget:.0%} of the first "
            f"pass (measure.stability.retry_budget). For trusted figures: {trust.busy_remedy()}"
        )


def probes(planted: dict[int, float] | None) -> Callable[[int], LoadProbe]:
    """The load probe of each query size's measured phase; `debug.interference` plants readings."""
    planted = planted or {}
    return lambda q: PlantedProbe(planted[q]) if q in planted else LoadProbe()


def inject_fault(fault: str) -> None:
    """debug.fault: fail on purpose once the run exists, the ways real jobs fail (reliability tests)."""
    if fault == "raise":
        raise RuntimeError("injected fault (debug.fault=raise)")
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    if fault == "hang":
        while True:
            time.sleep(3600)
