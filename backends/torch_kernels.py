"""The microbenchmark kernels behind a device's measured peaks, for torch devices (cpu, cuda, xla).

Each kernel is a callable that launches one unit of work plus the work it does (bytes or FLOPs); the
harness times them with its own loop and the adapter's synchronize (harness/pipeline/peaks.py).
"""

from __future__ import annotations

import functools
import time
from typing import Callable

Kernel = tuple[Callable[[], object], float, str]  # (launch, work per call, unit: "bytes" | "flops")


def torch_peak_kernels(device: str, memory_bytes: int, size_scale: float = 1.0,
                       precisions: tuple[str, ...] = ("fp32",)) -> dict[str, Kernel]:
    """copy (streaming bandwidth), gather (random 256-byte rows: a table lookup), gather64 (64-byte rows),
    and a GEMM in each compute precision of `precisions` (gemm for fp32, gemm_bf16, gemm_fp16, gemm_tf32):
    a path's share of the GEMM peak is judged against the peak of the precision it computes in. Each GEMM
    is sized by a probe call so one call takes at most CALL_BUDGET_S (`gemm_side`)."""
    import torch

    # Sizes well beyond any cache yet a small share of the device: 256 MB buffers (or 1/16 of memory).
    buffer_bytes = int(min(256 << 20, memory_bytes // 16) * size_scale) or (1 << 20)
    n = max(1 << 16, buffer_bytes // 4)
    source = torch.rand(n, device=device)
    target = torch.empty_like(source)

    row_floats = 64  # 256-byte rows, the width of a dim-64 fp32 embedding row
    rows = max(1024, n // row_floats)
    table = source[: rows * row_floats].view(rows, row_floats)
    lookups = max(1024, rows // 8)
    index = torch.randint(0, rows, (lookups,), device=device)
    gathered = torch.empty(lookups, row_floats, device=device)

    # The same gather at one 64-byte cache line per row (a dim-16 fp32 row, Kaggle's): a random row
    # costs a DRAM access whatever its width, so narrow rows reach fewer bytes/s; paths with such rows
    # are judged against this ceiling too (docs/performance.md).
    line_floats = 16
    line_rows = max(1024, n // line_floats)
    line_table = source[: line_rows * line_floats].view(line_rows, line_floats)
    line_index = torch.randint(0, line_rows, (max(1024, line_rows // 8),), device=device)
    line_gathered = torch.empty(line_index.numel(), line_floats, device=device)
    gather: Callable[[], object] = functools.partial(torch.index_select, table, 0, index, out=gathered)
    gather64: Callable[[], object] = functools.partial(torch.index_select, line_table, 0, line_index,
                                                       out=line_gathered)
    if device == "cpu":
        gather, gather64 = _fastest_gather(torch, table, index, gather), _fastest_gather(torch, line_table,
                                                                                        line_index, gather64)

    # Only the GEMMs asked for: a run measures its own precision's roof, never every precision the device
    # has (an emulated bf16 2048^2 GEMM takes tens of seconds a call on an AVX2-only CPU).
    kernels: dict[str, Kernel] = {
        # Read one buffer, write the other.
        "copy": (lambda: target.copy_(source), 2.0 * n * 4, "bytes"),
        # Rows read + written; the index read is small beside them.
        "gather": (gather, 2.0 * lookups * row_floats * 4, "bytes"),
        "gather64": (gather64, 2.0 * line_index.numel() * line_floats * 4, "bytes"),
    }
    largest = MAX_SIDE if size_scale >= 1 else MIN_SIDE
    # On a CPU, torch.mm and F.linear (what an MLP layer runs) can dispatch differently: with oneDNN capped
    # at AVX2, a bf16 mm ran at 1-3 GFLOP/s and a bf16 linear at 20-35, so the faster of the two is the
    # roof (else every bf16 size reads "above the peak"); so is oneDNN's fused linear in fp32 and bf16, which
    # the workload runs there (harness/workload/dlrm.py). On cuda all are cuBLAS.
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    ops: dict[str, tuple] = {p: (_plain_mm,) for p in dtypes}
    if device == "cpu":
        onednn = (_onednn_linear,) if torch.backends.mkldnn.is_available() else ()
        ops = {p: (_plain_mm, _linear, *(onednn if p != "fp16" else ())) for p in dtypes}
    gemms: dict[str, tuple] = {p: (dtype, ops[p]) for p, dtype in dtypes.items()}
    if device.startswith("cuda"):
        gemms = {"fp32": (torch.float32, (_fp32_mm,)), "tf32": (torch.float32, (_tf32_mm,)),
                 "bf16": (torch.bfloat16, (_plain_mm,)), "fp16": (torch.float16, (_plain_mm,))}
    for precision in precisions:
        if precision not in gemms:
            continue
        dtype, candidates = gemms[precision]
        mm = candidates[0] if len(candidates) == 1 else min(candidates, key=lambda op: min(
            # the best of three calls each: one call can be unlucky
            _probe(functools.partial(_gemm_call, torch, device, dtype, op), MIN_SIDE, time.perf_counter)
            for _ in range(3)))
        # True fp32 even when a tf32 path set TF32 matmuls on for its run (the peak is cached per device).
        side = gemm_side(functools.partial(_gemm_call, torch, device, dtype, mm), largest)
        launch, _ = _gemm_call(torch, device, dtype, mm, side)
        kernels["gemm" if precision == "fp32" else f"gemm_{precision}"] = (launch, 2.0 * side**3, "flops")
    return kernels


MIN_SIDE, PROBE_SIDE, MAX_SIDE = 256, 512, 2048
CALL_BUDGET_S = 0.05  # one timed GEMM call at most: a kernel is then timed in seconds on any device


def gemm_side(make: Callable[[int], tuple[Callable[[], object], Callable[[object], None]]], largest: int,
              budget_s: float = CALL_BUDGET_S, clock: Callable[[], float] = time.perf_counter) -> int:
    """The GEMM side whose call fits `budget_s` (about: the time scales with side^3), rounded down to a
    multiple of 128, within [MIN_SIDE, largest]. Probed at MIN_SIDE first (after a warm call), so a slow
    (emulated) precision spends milliseconds finding out; again at PROBE_SIDE only where that takes under
    an eighth of the budget (a small GEMM's rate understates a fast device's).

    >>> def fake(side):
    ...     return (lambda: side), (lambda out: None)
    >>> slow = iter([0.0, 0.034])  # 1 GFLOP/s: a 256^2 GEMM takes 34 ms
    >>> gemm_side(fake, 2048, clock=lambda: next(slow))
    256
    >>> fast = iter([0.0, 0.001, 0.0, 0.008])  # 256^2 in 1 ms, then 512^2 in 8 ms
    >>> gemm_side(fake, 2048, clock=lambda: next(fast))
    896
    """
    probe, seconds = MIN_SIDE, _probe(make, MIN_SIDE, clock)
    if seconds < budget_s / 8 and largest >= PROBE_SIDE:
        probe, seconds = PROBE_SIDE, _probe(make, PROBE_SIDE, clock)
    side = int(probe * (budget_s / max(seconds, 1e-9)) ** (1 / 3)) // 128 * 128
    return max(MIN_SIDE, min(largest, side))


def _fastest_gather(torch, rows, index, index_select: Callable[[], object]) -> Callable[[], object]:
    """The faster of index_select and embedding_bag (one id a bag) over the same rows, best of three warm
    calls each: FBGEMM's bag kernel prefetches, and gathered random 64-byte rows of a 256 MB table at 16.3
    GB/s against index_select's 8.1 on 2 EPYC cores; with index_select as the roof a table lookup read 130 %
    of it. The roof is what the best of them reaches."""
    offsets = torch.arange(index.numel())
    bag: Callable[[], object] = functools.partial(torch.nn.functional.embedding_bag, index, rows, offsets,
                                                  mode="sum")
    candidates: list[Callable[[], object]] = [index_select, bag]
    return min(candidates, key=lambda call: _best_seconds(call))


def _best_seconds(call: Callable[[], object], warm: int = 2, timed: int = 3) -> float:
    """The shortest of `timed` synchronous (CPU) calls after `warm` (an output's first allocation)."""
    for _ in range(warm):
        call()
    best = float("inf")
    for _ in range(timed):
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best


def _probe(make: Callable[[int], tuple[Callable[[], object], Callable[[object], None]]], side: int,
           clock: Callable[[], float]) -> float:
    """Seconds of one side x side GEMM call, after a warm one (allocation, the library's first call)."""
    launch, wait = make(side)
    wait(launch())
    t0 = clock()
    wait(launch())
    return clock() - t0


def _gemm_call(torch, device: str, dtype, mm, side: int):
    """A side x side GEMM's launch in `dtype`, and how to wait for its result on any device (reading one
    element back finishes the work on cuda and xla alike)."""
    a = torch.rand(side, side, device=device).to(dtype)
    b = torch.rand(side, side, device=device).to(dtype)
    c = torch.empty_like(a)
    return functools.partial(mm, a, b, c), lambda out: out.view(-1)[0].item()


def _plain_mm(a, b, c):
    import torch

    return torch.mm(a, b, out=c)


def _linear(a, b, c):
    """a @ b^T through F.linear, an MLP layer's op (b is square: the same work as a @ b)."""
    import torch

    return torch.nn.functional.linear(a, b)


def _onednn_linear(a, b, c):
    """a @ b^T through oneDNN's fused linear, which the workload's MLPs and DHE's fp32 decoders run on CPUs
    (harness/workload/onednn.py): faster than aten's fp32 GEMM on some CPUs (1.45x at the Kaggle MLPs'
    shapes on an EPYC), so a roof without it would read below what the paths reach."""
    from harness.workload import onednn

    return onednn.linear(a, b, None)


def _tf32_mm(a, b, c, allow: bool = True):
    import torch

    matmul = torch.backends.cuda.matmul
    before, matmul.allow_tf32 = matmul.allow_tf32, allow
    try:
        return torch.mm(a, b, out=c)
    finally:
        matmul.allow_tf32 = before


def _fp32_mm(a, b, c):
    return _tf32_mm(a, b, c, allow=False)
