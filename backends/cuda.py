"""CUDA backend: torch on one NVIDIA (or ROCm) GPU.

Synchronization: kernels are queued asynchronously; `synchronize` waits for the device
(`torch.cuda.synchronize`) before the harness reads its clock. Every iteration is also bracketed by
CUDA events, so each run records the device's own time beside the wall clock (`device_latency_*`).
Out of memory at a query size is caught, the allocator's cache emptied, and the ladder goes on; the
peak allocated memory of each query size is recorded (`peak_memory_bytes`).
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

    def check(self) -> None:
        super().check()
        if self.device_index < 0:
            raise ConfigError("device_index", f"must be >= 0, got {self.device_index}")


class CudaBackend(TorchBackend):
    name = "cuda"
    config_class = CudaConfig
    install_hint = "Install a CUDA build of torch (pip install torch) on a machine with an NVIDIA GPU."
    precisions = ("fp32", "bf16", "fp16", "tf32")

    def __init__(self, config: CudaConfig) -> None:
        super().__init__(config)
        self.device = f"cuda:{config.device_index}"
        self._events: tuple[Any, Any] | None = None

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

    def use_precision(self, precision: str) -> None:
        import torch

        # Process-wide switches: set both ways, so an fp32 path after a tf32 one in the same process (a
        # sweep with isolate=never) runs true fp32 again.
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"

    def prepare(self, model, example) -> None:
        import torch

        torch.cuda.set_device(self.config.device_index)
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        super().prepare(model, example)

    def place(self, batch):
        # Staged in pinned host memory, as a server's receive buffers are: the copy to the GPU (inside the
        # timed region) is then one asynchronous DMA, not a pageable bounce.
        return type(batch)(*(t.pin_memory() for t in batch))

    def to_device(self, staged):
        return type(staged)(*(t.to(self.device, non_blocking=True) for t in staged))

    def run(self, batch):
        start, end = self._events
        start.record()  # the device's own time covers the model only (device_latency_*)
        out = self.model(*batch)
        end.record()
        return out

    def fetch(self, output):
        return output.to("cpu", non_blocking=True)  # into pinned memory; synchronize waits for it

    def synchronize(self, output) -> None:
        import torch

        torch.cuda.synchronize(self.config.device_index)

    def device_time_s(self) -> float | None:
        start, end = self._events
        return start.elapsed_time(end) / 1e3  # ms -> s; valid after synchronize

    def begin_size(self, query_size: int) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(self.config.device_index)

    def end_size(self) -> dict[str, float]:
        import torch

        return {"peak_memory_bytes": float(torch.cuda.max_memory_allocated(self.config.device_index))}

    def is_out_of_memory(self, exc: BaseException) -> bool:
        import torch

        return isinstance(exc, torch.cuda.OutOfMemoryError) or super().is_out_of_memory(exc)

    def release_memory(self) -> None:
        import torch

        torch.cuda.empty_cache()

    def run_params(self) -> dict[str, Any]:
        return {"device": self.device, "compile": self.config.compile}
