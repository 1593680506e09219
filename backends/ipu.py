"""IPU backend: poptorch on Graphcore IPUs (GC200: 900 MB of In-Processor-Memory per IPU).

poptorch is not on PyPI: it ships as a wheel with the Graphcore Poplar SDK. Without it this adapter
still validates its config, builds its options against any poptorch-like module (tested with a fake
one), judges feasibility against the nominal 900 MB, and says what to install. IPU execution itself is
untested here (docs/backends.md).

Timing: a poptorch model call blocks until the device has finished, so `synchronize` has nothing to
wait for. With `device_iterations = n` one call runs n queries back to back on the IPU (the host sends
n batches at once); the harness divides each call's time by n (`queries_per_call`).
Ids go to the device as int32 (every table has fewer than 2^31 rows, checked); the adapter declares no
64-bit arithmetic, so DHE hashes with 32-bit integers only (the universal hash exactly by Horner's rule
over limbs of a; multiply_shift in wrapping 32-bit arithmetic and limbs of h m:
harness/workload/representations/dhe/hashing.py; neither run on an IPU here).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any, Optional

from omegaconf import MISSING

from backends.base import Backend, BackendConfig, DeviceInfo
from harness.core.errors import ConfigError
from harness.workload.device import DeviceCapabilities

GC200_MEMORY_BYTES = 900_000_000
INSTALL = ("poptorch is not installed: it ships with the Graphcore Poplar SDK, not PyPI. Download the SDK, "
           "source its enable.sh and pip install the poptorch wheel it contains (docs/backends.md)")


@dataclass
class IpuConfig(BackendConfig):
    name: str = "ipu"
    device_iterations: int = MISSING  # queries per host call, run back to back on the IPU
    replication_factor: int = MISSING  # model replicas, one per IPU; each query goes to one replica
    # Weights with at least this many elements live in Streaming Memory (off chip) instead of the
    # IPU's 900 MB; null keeps everything on chip.
    offload_min_elements: Optional[int] = MISSING
    executable_cache_dir: Optional[str] = MISSING  # reuse compiled graphs across runs

    def check(self) -> None:
        super().check()
        for key in ("device_iterations", "replication_factor"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        if self.offload_min_elements is not None and self.offload_min_elements < 1:
            raise ConfigError("offload_min_elements",
                              f"must be >= 1 or null, got {self.offload_min_elements}")


def build_options(poptorch, config: IpuConfig):
    """poptorch.Options for `config`, against the real module or any object with its API."""
    opts = poptorch.Options()
    opts.deviceIterations(config.device_iterations)
    opts.replicationFactor(config.replication_factor)
    if config.offload_min_elements is not None:
        opts.TensorLocations.setWeightLocation(
            poptorch.TensorLocationSettings().minElementsForOffChip(config.offload_min_elements)
            .useOnChipStorage(False))
    if config.executable_cache_dir:
        opts.enableExecutableCaching(config.executable_cache_dir)
    return opts


def int32_ids(ids):
    """Ids as int32 for the IPU, refusing any that would not survive the cast."""
    import torch

    if ids.numel() and int(ids.max()) >= 2**31:
        raise ValueError("an id is >= 2^31 and cannot go to the IPU as int32")
    return ids.to(torch.int32)


class IpuBackend(Backend):
    name = "ipu"
    config_class = IpuConfig
    config: IpuConfig  # the adapter's own section, typed by config_class (backends/__init__.py)
    install_hint = ""  # INSTALL says it all
    nominal_memory_bytes = GC200_MEMORY_BYTES
    precisions = ("fp32", "fp16")  # poptorch runs a model cast to half natively; no bf16 on IPUs

    def __init__(self, config: IpuConfig) -> None:
        super().__init__(config)
        self.model: Any = None
        self.queries_per_call = config.device_iterations

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import poptorch
        except ImportError:
            return False, INSTALL
        try:
            if not poptorch.ipuHardwareIsAvailable():
                return False, "poptorch is installed but sees no IPU (ipuHardwareIsAvailable() is False)"
        except Exception as exc:  # noqa: BLE001 - any failure to reach the device means unavailable
            return False, f"poptorch could not query the IPUs: {exc}"
        return True, "poptorch with IPU hardware"

    def device_info(self) -> DeviceInfo:
        replicas = self.config.replication_factor
        return DeviceInfo(
            backend=self.name, name="Graphcore GC200 IPU", kind="ipu",
            # Every replica holds the whole model: the capacity that matters is one IPU's.
            memory_bytes=self.config.memory_bytes or GC200_MEMORY_BYTES,
            framework="poptorch", framework_version=_version("poptorch"),
            details={"replication_factor": replicas, "device_iterations": self.config.device_iterations},
        )

    def capabilities(self) -> DeviceCapabilities:
        # No 64-bit integer or float arithmetic; no torch quantized kernels (int8 rows: gather + dequantize).
        return DeviceCapabilities(int64=False, float64=False, quantized_bag=False)

    def prepare(self, model, example) -> None:
        import poptorch

        model = model.eval().requires_grad_(False)
        self.model = poptorch.inferenceModel(model, options=build_options(poptorch, self.config))
        if example is not None:
            self.model.compile(*self.place(example))

    def place(self, batch):
        """One call's input: the query repeated for every device iteration and replica, ids as int32."""
        import torch

        copies = self.config.device_iterations * self.config.replication_factor
        dense, ids = batch
        return type(batch)(torch.cat([dense] * copies), torch.cat([int32_ids(ids)] * copies))

    def run(self, batch):
        return self.model(*batch)

    def synchronize(self, output) -> None:
        return None  # a poptorch call returns when the IPU has finished

    def close(self) -> None:
        # detachFromDevice raises for a model that was never compiled or attached (a failed compile).
        attached = getattr(self.model, "isAttachedToDevice", None)
        if attached is not None and attached():
            self.model.detachFromDevice()

    def run_params(self) -> dict[str, Any]:
        return {"device_iterations": self.config.device_iterations,
                "replication_factor": self.config.replication_factor,
                "offload_min_elements": self.config.offload_min_elements}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
