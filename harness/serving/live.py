"""Live serving under MLPerf LoadGen (Server scenario): the same policies, real models, this machine.

Each measured path whose device is here is rebuilt from its run's resolved config, with its trained
weights where the run has them, and bound to its device's worker (one thread per device: paths on one
device share it, as in the simulator). LoadGen issues queries at the target QPS; each is routed by the
policy, using every device's pending work (the profiled service times of what is queued) as its queue
wait, and completed when its worker has run it; a query a policy splits (mprec_split) is dispatched in
parts, one per device, and completed when its last part is, as the simulator counts it. A path that
raises completes its queries with an empty response (LoadGen must never hang) and the run records the
errors. LoadGen's own results (validity, p99
from mlperf_log_detail.txt, achieved QPS) are compared with the simulator's prediction for the same
setting.
"""

from __future__ import annotations

import json
import queue
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.data.pool import Batch
from harness.serving.profiles import PathProfile


@dataclass
class LivePath:
    profile: PathProfile
    adapter: Any  # a prepared backend adapter (backends/base.py), or anything with `serve` (tests)
    fails: bool = False  # fault injection: every call raises


_NOTHING = object()  # DeviceWorker holds no job


class DeviceWorker:
    """One thread per device runs its queue in order (FIFO), as the simulator's server does; with
    `batching`, the queries waiting for one path when the device frees up are served in one call (their
    batches concatenated, up to `max_samples`), as the simulator's dynamic batcher does."""

    def __init__(self, device: str, complete, batching=None) -> None:
        self.device = device
        # Applied per path: `Batching.applies_to` (host CPUs do not batch by default)
        self.batching = batching
        # A job (or the stop signal, None) taken while batching that belongs to the next call; _NOTHING
        # when none is held, so a held stop signal is never mistaken for "nothing held" and lost
        self._held: Any = _NOTHING
        self.queue: queue.Queue = queue.Queue()
        self.pending_s = 0.0
        self.lock = threading.Lock()
        self.errors = 0
        self.served = 0
        self.calls = 0  # model calls (fewer than queries served where batching coalesced them)
        self._complete = complete
        self.thread = threading.Thread(target=self._loop, name=f"worker-{device}", daemon=True)
        self.thread.start()

    def pending_ms(self) -> float:
        with self.lock:
            return self.pending_s * 1e3

    def submit(self, path: LivePath, batch: Batch, sample_id: int, estimate_s: float) -> None:
        with self.lock:
            self.pending_s += estimate_s
        self.queue.put((path, batch, sample_id, estimate_s))

    def _next_call(self) -> list | None:
        """The jobs of the next call: one, or with batching every queued job for the same path that fits."""
        job = self._held if self._held is not _NOTHING else self.queue.get()
        self._held = _NOTHING
        if job is None:
            return None
        jobs = [job]
        if self.batching is None or not self.batching.applies_to(job[0].profile):
            return jobs
        samples = job[1].dense.shape[0]
        while True:
            try:
                more = self.queue.get_nowait()
            except queue.Empty:
                return jobs
            if (
                more is None
                or more[0] is not job[0]
                or samples + more[1].dense.shape[0] > self.batching.max_samples
            ):
                self._held = more  # the next call's (or the stop signal)
                return jobs
            jobs.append(more)
            samples += more[1].dense.shape[0]

    def _loop(self) -> None:
        while True:
            jobs = self._next_call()
            if jobs is None:
                return
            path = jobs[0][0]
            batch = (
                jobs[0][1]
                if len(jobs) == 1
                else Batch(*(torch.cat(parts) for parts in zip(*(j[1] for j in jobs))))
            )
            try:
                if path.fails:
                    raise RuntimeError(f"injected fault in {path.profile.path}")
                path.adapter.serve(batch)  # host to host, as the ladder times it (backends/base.py)
                self.served += len(jobs)
                self.calls += 1
            except Exception:  # noqa: BLE001 - any failure completes the query with an empty response
                self.errors += len(jobs)
            finally:
                for _, _, sample_id, estimate_s in jobs:
                    with self.lock:
                        self.pending_s -= estimate_s
                    self._complete(sample_id)

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)


def parse_detail_log(path: str | Path) -> dict:
    """LoadGen's results from mlperf_log_detail.txt (:::MLLOG JSON lines)."""
    wanted = {"result_validity": "validity", "result_99.00_percentile_latency_ns": "p99_ns",
              "result_50.00_percentile_latency_ns": "p50_ns",
              "result_completed_samples_per_sec": "achieved_qps",
              "result_scheduled_samples_per_sec": "scheduled_qps", "num_errors": "loadgen_errors"}
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith(":::MLLOG"):
            record = json.loads(line[len(":::MLLOG"):])
            if record.get("key") in wanted:
                out[wanted[record["key"]]] = record["value"]
    return out


@dataclass
class LiveResult:
    policy: str
    target_qps: float
    loadgen: dict
    errors: int
    served: int
    per_path: dict = field(default_factory=dict)
    log_dir: str = ""
    calls: int = 0  # model calls: fewer than `served` where device batching coalesced queries

    @property
    def p99_ms(self) -> float:
        return self.loadgen.get("p99_ns", float("nan")) / 1e6


def serve(paths: list[LivePath], policy, batches: list[Batch], sizes: np.ndarray, qps: float,
          target_ms: float, duration_s: float, log_dir: str | None = None, batching=None) -> LiveResult:
    """Run LoadGen's Server scenario against the paths, routed by `policy` (with device batching if given)."""
    import mlperf_loadgen as lg

    by_key = {p.profile.key: p for p in paths}
    routed = {p.profile.name: 0 for p in paths}
    parts_left: dict[int, int] = {}  # a split query completes when its last part does
    lock = threading.Lock()

    def complete(sample_id: int) -> None:
        with lock:
            parts_left[sample_id] -= 1
            done = parts_left[sample_id] == 0
            if done:
                del parts_left[sample_id]
        if done:
            lg.QuerySamplesComplete([lg.QuerySampleResponse(sample_id, 0, 0)])

    workers = {d: DeviceWorker(d, complete, batching) for d in {p.profile.device for p in paths}}

    def issue_queries(samples) -> None:
        for s in samples:
            size = int(sizes[s.index])
            waits = {d: w.pending_ms() for d, w in workers.items()}
            choice = policy.choose(size, target_ms, waits)  # one part, or one per device (mprec_split)
            with lock:
                parts_left[s.id] = len(choice)
            for (profile, part), rows in zip(choice, split_rows(batches[s.index], [n for _, n in choice])):
                routed[profile.name] += 1
                workers[profile.device].submit(by_key[profile.key], rows, s.id,
                                               profile.service_ms(part) / 1e3)

    sut = lg.ConstructSUT(issue_queries, lambda: None)
    qsl = lg.ConstructQSL(len(batches), len(batches), lambda s: None, lambda s: None)
    out_dir = log_dir or tempfile.mkdtemp(prefix="loadgen-")
    settings, log_settings = _loadgen_settings(lg, qps, target_ms, duration_s, out_dir)
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
        for w in workers.values():
            w.stop()
    return LiveResult(getattr(policy, "name", "policy"), qps,
                      parse_detail_log(Path(out_dir) / "mlperf_log_detail.txt"),
                      sum(w.errors for w in workers.values()), sum(w.served for w in workers.values()),
                      routed, out_dir, sum(w.calls for w in workers.values()))


def _loadgen_settings(lg, qps: float, target_ms: float, duration_s: float, out_dir: str):
    """LoadGen's Server scenario at `qps` and the latency target, logging into `out_dir`."""
    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Server
    settings.mode = lg.TestMode.PerformanceOnly
    settings.server_target_qps = qps
    settings.server_target_latency_ns = int(target_ms * 1e6)
    settings.min_duration_ms = int(duration_s * 1e3)
    settings.max_duration_ms = int(duration_s * 1e3 * 3)
    settings.min_query_count = max(1, int(qps * duration_s))
    Path(out_dir).mkdir(parents=True, exist_ok=True)  # LoadGen writes its logs there, it does not create it
    output = lg.LogOutputSettings()
    output.outdir = out_dir
    output.copy_summary_to_stdout = False
    log_settings = lg.LogSettings()
    log_settings.log_output = output
    return settings, log_settings


def split_rows(batch: Batch, parts: list[int]) -> list[Batch]:
    """A query's rows in consecutive parts of the given sizes (one part: the batch itself)."""
    if len(parts) == 1:
        return [batch]
    bounds = np.cumsum([0, *parts])
    return [Batch(batch.dense[a:b], batch.ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def query_batches(generator, sizes: np.ndarray) -> list[Batch]:
    """One pre-built query per LoadGen sample (generated before the test, never inside it)."""
    return [Batch(*(torch.from_numpy(a) for a in generator.batch(i, int(q), split="timing")))
            for i, q in enumerate(sizes)]
