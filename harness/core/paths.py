"""A path's label: what was measured, in one readable string used everywhere (MLflow, analysis, serving).

    <representation>[<variant>][:<storage>][+cache]@<backend>[+<mode>][/<precision>]

`table@cpu`, `table:int8@cpu/bf16`, `dhe+cache@cuda+graphs/tf32`, `dhe[k=512]@cpu`. The defaults (fp32
rows, eager execution, fp32 compute, the representation's and the model's settings of conf/) add nothing,
so a label reads as it did before these were choices; a setting that differs from its default is named in
the variant (`variant`), so runs that measured different models are different paths. The *family*
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
>>> [PathLabel.parse(p).representation_name for p in ("dhe[k=512]+cache@cpu/bf16", "table:int8@cpu")]
['dhe', 'table']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

EAGER = "eager"
FP32 = "fp32"


def variant(settings: dict, defaults: dict) -> str:
    """`[key=value,...]` for every setting that differs from its default (nested keys dotted, lists as
    `16-8`), in the defaults' order; "" when none does.

    >>> variant({"k": 512, "decoder": [512, 64], "m": 10, "cache": {"rows": 8}},
    ...         {"k": 1024, "decoder": [1024, 128], "m": 10, "cache": {"rows": 0}})
    '[k=512,decoder=512-64,cache.rows=8]'
    """
    parts = [f"{key}={_text(value)}" for key, value in _differences(settings, defaults)]
    return f"[{','.join(parts)}]" if parts else ""


def _differences(settings: dict, defaults: dict, prefix: str = "") -> list:
    out = []
    for key in [*defaults, *(k for k in settings if k not in defaults)]:
        value, default = settings.get(key), defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            out += _differences(value, default, f"{prefix}{key}.")
        elif value != default:
            out.append((f"{prefix}{key}", value))
    return out


def _text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


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
    def representation_name(self) -> str:
        """The representation's registry name, without variant, storage or cache: `dhe` of
        `dhe[k=512]+cache`, `table` of `table:int8`."""
        return re.split(r"[\[:+]", self.representation, maxsplit=1)[0]

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
