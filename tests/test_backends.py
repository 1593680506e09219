"""Adapters as far as this machine allows: the CLI table, unavailable backends, IPU logic with a fake
poptorch, CUDA's refusal without a GPU, and a mixed-backend sweep."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import mlflow
import pytest
import torch

import backends
from backends.cuda import CudaBackend
from backends.ipu import IpuBackend, build_options, int32_ids
from harness.data.pool import Batch
from harness.pipeline.run import close_quietly, prepare_on
from harness.workload.device import DeviceCapabilities, configure_for
from harness.workload.representations.dhe.module import DeepHashEmbedding

from .conftest import harness_env
from .test_backend_parity import HAS_TF, case


def test_backends_command_lists_every_backend_and_why():
    proc = subprocess.run([sys.executable, "-m", "backends"], capture_output=True, text=True,
                          env=harness_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("cpu", "cuda", "tpu", "ipu", "tf"):
        assert f"│ {name} " in proc.stdout
    assert "Poplar SDK" in proc.stdout and "torch-xla" in proc.stdout
    # auto takes CUDA where this host can run it, else the CPU (on a GPU host too).
    expected = "cuda" if CudaBackend.available()[0] else "cpu"
    assert f"auto resolves to: {expected}" in proc.stdout


def test_cuda_availability_says_what_this_host_has(run_config):
    from backends.cuda import _DRIVER_PATHS

    ok, reason = CudaBackend.available()
    if not any(os.path.exists(p) for p in _DRIVER_PATHS):
        assert not ok and "no GPU driver" in reason  # decided without importing torch's CUDA runtime
    elif ok:
        assert torch.cuda.is_available() and reason == torch.cuda.get_device_name(0)
    else:
        assert "torch" in reason  # a driver, but a CPU build of torch or no visible device


def test_cuda_config_errors_name_their_key(run_config):
    from harness.core.errors import ConfigError

    with pytest.raises(ConfigError, match="backend.device_index"):
        run_config("+backend=cuda", "backend.device_index=-1")


class FakePoptorch(types.SimpleNamespace):
    """Records what the adapter asks of poptorch; 'runs' the model on the CPU."""

    def __init__(self):
        super().__init__(calls=[], compile_error=None)
        fake = self

        class Settings:
            def minElementsForOffChip(self, n):
                fake.calls.append(("minElementsForOffChip", n))
                return self

            def useOnChipStorage(self, on):
                fake.calls.append(("useOnChipStorage", on))
                return self

        class Options:
            def __init__(self):
                self.TensorLocations = types.SimpleNamespace(
                    setWeightLocation=lambda s: fake.calls.append(("setWeightLocation", type(s).__name__)))

            def deviceIterations(self, n):
                fake.calls.append(("deviceIterations", n))

            def replicationFactor(self, n):
                fake.calls.append(("replicationFactor", n))

            def enableExecutableCaching(self, path):
                fake.calls.append(("enableExecutableCaching", path))

        class InferenceModel:
            def __init__(self, model, options):
                self.model, self.options, self.attached = model, options, False

            def compile(self, *inputs):
                fake.calls.append(("compile", tuple(t.dtype for t in inputs), tuple(t.shape for t in inputs)))
                if fake.compile_error:
                    raise RuntimeError(fake.compile_error)
                self.attached = True

            def isAttachedToDevice(self):
                return self.attached

            def detachFromDevice(self):  # poptorch raises for a model that is not attached
                if not self.attached:
                    raise RuntimeError("detachFromDevice: the model is not attached")
                fake.calls.append(("detachFromDevice",))
                self.attached = False

            def __call__(self, dense, ids):
                return self.model(dense, ids)

        self.Options, self.TensorLocationSettings = Options, Settings
        self.inferenceModel = lambda model, options: InferenceModel(model, options)
        self.ipuHardwareIsAvailable = lambda: True


def test_ipu_options_follow_the_config(run_config):
    cfg = run_config("+backend=ipu", "backend.device_iterations=4", "backend.replication_factor=2",
                     "backend.offload_min_elements=100000").backend
    fake = FakePoptorch()
    build_options(fake, cfg)
    assert fake.calls == [("deviceIterations", 4), ("replicationFactor", 2),
                          ("minElementsForOffChip", 100000), ("useOnChipStorage", False),
                          ("setWeightLocation", "Settings")]


def test_ipu_without_poptorch_says_what_to_install(run_config):
    ok, reason = IpuBackend.available()
    assert not ok and "Poplar SDK" in reason
    adapter = IpuBackend(run_config("+backend=ipu").backend)
    assert adapter.capacity_bytes() == (900_000_000, "nominal")


def test_ipu_ids_are_int32_only_when_safe():
    assert int32_ids(torch.tensor([[1, 2**31 - 1]])).dtype == torch.int32
    with pytest.raises(ValueError, match="2\\^31"):
        int32_ids(torch.tensor([2**31]))


def test_ipu_adapter_end_to_end_with_a_fake_poptorch(run_config, monkeypatch):
    fake = FakePoptorch()
    monkeypatch.setitem(sys.modules, "poptorch", fake)
    model, batch, expected = case("hybrid")
    adapter = IpuBackend(run_config("+backend=ipu", "backend.device_iterations=3").backend)
    assert IpuBackend.available()[0]
    prepare_on(adapter, model, batch)  # the workload configures the model for what the IPU declares
    dhe_modules = [m for m in model.modules() if isinstance(m, DeepHashEmbedding)]
    assert dhe_modules and all(m.hash_method == "int32" for m in dhe_modules)
    compiled = [c for c in fake.calls if c[0] == "compile"][0]
    assert compiled[1] == (torch.float32, torch.int32) and compiled[2][0][0] == 3 * 16
    out = adapter.run(adapter.place(batch))
    # 32-bit hashing gives the same buckets; the codes are scaled in float32 instead of float64.
    torch.testing.assert_close(out[:16], expected, rtol=1e-4, atol=1e-4)
    assert adapter.queries_per_call == 3
    adapter.close()
    assert fake.calls[-1] == ("detachFromDevice",)


def test_a_failed_ipu_compile_is_the_error_the_run_reports(run_config, monkeypatch, caplog):
    """The adapter is closed in `finally`; closing an IPU model that never attached must not raise over
    the compile error (poptorch's detach raises there), nor may any failing close."""
    fake = FakePoptorch()
    fake.compile_error = "out of IPU memory: 1.2 GB needed"
    monkeypatch.setitem(sys.modules, "poptorch", fake)
    model, batch, _ = case("table")
    adapter = IpuBackend(run_config("+backend=ipu").backend)
    with pytest.raises(RuntimeError, match="out of IPU memory"):
        try:
            prepare_on(adapter, model, batch)
        finally:
            close_quietly(adapter)
    assert ("detachFromDevice",) not in fake.calls

    def broken_close():
        raise RuntimeError("device lost")

    adapter.close = broken_close
    close_quietly(adapter)  # logged, not raised
    assert "closing the ipu adapter failed: RuntimeError: device lost" in caplog.text


def test_an_unavailable_backend_is_refused_before_any_run_or_folder(run_harness, store, tmp_path):
    proc = run_harness("experiment=smoke", "experiment_name=mprec", "+backend=ipu", store_uri=store,
                       check=False)
    assert proc.returncode == 2 and "Poplar SDK" in proc.stderr
    assert "Traceback" not in proc.stderr
    mlflow.set_tracking_uri(store)
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
    assert not (tmp_path / "results").exists()  # not even an empty results/runs/<timestamp>/


def test_a_refused_command_leaves_its_folder_only_when_it_held_nothing_else(run_harness, tmp_path):
    proc = run_harness("workload.query_sizes=[-1]", check=False)
    assert proc.returncode == 2 and "workload.query_sizes" in proc.stderr
    assert not (tmp_path / "results").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    proc = run_harness("+backend=ipu", f"hydra.run.dir={mine}", check=False)
    assert proc.returncode == 2 and (mine / "notes.txt").read_text() == "kept"
    chosen = tmp_path / "chosen"  # a folder the user named is theirs even when the run left it empty
    proc = run_harness("+backend=ipu", f"hydra.run.dir={chosen}", check=False)
    assert proc.returncode == 2 and (chosen / ".hydra").is_dir()


@pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed (pip install -e '.[tf]')")
def test_a_sweep_over_backends_runs_what_is_here_and_records_what_is_not(run_harness, store):
    proc = run_harness("-m", "experiment=smoke", "experiment_name=mprec", "+backend=tf,tpu",
                       "workload.query_sizes=[4]", "isolate=never", store_uri=store, check=False)
    assert proc.returncode == 1  # one job failed; the sweep went on
    mlflow.set_tracking_uri(store)
    runs = {
        r.data.tags["backend"]: r
        for r in mlflow.search_runs(experiment_names=["mprec"], output_format="list")
        if r.data.tags.get("mprec.kind") == "latency"
    }
    assert runs["tf"].info.status == "FINISHED" and runs["tf"].data.metrics["latency_p50_ms"] > 0
    assert set(runs) == {"tf"}  # the tpu job was refused before a run was created
    assert "error: backend 'tpu' is not available: torch_xla is not installed" in proc.stderr
    assert "1 finished, 0 skipped, 0 failed, 1 could not run here" in proc.stderr


def test_an_unavailable_backend_in_an_isolated_sweep_is_one_line_and_counted_apart(run_harness, store,
                                                                                    tmp_path):
    proc = run_harness("-m", "experiment=smoke", "experiment_name=mprec", "+backend=cpu,ipu",
                       "workload.query_sizes=[4]", store_uri=store, check=False)
    assert proc.returncode == 1  # the sweep did not do everything it was asked
    assert "Traceback" not in proc.stderr  # the worker says it in one line, as a single run does
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error: backend 'ipu'")]) == 1
    assert "1 finished, 0 skipped, 0 failed, 1 could not run here" in proc.stderr
    logs = [log.read_text() for log in tmp_path.rglob("harness.log")]
    assert any("error: backend 'ipu'" in text for text in logs)  # the empty job's log says why


def test_table_pooling_variants_agree():
    model, batch, expected = case("table", per_bag=3)
    configure_for(model, DeviceCapabilities(embedding_bag=False))  # an XLA device's: no embedding_bag
    assert model.sparse_arch.pooling == "gather_sum"
    with torch.no_grad():
        torch.testing.assert_close(model(*batch), expected)


@pytest.mark.parametrize("name, hash_method, pooling", [("cpu", "float64", "bag"), ("cuda", "int64", "bag"),
                                                        ("ipu", "int32", "bag"), ("tf", "float64", "bag")])
def test_each_adapter_declares_capabilities_and_the_workload_configures_the_model(run_config, name,
                                                                                  hash_method, pooling):
    adapter = backends.adapter_class(name)(run_config(f"+backend={name}").backend)
    model, _, _ = case("hybrid")
    settings = configure_for(model, adapter.capabilities())
    assert (settings.hash_method, settings.bag_pooling) == (hash_method, pooling)
    assert model.sparse_arch.dhe.hash_method == hash_method and model.sparse_arch.tables.pooling == pooling


def test_cuda_adapter_logic_with_a_simulated_device(run_config, monkeypatch):
    """The CUDA adapter's control flow (events per iteration, peak memory per size, an out-of-memory size
    recorded infeasible and the cache emptied) against a simulated torch.cuda, on any host."""
    from harness.pipeline.timing import LadderSettings, run_ladder

    calls = {"empty_cache": 0, "reset": 0, "synchronize": 0}

    class Event:
        def __init__(self, enable_timing):
            self.t = None

        def record(self):
            import time

            self.t = time.perf_counter()

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3

    cuda = torch.cuda
    monkeypatch.setattr(cuda, "set_device", lambda i: None)
    monkeypatch.setattr(cuda, "Event", Event)
    monkeypatch.setattr(cuda, "synchronize", lambda i=None: calls.__setitem__("synchronize",
                                                                              calls["synchronize"] + 1))
    monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda i=None: calls.__setitem__("reset",
                                                                                          calls["reset"] + 1))
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda i=None: 12345)
    monkeypatch.setattr(cuda, "empty_cache", lambda: calls.__setitem__("empty_cache",
                                                                       calls["empty_cache"] + 1))
    pinned = []
    # no pinned memory here
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t.shape) or t)

    class Model(torch.nn.Module):
        def forward(self, dense, ids):
            if dense.shape[0] > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return dense.sum(1)

    adapter = CudaBackend(run_config("+backend=cuda").backend)
    adapter.device = "cpu"  # the simulation: tensors stay on the host
    adapter.prepare(Model(), None)
    settings = LadderSettings(warmup_iters=1, warmup_s=0, min_iters=4, min_time_s=0, max_iters=4,
                              max_time_s=5)
    results = run_ladder(adapter, [4, 16, 8], lambda q: [Batch(torch.rand(q, 13), torch.zeros(q, 26, 1))],
                         settings)
    assert [r.feasible for r in results] == [True, False, True]
    assert calls["empty_cache"] == 1 and calls["reset"] == 3 and calls["synchronize"] > 0
    assert len(results[0].device_latencies_s) == 4 and results[0].device_stats is not None
    assert results[0].extra == {"peak_memory_bytes": 12345.0}
    assert pinned  # batches staged in pinned memory, copied in and out inside the timed region
    copies = []
    monkeypatch.setattr(torch.Tensor, "to", lambda t, *a, **k: copies.append((a, k)) or t)
    adapter.synchronize(adapter.fetch(adapter.run(adapter.to_device(Batch(torch.rand(2, 13),
                                                                          torch.zeros(2, 26, 1))))))
    # dense and ids to the device (here "cpu", the simulation), then the logits back: all asynchronous
    assert copies == [(("cpu",), {"non_blocking": True})] * 3


def _simulated_cuda_graphs(monkeypatch, log: list) -> None:
    """torch.cuda replaced by enough of it for graphs: events, streams, capture contexts and a graph whose
    replay computes what its captured kernels would (a simulation: scripts/gpu_check.sh runs the real API)."""

    class Event:
        def __init__(self, enable_timing):
            pass

        def record(self):
            pass

        def elapsed_time(self, end):
            return 0.5

    class Graph:
        def replay(self):
            log.append("replay")
            self.out.copy_(self.model(*self.inputs))  # what replaying the captured kernels computes

    class Capturing:
        def __init__(self, what):
            self.what = what

        def __enter__(self):
            log.append(self.what)

        def __exit__(self, *exc):
            return False

    stream = lambda: type("S", (), {"wait_stream": lambda self, other: None})()  # noqa: E731
    for name, value in {"set_device": lambda i: None, "Event": Event, "synchronize": lambda i=None: None,
                        "reset_peak_memory_stats": lambda i=None: None,
                        "max_memory_allocated": lambda i=None: 0, "Stream": stream, "current_stream": stream,
                        "stream": lambda s: Capturing("side stream"), "CUDAGraph": Graph,
                        "graph": lambda g: Capturing("capture")}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: t)


def test_cuda_graphs_capture_once_per_size_replay_and_fall_back_to_eager(run_config, monkeypatch):
    """backend.graphs=true against a simulated torch.cuda: one capture per query size before its first
    timed call (timed apart as capture_s), every timed call a replay into the static buffers, and a size
    without a graph (live serving) run eagerly. The real API is exercised by scripts/gpu_check.sh."""
    from harness.pipeline.timing import LadderSettings, run_ladder

    log: list = []
    _simulated_cuda_graphs(monkeypatch, log)

    class Model(torch.nn.Module):
        def forward(self, dense, ids):
            log.append("eager")
            return dense.sum(1)

    adapter = CudaBackend(run_config("+backend=cuda", "backend.graphs=true").backend)
    adapter.device = "cpu"
    adapter.prepare(Model(), None)
    assert adapter.mode() == "graphs"
    original_capture = adapter.capture

    def capture(staged):  # hand the simulated graph what it replays
        captured = original_capture(staged)
        graph, inputs, out = adapter._graphs[staged[0].shape[0]]
        graph.model, graph.inputs, graph.out = adapter.model, inputs, out
        return captured

    adapter.capture = capture
    settings = LadderSettings(warmup_iters=1, warmup_s=0, min_iters=3, min_time_s=0, max_iters=3,
                              max_time_s=5)
    pools = lambda q: [Batch(torch.full((q, 13), float(i)), torch.zeros(q, 26, 1)) for i in range(2)]  # noqa: E731
    results = run_ladder(adapter, [4, 8], pools, settings)
    assert sorted(adapter._graphs) == [4, 8] and log.count("capture") == 2
    assert all("capture_s" in r.extra for r in results)
    timed_calls = 1 + 1 + 3  # first call, warm-up, measured: per size
    assert log.count("replay") == 2 * timed_calls
    # Replays compute each batch's own result: the static inputs were refilled, not stale.
    out = adapter.fetch(
        adapter.run(adapter.to_device(Batch(torch.full((4, 13), 2.0), torch.zeros(4, 26, 1))))
    )
    assert torch.equal(out, torch.full((4,), 26.0))
    log.clear()
    adapter.serve(Batch(torch.ones(3, 13), torch.zeros(3, 26, 1)))  # no graph of size 3: eager
    assert log == ["eager"]


_FAULTS = """
import resource, sys, torch
from backends.cpu import set_allocator
print(set_allocator(sys.argv[1]))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):  # 64 MiB allocated, touched and freed, as a query's activations are, call after call
    before = faults()
    torch.empty(64 << 18).fill_(1.0)
    print(faults() - before)
"""


def test_the_retained_allocator_serves_a_large_tensor_again_without_page_faults():
    runs = {}
    for mode in ("system", "retain"):
        proc = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        in_force, *faults = proc.stdout.split()
        runs[mode] = (in_force, [int(f) for f in faults])
    if runs["retain"][0] != "retain":
        pytest.skip("no glibc mallopt here: the allocator stays the system's")
    # 64 MiB is 16k pages of 4 KiB: the system's malloc maps them anew every call, each faulted in on first
    # touch; the retained heap grows to a working set (glibc's aligned blocks need a few) and then serves
    # every call from it.
    assert min(runs["system"][1]) > 4000, runs
    assert max(runs["retain"][1][-4:]) < 400, runs


def test_the_cpu_backend_refuses_an_unknown_allocator_by_key():
    from backends.cpu import CpuConfig
    from harness.core.errors import ConfigError

    config = CpuConfig(num_threads=None, interop_threads=None, allocator="jemalloc", compile=False,
                       compile_mode="default", memory_bytes=None)
    with pytest.raises(ConfigError, match="allocator.*retain"):
        config.check()
