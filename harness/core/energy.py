"""Energy over a timed phase, where the machine lets anyone read it: Linux powercap RAPL counters for the
CPU packages and their DRAM, and a device's own counter (NVML's total energy on NVIDIA GPUs, through the
adapter's `energy_joules`). Where nothing is readable the meter says why, once; it never reports zero.

RAPL counts microjoules in a register that wraps at `max_energy_range_uj` (every few minutes on a busy
server): a reading that went down wrapped once, and the delta adds the range. A package counter measures
the whole socket, other processes included: the figure is the machine's energy while the phase ran, which
is why it is recorded beside the interference reading, not instead of it.

>>> meter = EnergyMeter(RaplZones(Path("/nonexistent")), None)
>>> meter.available, meter.describe().split(" (")[0]
(False, 'not measurable here: no RAPL counters under /nonexistent')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Zone:
    """One RAPL counter: a package (`intel-rapl:0`) or its DRAM (`intel-rapl:0:1`, named `dram`)."""

    folder: Path
    name: str
    range_uj: int

    def read_uj(self) -> int | None:
        try:
            return int((self.folder / "energy_uj").read_text())
        except (OSError, ValueError):  # energy_uj is root-only on kernels since 2020 (CVE-2020-8694)
            return None


def wrapped_delta(before: int, after: int, range_uj: int) -> int:
    """Microjoules between two readings of a counter that wraps at `range_uj`.

    >>> wrapped_delta(100, 250, 1000), wrapped_delta(900, 50, 1000)
    (150, 150)
    """
    return after - before if after >= before else after + range_uj - before


class RaplZones:
    """The packages and their DRAM zones under a powercap tree (`root`): summed, they are the CPU's and its
    memory's energy. Core and uncore subzones are parts of their package and are not added again."""

    def __init__(self, root: Path = POWERCAP) -> None:
        self.root = root
        self.zones: list[Zone] = []
        self.why = ""
        if not root.is_dir():
            self.why = f"no RAPL counters under {root} (a VM, or no powercap driver)"
            return
        # `intel-rapl:*` only (AMD's RAPL driver uses that name too): `intel-rapl-mmio:0` is the same
        # package counted through MMIO, and would count it twice.
        for folder in sorted(root.glob("intel-rapl:*")):
            name = _read(folder / "name") or ""
            # A package, or a package's DRAM: not `psys` (a laptop's platform zone, which contains the
            # package), nor core and uncore (parts of their package).
            if (folder.name.count(":") == 1 and name.startswith("package")) or name == "dram":
                self.zones.append(Zone(folder, name, int(_read(folder / "max_energy_range_uj") or 0)))
        if not self.zones:
            self.why = f"no RAPL zones under {root}"
        elif any(z.read_uj() is None for z in self.zones):
            self.why, self.zones = "RAPL counters are not readable by this user (energy_uj is root-only)", []

    def read(self) -> list[int | None]:
        return [z.read_uj() for z in self.zones]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class EnergyMeter:
    """Brackets one phase: `start()`, then `stop()` -> joules (host RAPL zones plus the device's counter,
    whichever are readable), or None where none is."""

    def __init__(self, rapl: RaplZones, device_joules: Callable[[], float | None] | None) -> None:
        self.rapl = rapl
        self.device_joules = device_joules
        self.device_ok = device_joules is not None and device_joules() is not None
        self._start: tuple[list[int | None], float | None] | None = None

    @property
    def available(self) -> bool:
        return bool(self.rapl.zones) or self.device_ok

    def describe(self) -> str:
        """The counters summed (the run's tag `energy`), or why none could be read."""
        parts = [f"RAPL {z.name or z.folder.name}" for z in self.rapl.zones]
        if self.device_ok:
            parts.append("the device's counter (NVML total energy)")
        if parts:
            return " + ".join(parts)
        return f"not measurable here: {self.rapl.why}, no device counter"

    def _now(self) -> tuple[list[int | None], float | None]:
        return self.rapl.read(), (self.device_joules() if self.device_ok and self.device_joules else None)

    def start(self) -> None:
        if self.available:
            self._start = self._now()

    def stop(self) -> float | None:
        if self._start is None:
            return None
        (host_before, device_before), (host_after, device_after) = self._start, self._now()
        self._start = None
        joules = 0.0
        for zone, before, after in zip(self.rapl.zones, host_before, host_after):
            if before is None or after is None or (after < before and not zone.range_uj):
                return None  # a counter that stopped answering, or wrapped at an unknown range: no figure
            joules += wrapped_delta(before, after, zone.range_uj) / 1e6
        if device_before is not None and device_after is not None:
            joules += max(0.0, device_after - device_before)
        return joules
