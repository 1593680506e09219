"""Our paths against this machine's physical limits: table lookups vs gather bandwidth, DHE vs GEMM peak.

    python -m benchmarks.limits           # Kaggle shape at scale 1.0 (2.16 GB of tables); about 2 minutes
    python -m benchmarks.limits --tiny    # seconds (CI)

Limits, measured in this run with the kernels the analysis roofline uses (backends/torch_kernels.py through
harness/device_peaks.measure_peaks): random-row gather bandwidth (256-byte rows, bytes read + written), the
same gather at one cache line per row (64 bytes: the dim-16 rows of the table path here; a random row costs
a DRAM access whatever its width, so narrow rows cannot reach the wide-row bytes/s) and fp32 GEMM throughput.
Paths (medians of interleaved repetitions):
1. the table representation (`FusedTables`, one gather for 26 tables), one id per feature, uniform ids:
   bytes moved counted as the gather kernel counts them (rows read + pooled rows written); target >= 70%
   of the gather limit at query size 4096;
2. the DHE representation (26 decoders 1024-128-16): the decoders' GFLOP/s (one baddbmm per layer) and
   the whole lookup's (hashing included, the FLOPs being the decoders'); target >= 60% of the GEMM peak
   at query sizes >= 1024.
"""

from __future__ import annotations

import torch

from backends.huge_pages import on_huge_pages
from benchmarks.common import cold_pool_size, interleaved, timing_parser, torch_cpu_capabilities, write_report
from benchmarks.representations import kaggle_dhe
from harness.core.spec import WorkloadSpec
from harness.workload.device import configure_for
from harness.workload.representations.table.module import FusedTables

FP32 = 4


def machine_limits(size_scale: float) -> dict:
    from backends.cpu import CpuBackend
    from harness.core.conf import compose
    from harness.pipeline.config import load_config
    from harness.pipeline.peaks import measure_peaks

    adapter = CpuBackend(load_config(compose(["+backend=cpu"])).backend)
    adapter.prepare(torch.nn.Identity(), None)
    peaks, readings = measure_peaks(adapter, size_scale)
    known = [r.load.other_cores for r in readings.values() if r.load.other_cores is not None]
    busiest = max(known) if known else None  # None: not measurable here, never a zero
    disturbed = [m for m, r in readings.items()
                 if r.load.other_cores is not None and r.load.other_cores > 0.1 + r.load.resolution_cores]
    if disturbed:
        print(f"warning: other processes used up to {busiest:.2f} cores while {', '.join(disturbed)} were "
              "measured: the fractions below are of a roof that is too low; measure again on a quiet machine")
    return {**peaks, "other_cores_while_measured": busiest}


def table_lookups(scale: float, sizes: list[int], limits: dict, reps: int, block_s: float) -> dict:
    rows = WorkloadSpec.from_shape("kaggle", scale).table_rows
    torch.manual_seed(0)
    module = FusedTables(rows, 16).requires_grad_(False)
    configure_for(module, torch_cpu_capabilities())  # the kernels a CPU run's tables take
    on_huge_pages(module)  # and their memory (backends/huge_pages.py)
    out = {}
    for q in sizes:
        # rows no earlier call left in cache (`cold_pool_size`): 4 batches kept q = 1024's in L3 (223 %)
        pool = [torch.stack([torch.randint(0, r, (q, 1)) for r in rows], dim=1)
                for _ in range(cold_pool_size(q * len(rows)))]
        t = interleaved({"lookup": lambda i, pool=pool: module(pool[i % len(pool)])}, reps, block_s)["lookup"]
        # rows read + pooled rows written, as the gather kernel counts
        moved = (2.0 * q * len(rows) * 16 * FP32)
        gbps = moved / t["median_s"] / 1e9
        out[q] = {"ms": t["median_s"] * 1e3, "gbps": gbps, "fraction_of_gather": gbps / limits["gather_gbps"],
                  "fraction_of_gather64": gbps / limits["gather64_gbps"], "blocks_s": t["blocks_s"],
                  "batches": len(pool)}
    return {"scale": scale, "table_bytes": sum(rows) * 16 * FP32, "sizes": out}


def dhe_lookups(tables: int, sizes: list[int], gemm_gflops: float, reps: int, block_s: float) -> dict:
    module, flops_per_lookup = kaggle_dhe(tables)
    out = {}
    for q in sizes:
        ids = torch.randint(0, 10_000_000, (q, tables, 1))
        codes = module.encode(ids)
        t = interleaved({"decoders": lambda i, codes=codes: module.decode(codes),
                         "lookup": lambda i, ids=ids: module(ids)}, reps, block_s, min_iters=3)
        flops = flops_per_lookup * q * tables
        decoders, lookup = flops / t["decoders"]["median_s"] / 1e9, flops / t["lookup"]["median_s"] / 1e9
        out[q] = {"decoders_ms": t["decoders"]["median_s"] * 1e3, "lookup_ms": t["lookup"]["median_s"] * 1e3,
                  "decoders_gflops": decoders, "lookup_gflops": lookup,
                  "decoders_fraction_of_gemm": decoders / gemm_gflops,
                  "lookup_fraction_of_gemm": lookup / gemm_gflops}
    return {"tables": tables, "flops_per_lookup": flops_per_lookup, "sizes": out}


def main(argv: list[str] | None = None) -> dict:
    args = timing_parser(__doc__).parse_args(argv)
    scale, table_sizes, dhe_sizes, tables, peak_scale = 1.0, [64, 1024, 4096], [64, 1024, 4096], 26, 1.0
    if args.tiny:
        scale, table_sizes, dhe_sizes, tables, peak_scale = 0.001, [64], [64], 2, 0.05
        args.repetitions, args.block_s = 3, 0.01
    limits = machine_limits(peak_scale)
    figures = {
        "threads": torch.get_num_threads(),
        "limits": limits,
        "table": table_lookups(scale, table_sizes, limits, args.repetitions, args.block_s),
        "dhe": dhe_lookups(tables, dhe_sizes, limits["gemm_gflops"], args.repetitions, args.block_s),
    }
    print(f"limits ({figures['threads']} threads): gather {limits['gather_gbps']:.2f} GB/s (256-B rows), "
          f"{limits['gather64_gbps']:.2f} GB/s (64-B rows), copy {limits['copy_gbps']:.2f} GB/s, "
          f"GEMM {limits['gemm_gflops']:.1f} GFLOP/s")
    for q, row in figures["table"]["sizes"].items():
        print(
            f"  table q={q:>5}: {row['ms']:.3f} ms, {row['gbps']:.2f} GB/s = "
            f"{100 * row['fraction_of_gather']:.0f}% of the gather limit "
            f"({100 * row['fraction_of_gather64']:.0f}% of the 64-B-row gather)"
        )
    for q, row in figures["dhe"]["sizes"].items():
        print(
            f"  dhe   q={q:>5}: decoders {row['decoders_gflops']:.1f} GFLOP/s "
            f"({100 * row['decoders_fraction_of_gemm']:.0f}% of GEMM); whole lookup "
            f"{row['lookup_gflops']:.1f} ({100 * row['lookup_fraction_of_gemm']:.0f}%)"
        )
    print(f"written: {write_report('limits', figures)}")
    return figures


if __name__ == "__main__":
    main()
