"""A path's label: what was measured, in one readable string used everywhere (MLflow, analysis, serving).

    <representation>[:<storage>][+cache]@<backend>[+<mode>][/<precision>]

`table@cpu`, `table:int8@cpu/bf16`, `dhe+cache@cuda+graphs/tf32`. The defaults (fp32 rows, eager
execution, fp32 compute) add nothing, so a label reads as it did before these were choices. The *family*
of a path is its label without the execution mode: the same model and numbers on the same device, run
eagerly, compiled or replayed from a CUDA graph; the studies use, per family and query size, the best
mode measured (harness/analysis/runs.py: best_modes) and say which.

>>> label = PathLabel.parse("dhe+cache@cuda+graphs/bf16")
>>> label.representation, label.backend, label.mode, label.precision
('dhe+cache', 'cuda', 'graphs', 'bf16')
>>> label.family, str(label.on("h200"))
('dhe+cache@cuda/bf16', 'dhe+cache@h200+graphs/bf16')
>>> str(PathLabel("table:int8", "cpu")), PathLabel.parse("table@cpu").numbers
('table:int8@cpu', 'table/fp32')
"""

from __future__ import annotations

from dataclasses import dataclass, replace

EAGER = "eager"
FP32 = "fp32"


@dataclass(frozen=True)
class PathLabel:
    representation: str  # the representation's label: name, `:<storage>`, `+cache`
    backend: str  # the backend, or the device a profile stands for (`h200`)
    mode: str = EAGER  # eager, compiled, compiled+graphs or graphs
    precision: str = FP32

    @classmethod
    def parse(cls, text: str) -> "PathLabel":
        representation, _, rest = text.partition("@")
        device, _, precision = rest.partition("/")
        backend, _, mode = device.partition("+")
        return cls(representation, backend, mode or EAGER, precision or FP32)

    def __str__(self) -> str:
        mode = "" if self.mode == EAGER else f"+{self.mode}"
        precision = "" if self.precision == FP32 else f"/{self.precision}"
        return f"{self.representation}@{self.backend}{mode}{precision}"

    @property
    def family(self) -> str:
        """The label without the execution mode: what the studies pick the best mode of."""
        return str(replace(self, mode=EAGER))

    @property
    def numbers(self) -> str:
        """What a path's accuracy depends on besides training: representation (storage included) and
        compute precision; not the device, nor how it executes."""
        return f"{self.representation}/{self.precision}"

    def on(self, device: str) -> "PathLabel":
        """The same path on another device (a profile's stand-in)."""
        return replace(self, backend=device)
