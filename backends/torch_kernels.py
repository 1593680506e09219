"""The microbenchmark kernels behind a device's measured peaks, for torch devices (cpu, cuda, xla).

Each kernel is a callable that launches one unit of work plus the work it does (bytes or FLOPs); the
harness times them with its own loop and the adapter's synchronize (harness/pipeline/peaks.py).
"""

from __future__ import annotations

import functools
from typing import Callable

Kernel = tuple[Callable[[], object], float, str]  # (launch, work per call, unit: "bytes" | "flops")


def torch_peak_kernels(device: str, memory_bytes: int, size_scale: float = 1.0,
                       precisions: tuple[str, ...] = ("fp32",)) -> dict[str, Kernel]:
    """copy (streaming bandwidth), gather (random 256-byte rows: a table lookup), gather64 (64-byte rows),
    GEMM in fp32, and in each other compute precision of `precisions` (gemm_bf16, gemm_fp16, gemm_tf32):
    a path's share of the GEMM peak is judged against the peak of the precision it computes in."""
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

    side = 2048 if size_scale >= 1 else 256
    a = torch.rand(side, side, device=device)
    b = torch.rand(side, side, device=device)
    c = torch.empty(side, side, device=device)

    kernels = {
        # Read one buffer, write the other.
        "copy": (lambda: target.copy_(source), 2.0 * n * 4, "bytes"),
        # Rows read + written; the index read is small beside them.
        "gather": (lambda: torch.index_select(table, 0, index, out=gathered), 2.0 * lookups * row_floats * 4,
                   "bytes"),
        "gather64": (lambda: torch.index_select(line_table, 0, line_index, out=line_gathered),
                     2.0 * line_index.numel() * line_floats * 4, "bytes"),
        # True fp32 even when a tf32 path set TF32 matmuls on for its run (the peak is cached per device).
        "gemm": (lambda: _fp32_mm(a, b, c) if device.startswith("cuda") else torch.mm(a, b, out=c),
                 2.0 * side**3, "flops"),
    }
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if precision in precisions:
            a16, b16 = a.to(dtype), b.to(dtype)
            c16 = torch.empty_like(a16)
            kernels[f"gemm_{precision}"] = (functools.partial(torch.mm, a16, b16, out=c16), 2.0 * side**3,
                                            "flops")
    if "tf32" in precisions and device.startswith("cuda"):
        kernels["gemm_tf32"] = (lambda: _tf32_mm(a, b, c), 2.0 * side**3, "flops")
    return kernels


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
