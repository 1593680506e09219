"""CUDA backend: torch on one NVIDIA (or ROCm) GPU.

Synchronization: kernels are queued asynchronously; `synchronize` waits for the device
(`torch.cuda.synchronize`) before the harness reads its clock. Every iteration is also bracketed by
CUDA events, so each run records the device's own time beside the wall clock (`device_latency_*`).
Out of memory at a query size is caught, the allocator's cache emptied, and the ladder goes on; the
peak allocated memory of each query size is recorded (`peak_memory_bytes`).

Execution modes (the path's label says which, harness/core/paths.py): eager; `backend.compile=true`
(torch.compile; `compile_mode=reduce-overhead` also replays CUDA graphs); `backend.graphs=true`, the eager
model captured into one CUDA graph per query size before its first timed call (the capture is timed apart,
`capture_s` at that size) and replayed: one launch per query instead of one per kernel. A query of a size
without a graph (live serving) runs eagerly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from omegaconf import MISSING

from backends.base import DeviceInfo
from backends.torch_backend import TorchBackend, TorchConfig
from harness.core.errors import ConfigError
from harness.workload.device import DeviceCapabilities

# Device nodes of the NVIDIA driver (Linux, containers), WSL2's GPU bridge, and ROCm. Looking for them
# first lets `auto` decide without importing torch on machines that plainly have no GPU.
_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


@dataclass
class CudaConfig(TorchConfig):
    name: str = "cuda"
    device_index: int = MISSING
    graphs: bool = MISSING  # capture the eager model in a CUDA graph per query size and replay it

    def check(self) -> None:
        super().check()
        if self.device_index < 0:
            raise ConfigError("device_index", f"must be >= 0, got {self.device_index}")
        if self.graphs and self.compile:
            raise ConfigError("graphs", "graphs=true captures the eager model; for a compiled one with CUDA "
                                        "graphs use compile=true compile_mode=reduce-overhead")


def other_compute_processes(pids: list[int], own_pid: int) -> int | None:
    """How many other processes compute on the GPU, from NVML's list of compute processes, asked while this
    process holds a context there (it does while it measures). NVML lists PIDs of the host's PID namespace:
    in a container this process's own PID is not among them, yet it is one of the listed, so the others
    are the rest either way. NVML listing nothing (a container that hides the host's processes) cannot
    tell: None, never a false "1 other process" nor a false zero.

    >>> other_compute_processes([4242], 4242), other_compute_processes([88123, 88200], 17)
    (0, 1)
    >>> other_compute_processes([], 17) is None
    True
    """
    listed = set(pids)
    if not listed:
        return None
    if own_pid in listed:  # the host's PID namespace: this process by its own PID
        return len(listed - {own_pid})
    return len(listed) - 1  # a container's: this process is one of them under the host's PID


class CudaBackend(TorchBackend):
    name = "cuda"
    config_class = CudaConfig
    config: CudaConfig  # the adapter's own section, typed by config_class (backends/__init__.py)
    install_hint = "Install a CUDA build of torch (pip install torch) on a machine with an NVIDIA GPU."
    precisions = ("fp32", "bf16", "fp16", "tf32")

    def __init__(self, config: CudaConfig) -> None:
        super().__init__(config)
        self.device = f"cuda:{config.device_index}"
        self._events: tuple[Any, Any] | None = None
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}  # query size -> (graph, static inputs, output)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if not any(os.path.exists(p) for p in _DRIVER_PATHS):
            return False, "no GPU driver found (none of " + ", ".join(_DRIVER_PATHS) + ")"
        try:
            import torch
        except ImportError:
            return False, "torch is not installed"
        if not torch.cuda.is_available():
            return False, f"torch {torch.__version__} sees no CUDA device"
        return True, torch.cuda.get_device_name(0)

    def device_info(self) -> DeviceInfo:
        import torch

        props = torch.cuda.get_device_properties(self.config.device_index)
        return DeviceInfo(
            backend=self.name,
            name=props.name,
            kind="gpu",
            memory_bytes=self.config.memory_bytes or int(props.total_memory),
            framework="torch",
            framework_version=metadata.version("torch"),
            details={"cuda": torch.version.cuda, "capability": f"{props.major}.{props.minor}",
                     "multiprocessors": props.multi_processor_count},
        )

    def capabilities(self) -> DeviceCapabilities:
        # Launch-bound: the DHE hash in CPU-sized float64 chunks (~10 kernels each) took 21.2 ms at query
        # size 1024 on an H200, one int64 pass 1.18 ms (scripts/gpu_check.sh, docs/backends.md).
        # torch's quantized embedding-bag kernels (int8 table rows) are CPU-only: int8 rows are gathered
        # and dequantized by plain tensor ops here.
        return DeviceCapabilities(launch_bound=True, quantized_bag=False)

    def process_settings(self, precision: str) -> dict[str, Any]:
        return {"CUDA TF32 matmuls": precision == "tf32"}

    def use_precision(self, precision: str) -> None:
        import torch

        # Process-wide switches: set both ways, so an fp32 path after a tf32 one in the same process (a
        # sweep with isolate=never) runs true fp32 again.
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"

    def prepare(self, model, example) -> None:
        import torch

        self._graphs.clear()  # graphs replay the model they captured: a new model, new graphs
        torch.cuda.set_device(self.config.device_index)
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        super().prepare(model, example)

    def place(self, batch):
        # Staged in pinned host memory, as a server's receive buffers are: the copy to the GPU (inside the
        # timed region) is then one asynchronous DMA, not a pageable bounce.
        return type(batch)(*(t.pin_memory() for t in batch))

    def mode(self) -> str:
        return "graphs" if self.config.graphs else super().mode()

    def capture(self, staged) -> bool:
        """graphs=true: capture this query size's graph (once), after warm-up on a side stream as CUDA
        graphs require; its inputs are static buffers `to_device` copies each query into."""
        if not self.config.graphs or staged[0].shape[0] in self._graphs:
            return False
        import torch

        static_in = type(staged)(*(t.to(self.device) for t in staged))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.model(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.model(*static_in)
        torch.cuda.synchronize(self.config.device_index)
        self._graphs[staged[0].shape[0]] = (graph, static_in, static_out)
        return True

    def to_device(self, staged):
        captured = self._graphs.get(staged[0].shape[0])
        if captured is not None:  # into the graph's static inputs
            for target, source in zip(captured[1], staged):
                target.copy_(source, non_blocking=True)
            return captured[1]
        return type(staged)(*(t.to(self.device, non_blocking=True) for t in staged))

    def run(self, batch):
        start, end = self._events
        start.record()  # the device's own time covers the model only (device_latency_*)
        captured = self._graphs.get(batch[0].shape[0])
        if captured is not None and batch is captured[1]:
            captured[0].replay()
            out = captured[2]
        else:
            out = self.model(*batch)
        end.record()
        return out

    def fetch(self, output):
        return output.to("cpu", non_blocking=True)  # into pinned memory; synchronize waits for it

    def close(self) -> None:
        self._graphs.clear()  # the graphs' memory pools go with them

    def synchronize(self, output) -> None:
        import torch

        torch.cuda.synchronize(self.config.device_index)

    def device_time_s(self) -> float | None:
        if self._events is None:  # before prepare: nothing timed
            return None
        start, end = self._events
        return start.elapsed_time(end) / 1e3  # ms -> s; valid after synchronize

    def begin_size(self, query_size: int) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(self.config.device_index)

    def end_size(self) -> dict[str, float]:
        import torch

        return {"peak_memory_bytes": float(torch.cuda.max_memory_allocated(self.config.device_index))}

    def device_load(self) -> dict[str, float]:
        """Other processes computing on this GPU (NVML, through pynvml where installed: torch's CUDA wheels
        do not always bring it), read before and after each timed phase; {} where NVML cannot be asked or
        cannot tell (`other_compute_processes`), which the run records as not measurable, never as zero.
        Graphics processes do not count: a workstation's Xorg holds a context and computes nothing."""
        try:
            import pynvml
            import torch

            pynvml.nvmlInit()
            try:
                handle = self._nvml_handle(pynvml, torch)
                pids = [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
                utilization = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - no pynvml, no NVML library, no permission: not measurable here
            return {}
        others = other_compute_processes(pids, os.getpid())
        if others is None:
            return {}
        return {"device_other_processes": float(others), "device_utilization_pct": float(utilization)}

    def _nvml_handle(self, pynvml, torch):
        """NVML's handle of this device, by UUID (NVML's indices ignore CUDA_VISIBLE_DEVICES)."""
        uuid = str(getattr(torch.cuda.get_device_properties(self.config.device_index), "uuid", ""))
        if uuid:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        return pynvml.nvmlDeviceGetHandleByIndex(self.config.device_index)

    def energy_joules(self) -> float | None:
        """NVML's total energy consumption of this GPU (millijoules since the driver loaded; Volta and
        later), in joules; None without pynvml, NVML or the counter."""
        try:
            import pynvml
            import torch

            pynvml.nvmlInit()
            try:
                handle = self._nvml_handle(pynvml, torch)
                return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)) / 1e3
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - no pynvml, no NVML, an older GPU: not measurable here
            return None

    def is_out_of_memory(self, exc: BaseException) -> bool:
        import torch

        return isinstance(exc, torch.cuda.OutOfMemoryError) or super().is_out_of_memory(exc)

    def release_memory(self) -> None:
        import torch

        torch.cuda.empty_cache()

    def run_params(self) -> dict[str, Any]:
        return {"device": self.device, "compile": self.config.compile}
