"""`python -m harness.doctor [overrides]`: a few seconds' look at this machine before measuring on it.

It says, each with what to do: the cores and threads the run will use, other busy processes and their CPU
share (sampled over two seconds), the load average, steal time, the frequency governor and SMT where
the kernel shows them, and whether the peak cache under `tracking.results_dir` holds peaks measured by
another library version or an older kernel set (unused by runs). It takes the run's own overrides
(`python -m harness.doctor backend.num_threads=1`), so it judges the run you are about to start, by the
same thresholds (`measure.stability`). The first job of a sweep prints its one-line verdict. Exit status:
0 when nothing was found, 1 otherwise (so `python -m harness.doctor && python -m harness -m ...` waits
for a quiet machine's say-so).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from harness.core import processes, trust
from harness.core.host import allocated_cpus, physical_cores
from harness.core.load import TICK_S, LoadProbe, LoadReading, interference, run_cores
from harness.pipeline.peaks import KERNELS_VERSION, REFUSED_FILE, read_cache

SAMPLE_S = 2.0
BUSY_SHARE = 0.05  # a process using less than 5 % of a core is not named


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    todo: str = ""

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FIX '} {self.what}" + (
            f"\n       -> {self.todo}" if self.todo else ""
        )


def _process_times() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds) of every process /proc shows."""
    out = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = processes.proc_stat(entry.name)
        if stat is not None:
            out[int(entry.name)] = (stat.name, stat.cpu_ticks * TICK_S)
    return out


def busy_processes(seconds: float) -> tuple[list[tuple[int, str, float]], LoadReading]:
    """Other processes' CPU share over `seconds` (cores' worth, busiest first), and the machine's reading."""
    probe = LoadProbe()
    before = _process_times()
    probe.start()
    time.sleep(seconds)
    reading = probe.stop()
    after = _process_times()
    busy = [(pid, name, (cpu - before[pid][1]) / reading.seconds) for pid, (name, cpu) in after.items()
            if pid in before and pid != os.getpid()]
    return sorted((b for b in busy if b[2] >= BUSY_SHARE), key=lambda b: -b[2]), reading


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cores_and_threads(threads: int) -> Finding:
    cores, physical = len(run_cores()), physical_cores()
    smt = _read("/sys/devices/system/cpu/smt/active")
    where = f"{cores} cores available to the run ({physical} physical{', SMT on' if smt == '1' else ''})"
    if threads > cores:
        return Finding(False, f"{where}; the run would use {threads} threads",
                       f"oversubscribed: set backend.num_threads to at most {cores}")
    if smt == "1" and threads > physical:
        return Finding(False, f"{where}; the run would use {threads} threads, more than the physical cores",
                       f"set backend.num_threads={physical}: two threads on one core share its units")
    return Finding(True, f"{where}; the run will use {threads} threads")


def other_processes(busy: list[tuple[int, str, float]], reading: LoadReading, threads: int,
                    max_other: float) -> Finding:
    if reading.other_cores is None:
        return Finding(True, "other processes' CPU time: not measurable here (no /proc/stat)")
    named = ", ".join(f"{name} (pid {pid}) {share:.2f}" for pid, name, share in busy[:5]) or "none named"
    what = (f"other processes used {reading.other_cores:.2f} of the run's {reading.cores} cores over "
            f"{reading.seconds:.0f} s: {named}")
    if interference(reading, max_other) is None:  # the stability judge's own rule
        return Finding(True, what)
    pin = trust.pin_remedy(_threads_left(reading, threads))
    return Finding(False, what, "close them (or wait for them) before measuring: the harness would flag "
                                f"every size they overlap; or {pin}")


def _threads_left(reading: LoadReading, threads: int) -> int:
    """The threads a pinned run could keep on the cores the others leave (at least one)."""
    busy = math.ceil((reading.other_cores or 0.0) - 0.05)
    return max(1, min(threads, reading.cores - busy))


def load_and_steal(reading: LoadReading, max_steal: float) -> list[Finding]:
    """The load average, and the hypervisor's steal. The load average counts every core of the machine
    and lags by a minute: where the run's own cores were sampled directly (`other_processes`) it is
    context, never the verdict (a run pinned to quiet cores of a busy host is fine; a burner that ended a
    minute ago still shows); only where they could not be sampled does it judge."""
    out = []
    load = reading.load_after
    if load is None:
        out.append(Finding(True, "load average: not measurable here"))
    elif reading.other_cores is not None:
        out.append(Finding(True, f"1-minute load average {load:.2f} on the machine's {os.cpu_count()} cores "
                                 "(context: it counts every core and lags a minute; the sample of the run's "
                                 "own cores above is the verdict)"))
    else:
        busy = load > reading.cores
        out.append(Finding(not busy, f"1-minute load average {load:.2f} on {reading.cores} cores (the run's "
                                     "cores could not be sampled directly)",
                           "more runnable threads than cores: something else is busy (the load average "
                           "lags by a minute: check again)" if busy else ""))
    if reading.steal_cores is None:
        out.append(Finding(True, "steal time: not reported by this kernel (not measurable here)"))
    else:
        stolen = reading.steal_cores > max_steal + reading.resolution_cores
        out.append(
            Finding(
                not stolen,
                f"steal: the hypervisor took {reading.steal_cores:.2f} cores",
                "this VM shares its host: figures will vary with the neighbours; prefer a dedicated "
                "instance, and compare only runs measured side by side"
                if stolen
                else "",
            )
        )
    return out


def governor() -> Finding:
    read = (_read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor") for c in run_cores())
    values = {v for v in read if v is not None}
    if not values:
        return Finding(True, "frequency governor: not readable here (a VM, or no cpufreq driver): the host "
                             "sets the clock")
    if values == {"performance"}:
        return Finding(True, "frequency governor: performance")
    return Finding(False, f"frequency governor: {', '.join(sorted(values))}",
                   "the clock follows the load, so the first sizes run slower: sudo cpupower frequency-set "
                   "-g performance (and back afterwards)")


def peak_cache(results_dir: str) -> Finding:
    try:
        cache = read_cache(results_dir)
    except (OSError, ValueError) as exc:
        return Finding(False, f"peak cache in {results_dir} is unreadable ({exc})",
                       "remove it: it is measured again")
    if not cache:
        return _no_peak_cache(results_dir)
    old = [k for k in cache if not k.endswith(f"kernels={KERNELS_VERSION}")]
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = None
    other = [k for k, v in cache.items() if k not in old and torch and
             v.get("libraries", {}).get("torch", torch) != torch]
    path = Path(results_dir) / "device_peaks.json"
    if old or other:
        what = (f"peak cache {path}: {len(old)} entries measured by an older kernel set (unused: runs "
                f"measure kernels={KERNELS_VERSION})"
                + (f", {len(other)} measured with another torch than {torch}" if other else ""))
        return Finding(False, what,
                       f"remove {path}: the next run measures the peaks again, under the load check")
    return Finding(True, f"peak cache {path}: {len(cache)} entries, measured quietly with this torch")


def _no_peak_cache(results_dir: str) -> Finding:
    """No peak cache: never measured (the first run measures it), or every measurement so far was under
    load and so not kept; then why, and how to get one."""
    try:
        refused = read_cache(results_dir, REFUSED_FILE)
    except (OSError, ValueError):
        refused = {}  # only the explanation is lost: the finding below stands without it
    if not refused:
        return Finding(True, f"no peak cache in {results_dir} yet: the first run measures the device's peaks "
                             "(a few seconds) and keeps them if the machine is quiet")
    last = max(refused.values(), key=lambda entry: entry.get("at", ""))
    why = "; ".join(last.get("reasons", [])) or "interference"
    return Finding(False, f"no peak cache in {results_dir}: the peaks measured so far were not kept, "
                          f"measured under load ({why}, at {last.get('at', '?')}): a peak measured so would "
                          "understate the roof every path is judged against",
                   "wait until this check says quiet (stop what it names above), then run python -m harness "
                   "once: it measures the peaks in a few seconds and keeps them")


def left_running() -> list[Finding]:
    """What the project started that nothing will stop (harness/core/processes.py), each by name, and the
    daemon sets a user started and still owns (not a fault: they are load all the same)."""
    items = processes.leftovers()
    found = [Finding(False, f"left running: {processes.describe(item)}",
                     "python -m harness.leftovers reap stops it (by identity: nothing else is touched)")
             for item in items]
    leftover_tokens = {item.daemon_set.token for item in items if item.daemon_set}
    for entry in processes.daemon_sets():
        if entry.token not in leftover_tokens:
            found.append(Finding(True, f"{entry.what} in {entry.folder} runs (started by you; it loads this "
                                       f"machine: {' '.join(entry.stop_command)} stops it)"))
    return found or [Finding(True, "nothing the harness started is left running")]


def examine(threads: int, results_dir: str, max_other: float, max_steal: float,
            seconds: float = SAMPLE_S) -> list[Finding]:
    busy, reading = busy_processes(seconds)
    return [cores_and_threads(threads), other_processes(busy, reading, threads, max_other),
            *load_and_steal(reading, max_steal), governor(), *left_running(), peak_cache(results_dir)]


def verdict(findings: list[Finding]) -> str:
    """One line: quiet, or how many findings and the first of them."""
    bad = [f for f in findings if not f.ok]
    if not bad:
        return "doctor: quiet (" + "; ".join(f.what for f in findings[:2]) + ")"
    return (f"doctor: {len(bad)} finding{'s' if len(bad) > 1 else ''} before measuring: "
            + "; ".join(f.what + (f" -> {f.todo}" if f.todo else "") for f in bad))


def threads_of(run) -> int:
    """Host threads the run's timed loop will use: the CPU adapter's intra-op threads (torch's default is
    one per physical core), else one feeding a device (`auto` resolved as the run resolves it)."""
    from harness.pipeline.config import resolved_backend

    backend = resolved_backend(run)
    if backend.name == "cpu":
        return backend.num_threads or allocated_cpus() or physical_cores()
    return 1


def check(run, seconds: float = SAMPLE_S) -> list[Finding]:
    """The findings for a validated RunConfig (harness/pipeline/config.py)."""
    rules = run.measure.stability
    return examine(threads_of(run), run.tracking.results_dir, rules.max_other_cores, rules.max_steal_cores,
                   seconds)


def main(argv: list[str]) -> int:
    from harness.core.conf import compose
    from harness.core.errors import ConfigError
    from harness.core.overrides import refuse_unknown_keys
    from harness.pipeline.config import load_config

    refuse_unknown_keys(argv, "config")
    try:
        run = load_config(compose(argv))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    findings = check(run)
    for f in findings:
        print(f.line())
    print(verdict(findings))
    return 0 if all(f.ok for f in findings) else 1
