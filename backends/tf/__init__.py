"""TensorFlow backend: the same DLRM and representations in TF (backends/tf/model.py), torch weights loaded.

`prepare` converts the torch model the harness built (so quality-trained weights carry over) into a
`tf.function` (`jit_compile` with `backend.xla=true`). Synchronization: the harness's clock is read after
`synchronize` materialises the result (`.numpy()`), which returns only when TF has computed it.
TPUs through TF (`tf.distribute.TPUStrategy`) are documented in docs/backends.md, not exercised here.
tensorflow is imported only inside this adapter's methods: `pip install -e ".[tf]"`.
"""

from __future__ import annotations

import importlib.util
import subprocess
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Optional

from omegaconf import MISSING

from backends.base import Backend, BackendConfig, DeviceInfo
from harness.core.host import cpu_model_name, host_memory_bytes

INSTALL = "tensorflow is not installed: pip install -e '.[tf]' (tensorflow-cpu, or tensorflow for GPUs)"


@dataclass
class TfConfig(BackendConfig):
    name: str = "tf"
    xla: bool = MISSING  # tf.function(jit_compile=True)
    device: Optional[str] = MISSING  # e.g. /GPU:0; null: TF's own placement (a GPU if it sees one)


def gpu_memory_bytes(index: int) -> int:
    """GPU `index`'s total memory: NVML through pynvml where installed, else nvidia-smi; 0 if neither."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).total)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no pynvml or no NVML library: ask nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20,
                             check=True).stdout
        return int(float(out.strip().splitlines()[0]) * 2**20)  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0


def _tf():
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


class TfBackend(Backend):
    name = "tf"
    config_class = TfConfig
    config: TfConfig  # the adapter's own section, typed by config_class (backends/__init__.py)
    install_hint = ""
    # The model's dtypes carry over from torch (backends/tf/model.py); no TF32 switch is exposed here.
    precisions = ("fp32", "bf16", "fp16")

    def __init__(self, config: TfConfig) -> None:
        super().__init__(config)
        self.model: Any = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("tensorflow") is None:
            return False, INSTALL
        return True, "tensorflow"

    def _framework(self) -> tuple[str, str]:
        for dist in ("tensorflow", "tensorflow-cpu"):
            try:
                return dist, metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return "tensorflow", "not installed"

    def device_info(self) -> DeviceInfo:
        tf = _tf()
        gpus = tf.config.list_physical_devices("GPU")
        on_gpu = bool(gpus) and (self.config.device is None or "GPU" in self.config.device.upper())
        name = (tf.config.experimental.get_device_details(gpus[0]).get("device_name",
                                                                       "GPU") if on_gpu else cpu_model_name())
        framework, version = self._framework()
        # A GPU's own memory (NVML, else nvidia-smi), never the host's RAM; 0 where neither can say, which
        # `capacity_bytes` turns into "unknown" (fit not judged) rather than a wrong capacity.
        memory = self.config.memory_bytes or (
            gpu_memory_bytes(self._gpu_index()) if on_gpu else host_memory_bytes()
        )
        return DeviceInfo(backend=self.name, name=name, kind="gpu" if on_gpu else "cpu", memory_bytes=memory,
                          framework=framework, framework_version=version,
                          details={"xla": self.config.xla, "gpus": len(gpus)})

    def _gpu_index(self) -> int:
        device = (self.config.device or "/GPU:0").rsplit(":", 1)[-1]
        return int(device) if device.isdigit() else 0

    def capacity_bytes(self) -> tuple[int | None, str]:
        capacity, source = super().capacity_bytes()
        return (capacity, source) if capacity else (None, "unknown")

    def prepare(self, model, example) -> None:
        tf = _tf()
        from backends.tf.model import TfDLRM

        with tf.device(self.config.device) if self.config.device else nullcontext():
            self.model = TfDLRM.from_torch(model.eval(), jit_compile=self.config.xla)

    def place(self, batch):
        return (batch.dense.numpy(), batch.ids.numpy())  # host arrays, as a server receives them

    def to_device(self, staged):
        # Inside the timed region: the arrays become TF tensors on the device (a copy to the GPU there);
        # `synchronize`'s .numpy() brings the result back, so the latency is host to host.
        tf = _tf()
        with tf.device(self.config.device) if self.config.device else nullcontext():
            return (tf.constant(staged[0]), tf.constant(staged[1]))

    def run(self, batch):
        return self.model(*batch)

    def synchronize(self, output) -> None:
        output.numpy()  # blocks until the value exists

    def to_host(self, output):
        import torch

        return torch.from_numpy(output.numpy())

    def is_out_of_memory(self, exc: BaseException) -> bool:
        tf = _tf()
        return isinstance(exc, tf.errors.ResourceExhaustedError) or super().is_out_of_memory(exc)

    def run_params(self) -> dict[str, Any]:
        return {"xla": self.config.xla, "device": self.config.device}
