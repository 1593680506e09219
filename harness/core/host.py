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


# The instruction-set flags that decide how fast reduced-precision compute runs on a CPU.
NUMERIC_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "amx_int8")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, from /proc/cpuinfo's first `flags` line (empty where there is none)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def numeric_flags() -> list[str]:
    """The flags of NUMERIC_FLAGS this CPU has: recorded with every figure so runs compare fairly."""
    flags = cpu_flags()
    return [f for f in NUMERIC_FLAGS if f in flags]


def native_cpu_dtype(precision: str) -> str:
    """How this CPU computes `precision`: `native (<flag>)` where an instruction does it, else `emulated`
    (torch converts to fp32 and back around each kernel: correct, but slower than fp32)."""
    flags = cpu_flags()
    wanted = {"bf16": ("amx_bf16", "avx512_bf16"), "fp16": ("amx_fp16", "avx512_fp16")}.get(precision, ())
    have = [f for f in wanted if f in flags]
    return f"native ({have[0]})" if have else "emulated"


def physical_cores() -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; the logical count where that is absent."""
    cores, phys = set(), "0"
    for line in _cpuinfo().splitlines():
        if line.startswith("physical id"):
            phys = line.split(":", 1)[1].strip()
        elif line.startswith("core id"):
            cores.add((phys, line.split(":", 1)[1].strip()))
    return len(cores) or (os.cpu_count() or 1)


# Set by the Ray launcher (harness/app/launchers.py) in a job to the CPUs Ray assigned its task.
ALLOCATED_CPUS_ENV = "MPREC_ALLOCATED_CPUS"


def allocated_cpus(environ: dict[str, str] | None = None) -> int | None:
    """The CPUs a cluster gave this job, or None outside one: Slurm's --cpus-per-task (SLURM_CPUS_PER_TASK;
    else, in a job, SLURM_CPUS_ON_NODE: a whole node with --exclusive), or Ray's num_cpus for the task.
    Without cgroups a job's process sees every core of the node, so a thread count taken from the
    machine would oversubscribe the cores other jobs were given."""
    env = os.environ if environ is None else environ
    keys = [ALLOCATED_CPUS_ENV, "SLURM_CPUS_PER_TASK"]
    if "SLURM_JOB_ID" in env:
        keys.append("SLURM_CPUS_ON_NODE")
    for key in keys:
        value = env.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def host_memory_bytes() -> int:
    """Physical memory of this machine (the CPU backend's capacity)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
