"""Device concurrency in serving (issue 17): the simulator's dynamic batcher and the live worker's."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from harness.data.pool import Batch
from harness.serving.live import DeviceWorker, LivePath
from harness.serving.policies import Static
from harness.serving.profiles import PathProfile
from harness.serving.simulator import Batching, arrivals, max_qps, simulate

# A launch-bound GPU path: 1 ms whatever the size up to 4096 (as an eager GPU path at small sizes).
GPU = PathProfile("dhe@gpu", "gpu", 0.78, (1, 4096), (1.0, 1.2))
SIZES = np.random.default_rng(0).integers(1, 200, 4000)


def test_at_low_load_nothing_waits_so_batching_changes_nothing():
    t = arrivals(np.random.default_rng(1), len(SIZES), qps=20.0)  # 2 % utilisation: queues are empty
    plain = simulate(Static(GPU), [GPU], t, SIZES, 10.0)
    batched = simulate(Static(GPU), [GPU], t, SIZES, 10.0, Batching(4096))
    assert np.percentile(batched.latency_ms, 50) == pytest.approx(np.percentile(plain.latency_ms, 50),
                                                                  rel=1e-6)
    assert batched.policy.endswith("+batching")


def test_batching_serves_a_launch_bound_device_at_many_times_the_load():
    plain_qps, _ = max_qps(Static(GPU), [GPU], SIZES, 10.0, 99, seed=0)
    batched_qps, result = max_qps(Static(GPU), [GPU], SIZES, 10.0, 99, seed=0, batching=Batching(4096))
    assert plain_qps < 1000  # one query per millisecond at most
    assert batched_qps > 3 * plain_qps and result.percentile(99) <= 10.0
    assert result.utilisation("gpu") <= 1.0 + 1e-9


def test_no_call_exceeds_max_samples_and_other_devices_do_not_batch():
    t = arrivals(np.random.default_rng(2), len(SIZES), qps=3000.0)  # far beyond one query per ms: queues
    small = simulate(Static(GPU), [GPU], t, SIZES, 10.0, Batching(256))
    large = simulate(Static(GPU), [GPU], t, SIZES, 10.0, Batching(4096))
    # A tighter cap coalesces less, so it serves the same queries more slowly.
    assert np.percentile(small.latency_ms, 50) > np.percentile(large.latency_ms, 50)
    elsewhere = simulate(Static(GPU), [GPU], t, SIZES, 10.0, Batching(4096, devices=("cpu",)))
    plain = simulate(Static(GPU), [GPU], t, SIZES, 10.0)
    assert np.allclose(elsewhere.latency_ms, plain.latency_ms)


def test_a_batched_call_takes_the_profiles_time_at_its_summed_size():
    slow = PathProfile("table@cpu", "cpu", 0.78, (1, 100, 1000), (1.0, 10.0, 100.0))  # 0.1 ms a sample
    t = np.array([0.0, 0.0001, 0.0002])  # the second and third arrive while the first runs
    r = simulate(Static(slow), [slow], t, np.array([100, 100, 100]), 1000.0, Batching(1000, cpu=True))
    # First alone (10 ms); the other two in one call of 200 samples (20 ms) right after.
    assert r.latency_ms[0] == pytest.approx(10.0)
    assert r.latency_ms[1] == pytest.approx(30.0 - 0.1) and r.latency_ms[2] == pytest.approx(30.0 - 0.2)
    assert r.busy_s["cpu"] == pytest.approx(0.030)
    # By default a host CPU does not batch: its time grows with the size, so sharing a call only delays.
    plain = simulate(Static(slow), [slow], t, np.array([100, 100, 100]), 1000.0, Batching(1000))
    assert plain.latency_ms[1] == pytest.approx(20.0 - 0.1) and plain.latency_ms[2] == pytest.approx(
        30.0 - 0.2
    )


class SlowAdapter:
    """Its first call lasts until the test opens the gate (so every query queues behind it, however slow
    the machine); it records each call's size."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()

    def serve(self, batch):
        self.sizes.append(batch.dense.shape[0])
        self.gate.wait(timeout=30)


@pytest.mark.parametrize("batching, most", [(None, 1), (Batching(64), 3)])
def test_the_live_worker_coalesces_queued_queries_for_one_path(batching, most):
    done = []
    lock = threading.Lock()

    def complete(sample: int) -> None:
        with lock:
            done.append(sample)

    worker = DeviceWorker("cpu", complete, batching)
    adapter = SlowAdapter()
    path = LivePath(GPU, adapter)
    for i in range(7):  # all queued while the first call runs
        worker.submit(path, Batch(torch.zeros(20, 13), torch.zeros(20, 26, 1)), i, 0.001)
    adapter.gate.set()
    deadline = time.time() + 10
    while len(done) < 7 and time.time() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert sorted(done) == list(range(7)) and worker.served == 7
    assert max(adapter.sizes) == 20 * most and sum(adapter.sizes) == 140  # at most 64 samples a call
    assert worker.calls == len(adapter.sizes) and (worker.calls < 7) == (batching is not None)


def test_a_stop_signal_read_while_batching_ends_the_worker_at_once():
    # The stop signal queued right behind a query the batcher is coalescing: it is held for the next call,
    # never taken for "nothing held" (then the worker would block on an empty queue and stop() wait 30 s)
    worker = DeviceWorker("cpu", lambda sample: None, Batching(64))
    adapter = SlowAdapter()
    path = LivePath(GPU, adapter)
    for i in range(2):  # the first is being served; the second is queued behind it with the stop signal
        worker.submit(path, Batch(torch.zeros(20, 13), torch.zeros(20, 26, 1)), i, 0.001)
    worker.queue.put(None)
    adapter.gate.set()
    worker.thread.join(timeout=10)
    assert not worker.thread.is_alive() and worker.served == 2
