"""This machine's CPU and memory, from /proc and sysconf: no framework is imported to learn them."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; the logical count where that is absent."""
    cores, phys = set(), "0"
    for line in _cpuinfo().splitlines():
        if line.startswith("physical id"):
            phys = line.split(":", 1)[1].strip()
        elif line.startswith("core id"):
            cores.add((phys, line.split(":", 1)[1].strip()))
    return len(cores) or (os.cpu_count() or 1)


def host_memory_bytes() -> int:
    """Physical memory of this machine (the CPU backend's capacity)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
