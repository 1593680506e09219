"""What the torch adapters (cpu, cuda) share: placement, inference mode, optional torch.compile."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from backends.base import Backend, BackendConfig
from backends.torch_kernels import torch_peak_kernels
from harness.core.errors import ConfigError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass
class TorchConfig(BackendConfig):
    compile: bool = MISSING  # torch.compile the model; its compile time is recorded apart (compile_s)
    compile_mode: str = MISSING  # default, reduce-overhead or max-autotune

    def check(self) -> None:
        super().check()
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError("compile_mode", f"must be one of {COMPILE_MODES}, got {self.compile_mode!r}")


class TorchBackend(Backend):
    """A torch device given by `device`; subclasses add synchronization and device specifics."""

    config: TorchConfig

    device: str = "cpu"

    def __init__(self, config: TorchConfig) -> None:
        super().__init__(config)
        self.model: Any = None
        self.compile_s: float | None = None

    def prepare(self, model, example) -> None:
        import torch

        # Inference only: with no parameter requiring grad, autograd records nothing, so `run` needs no
        # per-call inference_mode context (that context alone costs ~5 us, 1% of a query-size-1 run).
        model = model.eval().requires_grad_(False).to(self.device)
        if self.config.compile:
            t0 = time.perf_counter()
            model = torch.compile(model, mode=self.config.compile_mode)
            if example is not None:
                # Compile now, not in the first timed call; the example goes where a timed call's input does.
                self.synchronize(model(*self.to_device(self.place(example))))
            self.compile_s = time.perf_counter() - t0
        self.model = model

    def mode(self) -> str:
        if not self.config.compile:
            return "eager"
        # reduce-overhead replays CUDA graphs of the compiled model (on CUDA; elsewhere it is a compile)
        return (
            "compiled+graphs"
            if self.config.compile_mode == "reduce-overhead" and str(self.device).startswith("cuda")
            else "compiled"
        )

    def place(self, batch):
        return type(batch)(*(t.to(self.device) for t in batch))

    def run(self, batch):
        return self.model(*batch)

    def to_host(self, output):
        return output.cpu()

    def prepare_metrics(self) -> dict[str, float]:
        return {"compile_s": self.compile_s} if self.compile_s is not None else {}

    def peak_kernels(self, size_scale: float = 1.0, precisions: tuple[str, ...] | None = None
                     ) -> dict[str, tuple]:
        wanted = (self.precisions if precisions is None
                  else tuple(p for p in precisions if p in self.precisions))
        return torch_peak_kernels(self.device, self.device_info().memory_bytes, size_scale, wanted)
