"""The backend adapter contract (docs/architecture.md): small, and the owner of everything device-specific.

An adapter is a config dataclass plus a class. The class must import its framework lazily (inside
methods), so `python -m harness` works, and says what to install, when the framework is missing.

The harness drives an adapter in this order:

    ok, why = Adapter.available()            # cheap; never raises
    adapter = Adapter(config)
    adapter.device_info()                    # name, memory capacity, framework version
    adapter.capabilities()                   # what the device needs; the workload configures the model
    adapter.check_precision(precision)       # refuses a compute precision the adapter does not run
    adapter.use_precision(precision)         # device-wide switches (CUDA's TF32); dtypes are the model's
    adapter.prepare(model, example_batch)    # placement, compilation: never timed as steady state
    staged = adapter.place(host_batch)       # once per pooled batch, before timing (e.g. pinned memory)
    adapter.capture(staged)                  # once per query size (CUDA graphs), timed apart
    # Timed, host to host, as a served query sees it:
    out = adapter.fetch(adapter.run(adapter.to_device(staged)))   # may return before the device is done...
    adapter.synchronize(out)                 # ...so the harness calls this before reading its clock

A device backend's `latency_*` therefore covers the input copy, the model and the output copy; the
model alone, where the device has a timer of its own (CUDA events), is `device_latency_*`. Adapters whose
`place` leaves the batch where the model reads it (the CPU) keep `to_device` and `fetch` as they are:
nothing is added to their timed region.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

from harness.core.errors import BackendUnavailable, ConfigError
from harness.workload.device import DeviceCapabilities


@dataclass
class DeviceInfo:
    backend: str
    name: str
    kind: str  # cpu, gpu, tpu, ipu
    memory_bytes: int  # capacity used for feasibility (measured where possible, else nominal)
    framework: str
    framework_version: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BackendConfig:
    """Fields every backend config has; adapters subclass this with their own."""

    name: str = MISSING  # auto, or an adapter of the registry (backends/__init__.py)
    # Capacity for feasibility checks when the device cannot be queried (or to model a smaller one);
    # null: the device's own (or nominal) capacity.
    memory_bytes: Optional[int] = MISSING

    def check(self) -> None:
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ConfigError("memory_bytes", f"must be > 0, got {self.memory_bytes}")


class Backend(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type[BackendConfig]] = BackendConfig
    install_hint: ClassVar[str] = ""
    # Datasheet capacity, used to judge feasibility where the device cannot be queried (dry runs of
    # paths for hardware that is not here).
    nominal_memory_bytes: ClassVar[int | None] = None
    # The compute precisions (harness/core/precision.py) this adapter runs; others are refused before any
    # work. Each adapter declares its own (docs/backends.md has the matrix).
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def __init__(self, config: BackendConfig) -> None:
        self.config = config

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(True, description) if this backend can run here, else (False, what is missing)."""

    def require_available(self) -> None:
        ok, reason = self.available()
        if not ok:
            hint = f" {self.install_hint}" if self.install_hint else ""
            raise BackendUnavailable(f"backend {self.name!r} is not available: {reason}.{hint}")

    def capacity_bytes(self) -> tuple[int | None, str]:
        """(memory capacity, where it came from: config, device or nominal), without allocating."""
        if self.config.memory_bytes:
            return self.config.memory_bytes, "config"
        if self.available()[0]:
            return self.device_info().memory_bytes, "device"
        return self.nominal_memory_bytes, "nominal"

    @abstractmethod
    def device_info(self) -> DeviceInfo:
        """Device name and memory capacity; must not allocate the model."""

    def capabilities(self) -> DeviceCapabilities:
        """What the device can do natively (integer and float width, pooling ops, launch cost). The
        workload turns it into module settings (harness/workload/device.py) before `prepare`; an adapter
        declares, it never sets a module's attributes. The default is a host CPU's."""
        return DeviceCapabilities()

    def check_precision(self, precision: str) -> None:
        """Refuse, in one line naming backend and precision, a compute precision this adapter does not run."""
        if precision not in self.precisions:
            raise BackendUnavailable(f"backend {self.name!r} does not run precision={precision}: it runs "
                                     f"{', '.join(self.precisions)}")

    def process_settings(self, precision: str) -> dict[str, Any]:
        """The process-wide state `use_precision` and `prepare` will set for a path in `precision` (torch's
        thread counts, CUDA's TF32 switch), declared before either runs: paths served side by side in one
        process must agree on it, since the last one prepared sets it for all (live serving checks)."""
        return {}

    def use_precision(self, precision: str) -> None:
        """Device-wide settings the compute precision needs, before `prepare` (CUDA: TF32 matmuls on or
        off). The model's dtypes are set by the workload (harness/workload/precision.py), not here."""

    @abstractmethod
    def prepare(self, model: Any, example: Any) -> None:
        """Place the model on the device and compile it if configured; `example` is a host batch."""

    @abstractmethod
    def place(self, batch: Any) -> Any:
        """Stage one host batch (done once per pooled batch, outside timed regions): where the device reads
        it directly (host memory for a CPU, a poptorch call's inputs), ready to run; for a device with its
        own memory, in host memory it copies from fast (pinned), `to_device` doing the copy inside timing."""

    def to_device(self, staged: Any) -> Any:
        """Inside the timed region: the staged host batch copied to the device (may be asynchronous)."""
        return staged

    def fetch(self, output: Any) -> Any:
        """Inside the timed region: start copying `output` to the host; `synchronize` waits for it."""
        return output

    def serve(self, host_batch: Any) -> Any:
        """One query host to host, finished: what live serving and the cross-checks call (untimed here)."""
        out = self.fetch(self.run(self.to_device(self.place(host_batch))))
        self.synchronize(out)
        return out

    def capture(self, staged: Any) -> bool:
        """Once per query size, before its first timed call: capture what replays it (CUDA graphs);
        True when something was captured (its time is then recorded apart, `capture_s`)."""
        return False

    def mode(self) -> str:
        """How the model executes: eager (the default), compiled, compiled+graphs or graphs; part of the
        path's label (harness/core/paths.py)."""
        return "eager"

    @abstractmethod
    def run(self, batch: Any) -> Any:
        """Launch one inference on a batch on the device; may return before the device has finished."""

    @abstractmethod
    def synchronize(self, output: Any) -> None:
        """Return only when the work that produced `output` is complete."""

    def device_time_s(self) -> float | None:
        """Device-side time of the last synchronized iteration (CUDA events), if the device keeps one."""
        return None

    # Queries one `run` call serves (IPU device iterations: one call runs several queries back to back on
    # the device); the harness divides each call's time by it to report per-query latency.
    queries_per_call: int = 1

    def mark_steady(self) -> None:
        """Called when warm-up ends and the measured phase begins (XLA: count recompilations from here)."""

    def begin_size(self, query_size: int) -> None:
        """Called before a query size's first call (reset peak-memory or compile counters)."""

    def end_size(self) -> dict[str, float]:
        """Metrics of the query size just measured (peak memory, recompilations), logged at its step."""
        return {}

    def host_threads(self) -> int:
        """Host cores the timed loop keeps busy (after `prepare`): a device is fed by one host thread; the
        CPU adapter says its intra-op threads (the doctor's advice sizes a pinned run by it). Interference is
        judged on every core the run was given, whatever its threads use (harness/core/load.py)."""
        return 1

    def device_load(self) -> dict[str, float]:
        """Other users of the device during the query size just measured, as per-size metrics (CUDA: other
        processes on the GPU, from NVML where it is installed); {} where the adapter cannot tell, which the
        run records as "not measurable here", never as zero. The host's load is measured for every backend."""
        return {}

    def energy_joules(self) -> float | None:
        """The device's own energy counter in joules (CUDA: NVML's total energy since the driver loaded),
        read before and after each timed phase; None where the device has none readable. The host's
        RAPL counters are read for every backend (harness/core/energy.py)."""
        return None

    def prepare_metrics(self) -> dict[str, float]:
        """Metrics of `prepare` itself (compile time), recorded apart from steady state."""
        return {}

    def to_host(self, output: Any) -> Any:
        """The output as a host (CPU) torch tensor, for cross-checks."""
        return output

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()

    def release_memory(self) -> None:
        """Give memory back after an out-of-memory error so the ladder can go on."""

    def peak_kernels(self, size_scale: float = 1.0, precisions: tuple[str, ...] | None = None
                     ) -> dict[str, tuple]:
        """Microbenchmark kernels for the device's peaks (copy, gather bandwidth; a GEMM in each compute
        precision of `precisions`, None: every one it runs): {name: (launch, work per call, "bytes" |
        "flops")}, each call short (tens of ms); empty if the adapter has none. Called after `prepare`; the
        harness times them with `synchronize` (harness/pipeline/peaks.py)."""
        return {}

    def run_params(self) -> dict[str, Any]:
        """Settings in force after `prepare` (threads, compile flags), recorded with the run."""
        return {}

    def close(self) -> None:
        """Release the device."""
