"""CPU backend: torch on the host, threads set and recorded.

Synchronization: torch's CPU kernels complete before the op returns (intra-op parallelism joins its
threads), so `synchronize` has nothing to wait for; the contract is kept so the harness loop is the same
for every device.

Allocator (`backend.allocator`): torch's CPU tensors come from the C library's malloc. glibc serves a block
above its mmap threshold (128 KiB, rising to at most 32 MiB as blocks are freed) from fresh pages that the
kernel must fault in and zero, then unmaps them on free, so a large activation costs its page faults on
every call: DHE's codes at query size 4096 (436 MB) took 205 ms to encode, of which ~150 ms were faults,
40 ms with the memory kept (docs/performance.md). `retain` (the default) keeps freed memory in the heap for
the next call, as a serving process with a caching allocator (jemalloc, tcmalloc) does; `system` leaves
the C library's thresholds (in a process that retained before, e.g. a multirun's later job with
isolate=never, glibc's 128 KiB thresholds, fixed: not the dynamic ones a fresh process starts with).
The cost: the heap keeps its high-water mark (glibc's aligned blocks need a
few of the largest tensor before calls reuse them). Recorded with the run; process-wide, like the threads.
"""

from __future__ import annotations

import ctypes
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
from harness.workload.device import DeviceCapabilities


@dataclass
class CpuConfig(TorchConfig):
    name: str = "cpu"
    # null: the CPUs a cluster job was given, else torch's default (one per physical core); recorded.
    num_threads: Optional[int] = MISSING
    interop_threads: Optional[int] = MISSING
    allocator: str = MISSING  # retain (freed memory kept for the next call) or system; see the module doc
    huge_pages: bool = MISSING  # large weights (tables) on 2 MB pages where the kernel allows (huge_pages.py)

    def check(self) -> None:
        super().check()
        for key in ("num_threads", "interop_threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(key, f"must be >= 1 or null, got {value}")
        if self.allocator not in ALLOCATORS:
            raise ConfigError("allocator", f"must be one of {ALLOCATORS}, got {self.allocator!r}")


ALLOCATORS = ("retain", "system")
# glibc's mallopt parameters (malloc.h) and defaults: thresholds of 128 KiB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _GLIBC_DEFAULT = -1, -3, 128 * 1024
_RETAIN_BYTES = 1 << 30  # blocks up to 1 GiB from the heap; freed memory kept up to 2 GiB at its top
_RETAIN_TRIM = (1 << 31) - 1
_allocator_in_force = "system"


def set_allocator(mode: str) -> str:
    """Put the process's malloc in `mode` (ALLOCATORS); returns the mode in force: `mode`, or "system"
    where the C library has no glibc mallopt (musl, macOS), which keeps its own behaviour."""
    global _allocator_in_force
    if mode == _allocator_in_force:
        return mode
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on (no ldconfig call)
    except (OSError, AttributeError):
        return _allocator_in_force
    mmap_bytes, trim_bytes = (_RETAIN_BYTES, _RETAIN_TRIM) if mode == "retain" else (_GLIBC_DEFAULT,) * 2
    if mallopt(_M_MMAP_THRESHOLD, mmap_bytes) and mallopt(_M_TRIM_THRESHOLD, trim_bytes):
        _allocator_in_force = mode
    return _allocator_in_force


class CpuBackend(TorchBackend):
    name = "cpu"
    config_class = CpuConfig
    config: CpuConfig  # the adapter's own section, typed by config_class (backends/__init__.py)
    install_hint = "Install torch: pip install torch"
    device = "cpu"
    _huge_page_bytes = 0  # the model's weights moved onto huge pages at prepare (backends/huge_pages.py)
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

    def capabilities(self) -> DeviceCapabilities:
        import torch

        # The host CPU's defaults, torch's CPU kernels, and oneDNN's fused linear where torch has it.
        return DeviceCapabilities(onednn_linear=torch.backends.mkldnn.is_available(), cpu_kernels=True)

    def threads(self) -> int | None:
        """backend.num_threads, else the CPUs a cluster gave this job (harness.core.host.allocated_cpus),
        else None: torch's default."""
        return self.config.num_threads or allocated_cpus()

    def process_settings(self, precision: str) -> dict[str, Any]:
        default = "torch's default"
        return {"torch intra-op threads": self.threads() or default,
                "torch inter-op threads": self.config.interop_threads or default,
                "allocator": self.config.allocator}

    def prepare(self, model, example) -> None:
        import torch

        set_allocator(self.config.allocator)
        if self.config.huge_pages:
            from backends.huge_pages import on_huge_pages

            self._huge_page_bytes = on_huge_pages(model)
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

        from backends import huge_pages

        return {"num_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                "allocator": _allocator_in_force, "compile": self.config.compile,
                "huge_page_bytes": self._huge_page_bytes, "transparent_huge_pages": huge_pages.thp_mode()}
