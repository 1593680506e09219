"""TPU backend: torch-xla (PJRT). Runs for real here with PJRT_DEVICE=CPU (scripts/xla_check.sh).

Synchronization: torch-xla builds a lazy graph; `synchronize` cuts and executes it (`torch_xla.sync()`)
and waits for the device (`xm.wait_device_ops()`) before the harness reads its clock.
Static shapes: XLA compiles one graph per input shape. Every query size of the ladder is its own bucket
(the pools hold batches of exactly that size), so each size compiles once, in its first call, which the
harness times apart. The adapter counts compilations (torch-xla's CompileTime metric) per size and during
the measured phase: a steady-state recompilation is a bug the run reports (`xla_steady_compiles`).
Fallbacks: ops XLA cannot lower run on the host (`aten::` counters); the run logs them
(`xla_fallback_ops`, tag `xla_fallbacks`) and the tests assert there are none. Choices that avoid them:
multi-id bags pool with F.embedding(...).sum() (nn.EmbeddingBag falls back, and F.embedding_bag's own
lowering grows with the batch), and on a real TPU (no float64) DHE hashes with 32-bit integers.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from omegaconf import MISSING

from backends.base import DeviceInfo
from backends.torch_backend import TorchBackend, TorchConfig
from harness.core.host import host_memory_bytes
from harness.workload.device import DeviceCapabilities

TPU_V3_CORE_BYTES = 16 * 2**30
INSTALL = ("torch_xla is not installed: pip install torch-xla matching your torch (torch-xla 2.9 needs torch "
           "2.9.x), e.g. pip install -e '.[tpu]' in a fresh environment; scripts/xla_check.sh builds one")


@dataclass
class TpuConfig(TorchConfig):
    name: str = "tpu"
    fail_on_recompile: bool = MISSING  # a recompilation in the measured phase fails the run


def _xla():
    import torch_xla
    import torch_xla.core.xla_model as xm
    import torch_xla.debug.metrics as met

    return torch_xla, xm, met


def compile_count(met) -> int:
    data = met.metric_data("CompileTime")
    return int(data[0]) if data else 0


def fallback_counts(met) -> dict[str, int]:
    return {name: int(met.counter_value(name)) for name in met.counter_names() if name.startswith("aten::")}


class TpuBackend(TorchBackend):
    name = "tpu"
    config_class = TpuConfig
    config: TpuConfig  # the adapter's own section, typed by config_class (backends/__init__.py)
    precisions = ("fp32", "bf16")  # bf16 is the TPU's native matmul type; no fp16 or TF32 there
    install_hint = ""
    nominal_memory_bytes = TPU_V3_CORE_BYTES

    def __init__(self, config: TpuConfig) -> None:
        super().__init__(config)
        self._counts: dict[str, int] = {}
        self.steady_compiles_seen = 0

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            torch_xla, xm, _ = _xla()
        except ImportError:
            return False, INSTALL
        try:
            device = torch_xla.device()
            hw = xm.xla_device_hw(device)
        except Exception as exc:  # noqa: BLE001 - e.g. no PJRT_DEVICE and no TPU
            return (
                False,
                f"torch_xla finds no device ({exc}); on a TPU VM it needs none, elsewhere PJRT_DEVICE=CPU",
            )
        return True, f"torch_xla on {hw} (PJRT_DEVICE={os.environ.get('PJRT_DEVICE', 'unset')})"

    @functools.cached_property
    def device(self):
        """The XLA device, looked up once (at `prepare`), never again inside a timed call's `to_device`."""
        torch_xla, _, _ = _xla()
        return torch_xla.device()

    def _hardware(self) -> str:
        _, xm, _ = _xla()
        return xm.xla_device_hw(self.device)

    def device_info(self) -> DeviceInfo:
        _, xm, _ = _xla()
        hw = self._hardware()
        memory = self.config.memory_bytes
        if memory is None:
            try:
                info = xm.get_memory_info(self.device)
                memory = int(info.get("bytes_limit") or info.get("kb_total", 0) * 1024) or None
            except Exception:  # noqa: BLE001 - not every PJRT device reports memory
                memory = None
        if memory is None:
            memory = host_memory_bytes() if hw == "CPU" else TPU_V3_CORE_BYTES
        return DeviceInfo(backend=self.name, name=f"XLA {hw}", kind="tpu", memory_bytes=memory,
                          framework="torch_xla", framework_version=metadata.version("torch_xla"),
                          details={"pjrt_device": os.environ.get("PJRT_DEVICE")})

    def place(self, batch):
        return batch  # host tensors; `to_device` copies them inside the timed region

    def to_device(self, staged):
        return type(staged)(*(t.to(self.device) for t in staged))

    def fetch(self, output):
        return output.cpu()  # runs the pending graph and copies the result to the host

    def capabilities(self) -> DeviceCapabilities:
        # embedding_bag falls back to the host under XLA; a real TPU has no float64 and emulates int64
        # slowly (on PJRT's CPU device both are native).
        tpu = self._hardware() == "TPU"
        # torch's quantized embedding-bag kernels are CPU-only (int8 rows: gather and dequantize in XLA).
        return DeviceCapabilities(int64=not tpu, float64=not tpu, embedding_bag=False, quantized_bag=False)

    def synchronize(self, output) -> None:
        torch_xla, xm, _ = _xla()
        torch_xla.sync()
        xm.wait_device_ops()

    def begin_size(self, query_size: int) -> None:
        _, _, met = _xla()
        self._counts = {"start": compile_count(met)}

    def mark_steady(self) -> None:
        _, _, met = _xla()
        self._counts["steady"] = compile_count(met)

    def end_size(self) -> dict[str, float]:
        _, _, met = _xla()
        now = compile_count(met)
        steady = now - self._counts.get("steady", now)
        self.steady_compiles_seen += steady
        if steady and self.config.fail_on_recompile:
            raise RuntimeError(f"XLA recompiled {steady} times in the measured phase: shapes are not static")
        fallbacks = fallback_counts(met)
        return {"xla_compiles": float(now - self._counts.get("start", now)),
                "xla_steady_compiles": float(steady), "xla_fallback_ops": float(sum(fallbacks.values()))}

    def fallbacks(self) -> dict[str, int]:
        _, _, met = _xla()
        return fallback_counts(met)

    def run_params(self) -> dict[str, Any]:
        return {"pjrt_device": os.environ.get("PJRT_DEVICE"), "hardware": self._hardware()}
