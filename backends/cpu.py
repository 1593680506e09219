"""CPU backend: torch on the host, threads set and recorded.

Synchronization: torch's CPU kernels complete before the op returns (intra-op parallelism joins its
threads), so `synchronize` has nothing to wait for; the contract is kept so the harness loop is the same
for every device.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Optional

from omegaconf import MISSING

from backends.base import DeviceInfo
from backends.torch_backend import TorchBackend, TorchConfig
from harness.core.errors import ConfigError
from harness.core.host import (
    allocated_cpus,
    cpu_model_name,
    host_memory_bytes,
    native_cpu_dtype,
    numeric_flags,
    physical_cores,
)


@dataclass
class CpuConfig(TorchConfig):
    name: str = "cpu"
    # null: the CPUs a cluster job was given, else torch's default (one per physical core); recorded.
    num_threads: Optional[int] = MISSING
    interop_threads: Optional[int] = MISSING

    def check(self) -> None:
        super().check()
        for key in ("num_threads", "interop_threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(key, f"must be >= 1 or null, got {value}")


class CpuBackend(TorchBackend):
    name = "cpu"
    config_class = CpuConfig
    config: CpuConfig  # the adapter's own section, typed by config_class (backends/__init__.py)
    install_hint = "Install torch: pip install torch"
    device = "cpu"
    # bf16 and fp16 where torch has CPU kernels (native with avx512_bf16/AMX or avx512_fp16/AMX-FP16,
    # emulated elsewhere: device_info says which); no TF32 on CPUs.
    precisions = ("fp32", "bf16", "fp16")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("torch") is None:
            return False, "torch is not installed"
        return True, "torch on the host CPU"

    def device_info(self) -> DeviceInfo:
        return DeviceInfo(
            backend=self.name,
            name=cpu_model_name(),
            kind="cpu",
            memory_bytes=self.config.memory_bytes or host_memory_bytes(),
            framework="torch",
            framework_version=metadata.version("torch"),
            details={"physical_cores": physical_cores(), "numeric_flags": ",".join(numeric_flags()),
                     "bf16": native_cpu_dtype("bf16"), "fp16": native_cpu_dtype("fp16")},
        )

    def threads(self) -> int | None:
        """backend.num_threads, else the CPUs a cluster gave this job (harness.core.host.allocated_cpus),
        else None: torch's default."""
        return self.config.num_threads or allocated_cpus()

    def process_settings(self, precision: str) -> dict[str, Any]:
        default = "torch's default"
        return {"torch intra-op threads": self.threads() or default,
                "torch inter-op threads": self.config.interop_threads or default}

    def prepare(self, model, example) -> None:
        import torch

        threads = self.threads()
        if threads is not None:
            torch.set_num_threads(threads)
        if self.config.interop_threads is not None:
            try:
                torch.set_num_interop_threads(self.config.interop_threads)
            except RuntimeError:
                # Only settable before the first parallel work in the process (e.g. a multirun's job 2).
                pass
        super().prepare(model, example)

    def place(self, batch):
        return batch  # already in host memory

    def synchronize(self, output) -> None:
        return None

    def host_threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def run_params(self) -> dict[str, Any]:
        import torch

        return {"num_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                "compile": self.config.compile}
