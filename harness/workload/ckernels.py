"""Small C kernels for the CPU hot spots torch has no fused op for, compiled on first use.

A kernel is C source with plain pointer arguments, built with the system's C compiler (`$CC`, else cc or
gcc; -O3, no -march, so one build runs on any machine of the architecture; a kernel may add AVX2 clones
with `target_clones`, chosen at load time) into `$MPREC_KERNEL_DIR`
(default ~/.cache/mprec-harness), keyed by a hash of its source, and loaded with ctypes, whose calls
release the GIL so spans of work can run on several threads. Where no compiler works, `load` says why and
callers keep their torch path, which computes the same thing (tests check both).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import torch

log = logging.getLogger(__name__)

# -fno-trapping-math lets compares become vector masks (results are unchanged: no NaNs arise); no
# -ffast-math, which could reassociate the exact float64 arithmetic the DHE kernel relies on, and
# -ffp-contract=off: a kernel built for FMA fuses only where its source says so (a fused multiply-add
# rounds once, which changes results' last bits wherever an intermediate was not exact).
_FLAGS = ["-O3", "-fno-trapping-math", "-ffp-contract=off", "-shared", "-fPIC"]
_loaded: dict[str, ctypes.CDLL | str] = {}  # name -> library, or why it is unavailable
_pools: dict[str, ThreadPoolExecutor] = {}


def _compile(name: str, source: str, extra: tuple[str, ...] = ()) -> ctypes.CDLL:
    flags = [*_FLAGS, *extra]
    digest = hashlib.sha256((source + " ".join(flags) + platform.machine()).encode()).hexdigest()[:16]
    folder = Path(os.environ.get("MPREC_KERNEL_DIR") or Path.home() / ".cache" / "mprec-harness")
    target = folder / f"{name}_{digest}.so"
    if not target.is_file():
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not compiler:
            raise RuntimeError("no C compiler (set CC or install gcc)")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src = Path(tmp) / f"{name}.c"
            src.write_text(source)
            built = Path(tmp) / target.name
            proc = subprocess.run([compiler, *flags, "-o", str(built), str(src)],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-500:]}")
            built.replace(target)  # atomic: concurrent workers load a whole library or build their own
    return ctypes.CDLL(str(target))


def load(name: str, source: str, signatures: dict[str, list],
         optional_flags: tuple[str, ...] = ()) -> tuple[ctypes.CDLL | None, str]:
    """(library, "compiled C kernel") or (None, why not); built once per process, cached on disk.
    `optional_flags` (-fopenmp) are tried first; where the compiler refuses them the kernel is built
    without (its source must build either way)."""
    if name not in _loaded:
        try:
            lib = _compile_with(name, source, optional_flags)
            for function, argtypes in signatures.items():
                getattr(lib, function).argtypes = argtypes
            _loaded[name] = lib
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
            _loaded[name] = f"C kernel {name} unavailable ({exc})"
            log.info("%s; using the torch implementation", _loaded[name])
    entry = _loaded[name]
    return (entry, "compiled C kernel") if isinstance(entry, ctypes.CDLL) else (None, entry)


def _compile_with(name: str, source: str, optional_flags: tuple[str, ...]) -> ctypes.CDLL:
    if optional_flags:
        try:
            return _compile(name, source, optional_flags)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            log.info("C kernel %s: %s refused (%s); building it without", name, " ".join(optional_flags), exc)
    return _compile(name, source)


def forget(name: str) -> None:
    """Drop what `load` decided (tests: simulate a machine without a compiler, then restore)."""
    _loaded.pop(name, None)


def spans(weights: list[int], parts: int) -> list[tuple[int, int]]:
    """Split items 0..n-1 into <= parts contiguous spans of about equal total weight."""
    total, start, acc = sum(weights), 0, 0
    out: list[tuple[int, int]] = []
    for i, w in enumerate(weights):
        acc += w
        if acc >= total * (len(out) + 1) / parts and i + 1 < len(weights):
            out.append((start, i + 1))
            start = i + 1
    out.append((start, len(weights)))
    return [s for s in out if s[0] < s[1]]


def threads_for(work: int, minimum: int) -> int:
    """torch's thread count where there is at least `minimum` work, else 1 (a thread's start costs more)."""
    return max(1, torch.get_num_threads()) if work >= minimum else 1


def run_parallel(calls: Sequence[Callable[[], object]]) -> None:
    """Run kernel calls on a persistent pool, this thread taking the first; ctypes releases the GIL."""
    if len(calls) == 1:
        calls[0]()
        return
    pool = _pools.get("pool")
    if pool is None or pool._max_workers < len(calls) - 1:
        pool = _pools["pool"] = ThreadPoolExecutor(len(calls) - 1, thread_name_prefix="mprec-kernel")
    futures = [pool.submit(c) for c in calls[1:]]
    calls[0]()
    for future in futures:
        future.result()
