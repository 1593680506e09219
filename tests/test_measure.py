"""The timing loop and its statistics, on known samples, a fake clock and fake adapters."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from harness.pipeline.timing import LadderSettings, percentile, run_ladder, summarize, time_iterations


def test_statistics_of_one_to_hundred_ms():
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    stats = summarize(samples, query_size=10)
    assert stats.n == 100
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(100.0)
    assert stats.std_ms == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert stats.cv == pytest.approx(stats.std_ms / stats.mean_ms)
    assert stats.samples_per_s == pytest.approx(10 / 0.0505)


@pytest.mark.parametrize("q", [0, 1, 37.5, 50, 95, 99, 100])
def test_percentile_matches_numpy_linear(q):
    values = sorted(np.random.default_rng(3).exponential(size=57).tolist())
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_summarize_refuses_no_samples():
    with pytest.raises(ValueError):
        summarize([], 1)


class FakeClock:
    """Time advances only when work runs: every step costs `step_s`."""

    def __init__(self, step_s: float) -> None:
        self.now = 0.0
        self.step_s = step_s

    def __call__(self) -> float:
        return self.now

    def step(self, i: int) -> int:
        self.now += self.step_s * (10 if i == 0 else 1)  # a slow first call, like a compile
        return i


def test_first_call_is_timed_apart_and_both_minimums_are_met():
    clock = FakeClock(step_s=0.001)
    settings = LadderSettings(warmup_iters=3, warmup_s=0.0, min_iters=5, min_time_s=0.02,
                              max_iters=1000, max_time_s=10)
    timing = time_iterations(clock.step, lambda out: None, settings, clock)
    assert timing.first_call_s == pytest.approx(0.010)
    assert timing.warmup_iters == 3
    assert len(timing.latencies_s) == 20  # min_time 20 ms at 1 ms each dominates min_iters 5
    assert all(s == pytest.approx(0.001) for s in timing.latencies_s)


def test_warmup_runs_by_time_too():
    clock = FakeClock(step_s=0.001)
    settings = LadderSettings(warmup_iters=1, warmup_s=0.01, min_iters=1, min_time_s=0, max_iters=1,
                              max_time_s=1)
    assert time_iterations(clock.step, lambda out: None, settings, clock).warmup_iters == 10


def test_caps_stop_the_measured_phase():
    clock = FakeClock(step_s=0.5)
    settings = LadderSettings(warmup_iters=0, warmup_s=0, min_iters=100, min_time_s=0, max_iters=1000,
                              max_time_s=2.0)
    assert len(time_iterations(clock.step, lambda out: None, settings, clock).latencies_s) == 4


class AsyncAdapter:
    """`run` returns at once and the work finishes later, as a GPU kernel launch does."""

    work_s = 0.02

    def __init__(self, synchronizes: bool = True) -> None:
        self.synchronizes = synchronizes

    def place(self, batch):
        return batch

    def run(self, batch):
        done = threading.Event()
        threading.Timer(self.work_s, done.set).start()
        return done

    def synchronize(self, done: threading.Event) -> None:
        if self.synchronizes:
            done.wait()

    def is_out_of_memory(self, exc):
        return isinstance(exc, MemoryError)

    def begin_size(self, query_size):
        self.sizes_begun = getattr(self, "sizes_begun", []) + [query_size]

    def end_size(self):
        return {"fake_metric": 1.0}

    def device_time_s(self):
        return None

    queries_per_call = 1

    def mark_steady(self):
        pass

    def release_memory(self):
        self.released = True


FAST = LadderSettings(warmup_iters=1, warmup_s=0, min_iters=5, min_time_s=0, max_iters=5, max_time_s=5)


def test_asynchronous_work_is_caught_by_synchronization():
    # A lower bound only: a timer never fires early, however loaded the machine is.
    results = run_ladder(AsyncAdapter(), [1], lambda q: [None], FAST)
    assert min(results[0].latencies_s) >= AsyncAdapter.work_s * 0.95


class HeldAdapter(AsyncAdapter):
    """Its work finishes only when the test releases it: no clock decides what the test sees."""

    def __init__(self, synchronizes: bool) -> None:
        super().__init__(synchronizes)
        self.release = threading.Event()
        self.finished = 0

    def run(self, batch):
        done = threading.Event()

        def work():
            self.release.wait()
            self.finished += 1
            done.set()

        threading.Thread(target=work, daemon=True).start()
        return done


def test_without_synchronization_the_same_work_would_time_as_nothing():
    # The counterfactual that shows the test above can fail: an adapter that does not wait lets the loop
    # read its clock, and finish the whole ladder, while no call's work has been done.
    adapter = HeldAdapter(synchronizes=False)
    results = run_ladder(adapter, [1], lambda q: [None], FAST)
    assert results[0].stats.n == 5 and adapter.finished == 0
    adapter.release.set()
    # The synchronizing adapter cannot get past its first call until the work is released.
    waiting = HeldAdapter(synchronizes=True)
    ladder = threading.Thread(target=run_ladder, args=(waiting, [1], lambda q: [None], FAST), daemon=True)
    ladder.start()
    ladder.join(timeout=0.5)
    assert ladder.is_alive() and waiting.finished == 0
    waiting.release.set()
    ladder.join(timeout=60)
    assert not ladder.is_alive() and waiting.finished >= 7  # first call, warm-up, 5 timed


class SizeLimitedAdapter(AsyncAdapter):
    work_s = 0.0

    def run(self, batch):
        if batch > 100:
            raise MemoryError(f"cannot allocate {batch}")
        return super().run(batch)


def test_out_of_memory_size_is_infeasible_and_the_ladder_goes_on():
    adapter = SizeLimitedAdapter()
    results = run_ladder(adapter, [10, 1000, 50], lambda q: [q], FAST)
    assert [r.feasible for r in results] == [True, False, True]
    assert "out of memory" in results[1].error
    assert adapter.released
    assert results[2].stats.n == 5


def test_the_ladder_brackets_each_size_and_keeps_the_adapters_metrics():
    adapter = AsyncAdapter()
    adapter.work_s = 0.0
    results = run_ladder(adapter, [2, 4], lambda q: [q], FAST)
    assert adapter.sizes_begun == [2, 4]
    assert all(r.extra == {"fake_metric": 1.0} for r in results)


def test_device_timer_samples_are_kept_beside_the_wall_clock():
    clock = FakeClock(step_s=0.002)
    settings = LadderSettings(warmup_iters=0, warmup_s=0, min_iters=3, min_time_s=0, max_iters=3,
                              max_time_s=1)
    timing = time_iterations(clock.step, lambda out: None, settings, clock, device_time=lambda: 0.0015)
    assert timing.device_latencies_s == [0.0015] * 3
    assert timing.latencies_s == pytest.approx([0.002] * 3)


def test_several_queries_per_call_report_per_query_latency():
    clock = FakeClock(step_s=0.02)

    class Batched(AsyncAdapter):
        queries_per_call = 4  # e.g. IPU device iterations

        def run(self, i):
            return clock.step(1)  # each call takes 20 ms of the fake clock

    results = run_ladder(Batched(synchronizes=False), [1], lambda q: [None], FAST, clock=clock)
    assert results[0].latencies_s == pytest.approx([0.005] * 5)  # 20 ms a call, 4 queries a call


def test_other_errors_propagate():
    class Broken(AsyncAdapter):
        def run(self, batch):
            raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_ladder(Broken(), [1], lambda q: [q], FAST)


class FakeDeviceAdapter(AsyncAdapter):
    """A device with memory of its own: the input copy, the model and the output copy each take time; its
    own timer (as CUDA events) sees the model only."""

    copy_s, work_s = 0.004, 0.006

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def to_device(self, staged):
        self.calls.append("to_device")
        time.sleep(self.copy_s)
        return staged

    def fetch(self, out):
        self.calls.append("fetch")
        finished = threading.Event()
        threading.Thread(target=lambda: (out.wait(), time.sleep(self.copy_s), finished.set())).start()
        return finished  # the copy back finishes after the model: synchronize must wait for both

    def run(self, batch):
        self.calls.append("run")
        return super().run(batch)

    def device_time_s(self):
        return self.work_s


def test_a_device_path_is_timed_host_to_host_and_its_device_time_is_kept_apart():
    adapter = FakeDeviceAdapter()
    [result] = run_ladder(adapter, [1], lambda q: [None], FAST)
    # Every timed call copies in, runs, copies out, in that order...
    assert adapter.calls[:3] == ["to_device", "run", "fetch"] and len(adapter.calls) % 3 == 0
    # ...and the wall clock covers all three, the device's timer the model alone.
    assert min(result.latencies_s) >= (2 * adapter.copy_s + adapter.work_s) * 0.95
    assert result.device_stats.p50_ms == pytest.approx(adapter.work_s * 1e3)


def test_an_adapter_without_copies_times_run_alone():
    # The CPU's case: `to_device` and `fetch` are the contract's defaults, so the loop calls `run` only.
    from backends.base import Backend
    from harness.pipeline.timing import host_to_host

    class HostOnly(Backend):
        name = "host"
        available = classmethod(lambda cls: (True, ""))
        device_info = prepare = place = synchronize = lambda self, *a: None

        def run(self, batch):
            return batch

    step = host_to_host(HostOnly(None), [7, 8])
    assert "fetch" not in step.__code__.co_freevars and "to_device" not in step.__code__.co_freevars
    assert [step(0), step(1), step(2)] == [7, 8, 7]
    assert "fetch" in host_to_host(FakeDeviceAdapter(), [None]).__code__.co_freevars


def test_the_timed_loop_tells_how_far_it_is_between_calls_on_a_fake_clock():
    clock = FakeClock(step_s=0.1)
    settings = LadderSettings(warmup_iters=1, warmup_s=0.0, min_iters=5, min_time_s=2.0, max_iters=1000,
                              max_time_s=10)
    ticks = []
    timing = time_iterations(clock.step, lambda out: None, settings, clock,
                             on_tick=lambda n, s: ticks.append(n))
    assert len(timing.latencies_s) == 20  # 2 s of 0.1 s calls, then it stops
    assert ticks == [5, 10, 15]  # every 0.5 s of the measured phase (not after the last call)


def test_the_live_line_shows_the_size_its_calls_and_each_result_on_a_terminal(tmp_path):
    import io

    from rich.console import Console
    from rich.progress import Progress, TextColumn

    from harness.app.console import LiveReporter

    out = io.StringIO()
    progress = Progress(TextColumn("{task.description} {task.fields[now]}"),
                        console=Console(file=out, force_terminal=True, width=200), refresh_per_second=50)
    slow = LadderSettings(warmup_iters=1, warmup_s=0, min_iters=5, min_time_s=1.2, max_iters=10_000,
                          max_time_s=5)
    with progress:
        reporter = LiveReporter("fake@cpu", progress, progress.add_task("fake@cpu", total=1, now=""))
        run_ladder(AsyncAdapter(), [8], lambda q: [None], slow, reporter=reporter)
        time.sleep(0.1)  # one more refresh
        reporter.note("measuring again (attempt 2 of 4): q=8: other processes used 0.90 cores")
    text = out.getvalue()
    assert "timing q=8: " in text and " calls, 0.5 of 1.2 s" in text  # the live line, while timing
    assert "fake@cpu q=8: p50 " in text  # each size's result, kept above the line
    assert "fake@cpu: measuring again (attempt 2 of 4)" in text


def test_the_live_line_keeps_the_sweep_position_in_its_label():
    import io

    from rich.console import Console

    from harness.app.console import LiveReporter, live_progress

    out = io.StringIO()
    progress = live_progress(Console(file=out, force_terminal=True, width=200))
    progress.transient = False  # keep the last frame to read
    label = "[job 3 of 6, 2 done] fake@cpu"
    with progress:
        reporter = LiveReporter(label, progress, progress.add_task(label, total=1, now=""))
        reporter.size(8, attempt=1)
    assert "[job 3 of 6, 2 done] fake@cpu" in out.getvalue()  # not swallowed as a markup tag


def test_the_sweep_tables_name_a_variant_by_its_whole_label(capsys):
    import io

    import pandas as pd
    from rich.console import Console

    from harness.app.console import print_paths_side_by_side, print_sweep_summary, summary_table

    labels = ["dhe[m=1000]@cpu", "dhe[m=3000]@cpu"]
    statuses = [{"status": "finished", "path": label, "overrides": [f"representation.m={label[6:10]}"],
                 "run_id": f"r{i}"} for i, label in enumerate(labels)]
    lost = {"status": "failed", "path": None, "error": "lost: [node gone]", "run_id": None}  # planning failed
    print_sweep_summary([*statuses, lost], {"finished": 2, "skipped": 0, "failed": 1})
    paths = pd.DataFrame({"workload": "synthetic_kaggle x0.001", "path": labels, "accuracy": [0.7, 0.71],
                          "param_bytes": [1e6, 2e6], "p50_ms@1": [0.5, 0.6], "p99_ms@1": [0.7, 0.8]})
    print_paths_side_by_side(paths)
    err = capsys.readouterr().err
    assert err.count("dhe[m=1000]@cpu") == 2 and err.count("dhe[m=3000]@cpu") == 2  # both tables
    assert "lost: [node gone]" in err
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(summary_table("dhe[m=1000]@cpu: latency per query", []))
    assert "dhe[m=1000]@cpu: latency per query" in console.export_text()
