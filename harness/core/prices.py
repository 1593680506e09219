"""What a device costs per hour, from a user-editable table (conf/prices.yaml): each entry with its source
and date, matched to a path's device by name or to its backend; a host CPU priced per core the path used.

The serving study and the mapping turn it into $ per million correct predictions (docs/paper.md):
`usd_per_hour / 3600 / correct predictions per second x 1e6`.

>>> table = [Price("H200", None, 5.408, "device", "AWS", "2024-12"),
...          Price(None, "cpu", 0.0425, "core", "AWS", "2026-12")]
>>> round(rate(table, "NVIDIA H200", "cuda", None), 3), round(rate(table, "AMD EPYC", "cpu", 2), 3)
(5.408, 0.085)
>>> rate(table, "Graphcore GC200", "ipu", None) is None   # no entry: no price, never a zero
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.core.conf import config_dir
from harness.core.errors import ConfigError

UNITS = ("device", "core")


@dataclass(frozen=True)
class Price:
    device: str | None  # matches a device name containing this (case-insensitive)
    backend: str | None  # ...or a path of this backend (host CPUs: `cpu`)
    usd_per_hour: float
    per: str  # device: the whole device; core: each core (thread) the path used
    source: str
    date: str


def shipped() -> Path:
    return config_dir() / "prices.yaml"


def load(path: str | Path | None) -> list[Price]:
    """The price table of `path` (None: the shipped conf/prices.yaml); a bad entry names its file and
    index."""
    file = Path(path) if path else shipped()
    key = "prices_file"
    if not file.is_file():
        raise ConfigError(key, f"{file} does not exist")
    loaded = yaml.safe_load(file.read_text()) or {}
    entries = loaded.get("prices") if isinstance(loaded, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(key, f"{file}: a list under `prices:` is needed")
    out = []
    for i, entry in enumerate(entries):
        where = f"{file}: prices[{i}]"
        if not isinstance(entry, dict) or not (entry.get("device") or entry.get("backend")):
            raise ConfigError(key, f"{where}: needs `device` (a name it matches) or `backend`")
        missing = [k for k in ("usd_per_hour", "per", "source", "date") if entry.get(k) in (None, "")]
        if missing:
            raise ConfigError(key, f"{where}: missing {', '.join(missing)} (a price says where it is from)")
        value = entry["usd_per_hour"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or not math.isfinite(value):
            raise ConfigError(key, f"{where}: usd_per_hour must be a positive number, got {value!r}")
        if entry["per"] not in UNITS:
            raise ConfigError(key, f"{where}: per must be one of {UNITS}, got {entry['per']!r}")
        device, backend = entry.get("device"), entry.get("backend")
        out.append(Price(None if device is None else str(device), None if backend is None else str(backend),
                         float(value), entry["per"], " ".join(str(entry["source"]).split()),
                         str(entry["date"])))
    return out


def entry_for(table: list[Price], device: str, backend: str) -> Price | None:
    """The first entry whose device name is part of `device`, else the first for `backend`."""
    for p in table:
        if p.device and p.device.lower() in (device or "").lower():
            return p
    return next((p for p in table if p.backend and p.backend == backend), None)


def rate(table: list[Price], device: str, backend: str, cores: float | None) -> float | None:
    """$/hour of a path's device; None when the table has no entry, or a per-core price lacks the cores."""
    p = entry_for(table, device, backend)
    if p is None:
        return None
    if p.per == "core":
        return p.usd_per_hour * cores if cores and cores > 0 and math.isfinite(cores) else None
    return p.usd_per_hour


def per_million(usd_per_hour: float | None, correct_per_s: float) -> float:
    """$ per million correct predictions at `correct_per_s`; NaN where either is unknown or zero."""
    if not usd_per_hour or not correct_per_s or correct_per_s != correct_per_s:
        return math.nan
    return usd_per_hour / 3600.0 / correct_per_s * 1e6
