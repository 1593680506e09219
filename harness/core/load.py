"""How busy this machine is while a phase is timed: other processes' CPU time on the run's cores, steal,
load average and CPU frequency, read from /proc and /sys (no framework, no psutil).

A `LoadProbe` is started when a timed phase begins and stopped when it ends; its `LoadReading` says how
many cores' worth of CPU time *other* processes used on the cores this process may run on (machine-wide
busy time on those cores, from /proc/stat, less this process tree's own CPU time), how much the hypervisor
stole, the 1-minute load average before and after, and the mean clock frequency. What the machine does
not report is `None` and named by `unmeasurable()` ("not measurable here"), never a zero.

/proc/stat counts in clock ticks (10 ms at USER_HZ 100), so a reading of a short phase is coarse: each
reading carries its resolution in cores (`resolution_cores`), which the stability rules allow for.

>>> probe = LoadProbe(); probe.start(); reading = probe.stop()
>>> reading.cores >= 1 and reading.seconds >= 0
True
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from harness.core.processes import proc_stat

TICK_S = 1.0 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def run_cores() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity), or every CPU where affinity is not known."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return tuple(range(os.cpu_count() or 1))


def cpu_list(text: str) -> set[int]:
    """The CPUs of a kernel CPU list.

    >>> sorted(cpu_list("0-2,8"))
    [0, 1, 2, 8]
    """
    out: set[int] = set()
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            out.update(range(int(low), int(high or low) + 1))
    return out


def watched_cores(cores: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The cores whose use by others disturbs the run: the CPUs it was given (`cores`, its affinity by
    default) and their SMT siblings, which share a core's units (`topology/thread_siblings_list`; the
    given CPUs alone where the kernel does not say)."""
    given = run_cores() if cores is None else cores
    watched = set(given)
    for c in given:
        siblings = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
        try:
            watched |= cpu_list(siblings.read_text())
        except (OSError, ValueError):
            continue
    return tuple(sorted(watched))


def interference(reading: "LoadReading", max_other_cores: float) -> str | None:
    """The interference rule, the one both the stability judge and the doctor apply: other processes
    used more than `max_other_cores` (beyond the reading's tick resolution) of the cores the run was
    given and their SMT siblings. No allowance for a core the run's threads leave idle: an unpinned run
    shares every core of its affinity with whatever runs there (two 1-CPU jobs on a 2-core node disturb
    each other: caches, memory bandwidth, migrations); to share a machine, pin each run to its own cores
    (taskset, a Slurm cpuset), and the others' cores are not read. None: no interference, or unknown."""
    if reading.other_cores is None:
        return None
    if reading.other_cores > max_other_cores + reading.resolution_cores:
        return f"other processes used {reading.other_cores:.2f} cores"
    return None


def cpu_ticks(cores: tuple[int, ...]) -> tuple[float, float] | None:
    """(busy, steal) seconds summed over `cores` since boot, from /proc/stat; None where it is unreadable.

    Busy is user + nice + system + irq + softirq (guest time is already inside user); idle and iowait
    are not busy; steal is time the hypervisor gave another guest."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    busy = steal = 0.0
    found = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name not in wanted:
            continue
        fields = [int(v) for v in rest.split()]
        fields += [0] * (8 - len(fields))
        user, nice, system, _idle, _iowait, irq, softirq, stolen = fields[:8]
        busy += user + nice + system + irq + softirq
        steal += stolen
        found += 1
    return (busy * TICK_S, steal * TICK_S) if found else None


def _descendants(pid: int) -> list[int]:
    """Live child processes of `pid`, recursively (/proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                children = [int(c) for c in task.read_text().split()]
            except (OSError, ValueError):
                continue
            out += children
            todo += children
    return out


def _process_cpu_s(pid: int) -> float:
    """utime + stime of a live process (from /proc/<pid>/stat); 0 where it has gone."""
    stat = proc_stat(pid)
    return stat.cpu_ticks * TICK_S if stat is not None else 0.0


def own_cpu_s() -> float:
    """CPU seconds of this process (every thread, exact) and its children: the waited-for ones
    (os.times) and the live ones (/proc), so a child that ends during a phase is counted once."""
    times = os.times()
    children = sum(_process_cpu_s(pid) for pid in _descendants(os.getpid()))
    return time.process_time() + times.children_user + times.children_system + children


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_mhz(cores: tuple[int, ...]) -> float | None:
    """Mean current clock of `cores`: cpufreq's scaling_cur_freq where the kernel has it, else the
    `cpu MHz` lines of /proc/cpuinfo (a VM's is often the nominal clock); None where neither exists."""
    freqs = []
    for c in cores:
        try:
            freqs.append(
                int(Path(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq").read_text()) / 1e3
            )
        except (OSError, ValueError):
            break
    if len(freqs) == len(cores) and freqs:
        return sum(freqs) / len(freqs)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    by_cpu, current = {}, None
    for line in text.splitlines():
        if line.startswith("processor"):
            current = int(line.split(":", 1)[1])
        elif line.startswith("cpu MHz") and current is not None:
            by_cpu[current] = float(line.split(":", 1)[1])
    values = [by_cpu[c] for c in cores if c in by_cpu]
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class LoadReading:
    """What the machine did besides this process during one timed phase."""

    seconds: float  # the phase's wall time
    cores: int  # the cores this process may run on
    other_cores: float | None  # other processes' CPU time on those cores / wall time (cores' worth)
    steal_cores: float | None  # time stolen by the hypervisor on those cores / wall time
    load_before: float | None  # 1-minute load average when the phase began...
    load_after: float | None  # ...and when it ended
    mhz: float | None  # mean clock of those cores at the end of the phase
    resolution_cores: float  # how coarse other_cores and steal_cores are (tick counts over a short phase)

    def metrics(self) -> dict[str, float]:
        """The measurable figures as per-size metrics (nothing for what could not be measured)."""
        named = {"interference_other_cores": self.other_cores, "interference_steal_cores": self.steal_cores,
                 "load_avg_before": self.load_before, "load_avg_after": self.load_after, "cpu_mhz": self.mhz}
        return {k: float(v) for k, v in named.items() if v is not None}

    def unmeasurable(self) -> list[str]:
        """What this machine does not report (said as "not measurable here", never recorded as zero)."""
        named = {"other processes' CPU time (/proc/stat)": self.other_cores,
                 "steal time (/proc/stat)": self.steal_cores, "load average": self.load_before,
                 "CPU frequency (cpufreq, /proc/cpuinfo)": self.mhz}
        return [name for name, value in named.items() if value is None]


@dataclass
class _Snapshot:
    wall: float
    ticks: tuple[float, float] | None
    own: float
    load: float | None


class LoadProbe:
    """Brackets one phase: `start()` when it begins, `stop()` when it ends (a few /proc reads each)."""

    def __init__(self, cores: tuple[int, ...] | None = None) -> None:
        self.cores = cores or watched_cores()
        self._start: _Snapshot | None = None

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(time.monotonic(), cpu_ticks(self.cores), own_cpu_s(), load_average())

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> LoadReading:
        if self._start is None:
            raise RuntimeError("LoadProbe.stop() before start()")
        begin, end = self._start, self._snapshot()
        wall = max(end.wall - begin.wall, 1e-9)
        other = steal = None
        if begin.ticks is not None and end.ticks is not None:
            busy = end.ticks[0] - begin.ticks[0]
            other = max(0.0, busy - (end.own - begin.own)) / wall
            steal = max(0.0, end.ticks[1] - begin.ticks[1]) / wall
        # Each of the two readings truncates every core's counter by up to one tick.
        resolution = 2 * len(self.cores) * TICK_S / wall
        return LoadReading(wall, len(self.cores), other, steal, begin.load, end.load, cpu_mhz(self.cores),
                           resolution)


class PlantedProbe(LoadProbe):
    """A real probe whose reading of other processes' CPU is replaced by `other_cores`: what
    `debug.interference` plants, so tests and demonstrations see a flagged size on a quiet machine."""

    def __init__(self, other_cores: float, cores: tuple[int, ...] | None = None) -> None:
        super().__init__(cores)
        self.other_cores = other_cores

    def stop(self) -> LoadReading:
        return replace(super().stop(), other_cores=self.other_cores)
