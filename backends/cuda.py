"""CUDA backend: torch on one NVIDIA (or ROCm) GPU.

Synchronization: kernels are queued asynchronously, so `synchronize` waits on the device
(`torch.cuda.synchronize`) before the harness reads its clock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from omegaconf import MISSING

from backends.base import Backend, BackendConfig, DeviceInfo

# Device nodes of the NVIDIA driver (Linux, containers), WSL2's GPU bridge, and ROCm. Looking for them
# first lets `auto` decide without importing torch on machines that plainly have no GPU.
_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg", "/dev/kfd")


@dataclass
class CudaConfig(BackendConfig):
    name: str = "cuda"
    device_index: int = MISSING

    def check(self) -> None:
        super().check()
        if self.device_index < 0:
            raise ValueError(f"device_index: must be >= 0, got {self.device_index}")


class CudaBackend(Backend):
    name = "cuda"
    config_class = CudaConfig
    install_hint = "Install a CUDA build of torch (pip install torch) on a machine with an NVIDIA GPU."

    def __init__(self, config: CudaConfig) -> None:
        super().__init__(config)
        self.model: Any = None

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

    @property
    def device(self) -> str:
        return f"cuda:{self.config.device_index}"

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
            details={
                "cuda": torch.version.cuda,
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
            },
        )

    def prepare(self, model, example) -> None:
        import torch

        torch.cuda.set_device(self.config.device_index)
        # Inference only (see backends/cpu.py): no per-call autograd context needed.
        self.model = model.eval().requires_grad_(False).to(self.device)

    def place(self, batch):
        return type(batch)(*(t.to(self.device, non_blocking=False) for t in batch))

    def run(self, batch):
        return self.model(*batch)

    def synchronize(self, output) -> None:
        import torch

        torch.cuda.synchronize(self.config.device_index)

    def to_host(self, output):
        return output.cpu()

    def is_out_of_memory(self, exc: BaseException) -> bool:
        import torch

        return isinstance(exc, torch.cuda.OutOfMemoryError) or super().is_out_of_memory(exc)

    def peak_kernels(self, size_scale: float = 1.0) -> dict[str, tuple]:
        from backends.torch_kernels import torch_peak_kernels

        return torch_peak_kernels(self.device, self.device_info().memory_bytes, size_scale)

    def release_memory(self) -> None:
        import torch

        torch.cuda.empty_cache()
