"""Every CPU path and precision against its own bound, measured side by side in one run (issue 24).

    python -m benchmarks.roofline           # Kaggle shape at scale 1.0 (2.16 GB of tables), ~5 minutes
    python -m benchmarks.roofline --tiny    # seconds (CI)

Per path and precision (table: fp32, bf16, fp16 where the CPU computes it natively, int8 rows, int8 rows
with bf16 MLPs, int4 rows; dhe: fp32, bf16), the whole DLRM forward at query sizes 1, 1024 and 4096, timed
interleaved with its fp32 twin (the same weights, the precision applied as a run applies it): the p50,
and the bound the machine allows, from this run's measured peaks and the cost model's counts
(harness/workload/cost.py):

    bound = FLOPs / GEMM peak of the path's compute precision + bytes moved / gather bandwidth at 64-byte rows

with each table row counted as the gather kernel counts one: the whole cache line it costs read (a random
row costs a line whatever its width: an int8 row of 24 bytes counts 64) and its vector written.
The fraction is bound / p50: 1.0 runs at the roof. At q = 1 what matters is the fixed cost: the report
gives the p50 there beside the bound, and benchmarks.harness_overhead measures the harness's own share.
The DLRM reference (facebookresearch/dlrm's DLRM_Net, fp32, on the fp32 model's weights; checked to compute
the same function first) is timed among the table rows where it is installed (`--dlrm-reference DIR`:
benchmarks/dlrm_reference.py says what it needs), and each row gets its ratio to it; elsewhere the report
says why not. fp16 runs only where the CPU computes it natively (else the report says so). Each DHE path's
hash and whole lookup are timed among them too: the hash's share of the lookup. Issue 24's targets: >= 0.8
for every table precision at 4096, >= 0.7 for DHE at >= 1024 with the hash <= 15 % of the lookup; int8
rows never slower than fp32 rows, and int8 rows with bf16 MLPs the fastest table path from 1024 where
bf16 is native (ratios.json, benchmarks/__main__.py).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from backends.huge_pages import on_huge_pages, thp_mode
from benchmarks import dlrm_reference
from benchmarks.common import (
    LINE,
    cold_pool_size,
    interleaved,
    timing_parser,
    torch_cpu_capabilities,
    write_report,
)
from benchmarks.precision import _batch, _spec, _variant
from harness.core.host import native_cpu_dtype, numeric_flags
from harness.core.precision import gemm_peak_metric
from harness.workload.cost import path_cost
from harness.workload.device import configure_for
from harness.workload.dlrm import build_model
from harness.workload.representations.dhe.module import DeepHashEmbedding

SIZES: tuple[int, ...] = (1, 1024, 4096)
# representation -> [(label, compute precision, table storage)]
VARIANTS: dict[str, list[tuple[str, str, str | None]]] = {
    "table": [("fp32", "fp32", None), ("bf16", "bf16", None), ("int8", "fp32", "int8"),
              ("int8+bf16", "bf16", "int8"), ("int4", "fp32", "int4")],
    "dhe": [("fp32", "fp32", None), ("bf16", "bf16", None)],
}
# Where the CPU has fp16 instructions (avx512_fp16, amx_fp16), the table path in fp16 as well: elsewhere
# torch emulates it, no roof of this machine's to hold it to (the report says why it did not run).
NATIVE_ONLY: dict[str, list[tuple[str, str, str | None]]] = {"table": [("fp16", "fp16", None)]}


def paths(representation: str) -> list[tuple[str, str, str | None]]:
    """The (label, compute precision, table storage) of `representation` this CPU runs."""
    native = [v for v in NATIVE_ONLY.get(representation, []) if native_cpu_dtype(v[1]).startswith("native")]
    return VARIANTS[representation] + native


def peak_metrics() -> tuple[str, ...]:
    """The GEMM peaks every path run here is held to, and the gather's."""
    precisions = {precision for rep in VARIANTS for _, precision, _ in paths(rep)}
    return (*sorted({gemm_peak_metric(p) for p in precisions}), "gather64_gbps")


def machine_peaks(tiny: bool) -> dict:
    """fp32 and bf16 GEMM, and the 64-byte-row gather, by the harness's own peak kernels, each under its
    load probe: a disturbed kernel is named (its roof would be too low)."""
    from backends.cpu import CpuBackend
    from harness.core.conf import compose
    from harness.pipeline.config import load_config
    from harness.pipeline.peaks import measure_peaks

    adapter = CpuBackend(load_config(compose(["+backend=cpu"])).backend)
    adapter.prepare(torch.nn.Identity(), None)
    peaks, readings = measure_peaks(adapter, 0.05 if tiny else 1.0, only=peak_metrics())
    disturbed = sorted(m for m, r in readings.items()  # the rule benchmarks.limits applies
                       if r.load.other_cores is not None
                       and r.load.other_cores > 0.1 + r.load.resolution_cores)
    return {**peaks, "disturbed": disturbed}


REFERENCE = "dlrm_reference"  # the row of facebookresearch/dlrm's DLRM_Net (fp32), where it is installed
HASH, LOOKUP = ":hash", ":lookup"  # suffixes of the DHE parts' timings (`dhe_parts`)


def memory_bytes_per_sample(representation: str, spec, storage: str | None) -> float:
    """What one sample moves, counted as the 64-byte-row gather that measures the roof counts it: each
    table row its whole cache lines read (an int8 row of 24 bytes costs 64) and the vector it becomes
    written (D fp32 values: fp32 and int8 rows alike; fp16 rows stay fp16), as the kernel's index_select
    reads a line and writes it (its GB/s count both); ids and dense features as the cost model counts them.
    The weights read once a query stay cache-resident: left out, which keeps the bound a lower bound."""
    from harness.core.precision import row_bytes

    cost = path_cost(spec)
    if representation != "table":
        return float(cost.bytes_read_per_sample)
    rows = spec.num_tables * spec.ids_per_lookup
    width = row_bytes(storage or "fp32", spec.embedding_dim)
    written = spec.embedding_dim * (2 if storage == "fp16" else 4)
    return cost.bytes_read_per_sample - rows * width + rows * (LINE * -(-width // LINE) + written)


def bound_s(flops_per_sample: float, bytes_per_sample: float, q: int, precision: str, peaks: dict) -> float:
    gemm = peaks[gemm_peak_metric(precision)]
    return q * flops_per_sample / (gemm * 1e9) + q * bytes_per_sample / (peaks["gather64_gbps"] * 1e9)


def forward(model: torch.nn.Module, pool: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[int], Any]:
    return lambda i: model(*pool[i % len(pool)])


def forward_reference(ref: torch.nn.Module, pool: list[tuple]) -> Callable[[int], Any]:
    return lambda i: ref(*pool[i % len(pool)])


def dhe_parts(models: dict, pool: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Callable[[int], Any]]:
    """For each DHE path, its hash (the codes) and its whole lookup alone, timed among the forwards: what
    share of the lookup the hash takes (issue 24: at most 15 %)."""
    calls = {}
    for label, model in models.items():
        for module in model.modules():
            if isinstance(module, DeepHashEmbedding):
                calls[f"{label}{HASH}"] = lambda i, module=module: module.encode(pool[i % len(pool)][1])
                calls[f"{label}{LOOKUP}"] = lambda i, module=module: module(pool[i % len(pool)][1])
    return calls


def batch_pool(spec, q: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Distinct batches of q samples, cycled call after call (`cold_pool_size`): every table lookup reads
    rows that are not in cache, as the bound's DRAM gather counts them."""
    batches = cold_pool_size(q * spec.num_tables * spec.ids_per_lookup)
    return [_batch(spec, q, seed) for seed in range(batches)]


def _attach_parts(row: dict, timed: dict) -> None:
    """Move the DHE parts' timings (`dhe_parts`) from `timed` into their path's row."""
    for label in [label for label in timed if label.endswith(HASH)]:
        path = label[: -len(HASH)]
        hash_s, lookup_s = timed.pop(label)["median_s"], timed.pop(f"{path}{LOOKUP}")["median_s"]
        row[path].update(hash_ms=hash_s * 1e3, lookup_ms=lookup_s * 1e3, hash_share=hash_s / lookup_s)


def representation_rows(representation: str, scale: float, sizes: tuple[int, ...], repetitions: int,
                        block_s: float, reference=None) -> dict:
    """Each precision of one representation at each size, interleaved: the p50 and the ratio to fp32; with
    `reference` (benchmarks/dlrm_reference.py's module) the DLRM reference on the fp32 model's weights is
    timed among them, and each row gets its ratio to it (`reference_over_this`: above 1, ours is faster)."""
    _, spec = _spec(representation, scale)
    model = build_model(spec, seed=0).eval().requires_grad_(False)
    configure_for(model, torch_cpu_capabilities())
    on_huge_pages(model)  # the tables where a CPU run's prepare puts them (before the twins share them)
    models = {label: model if label == "fp32" else _variant(model, precision, storage)
              for label, precision, storage in paths(representation)}
    for twin in models.values():
        on_huge_pages(twin)  # int8 and int4 rows are the twins' own
    ref = dlrm_reference.build(reference, model) if reference is not None else None
    rows: dict = {}
    for q in sizes:
        pool = batch_pool(spec, q)
        with torch.inference_mode():
            calls = {label: forward(m, pool) for label, m in models.items()}
            if ref is not None:
                disagree = dlrm_reference.agreement(ref, model, *pool[0])
                if disagree > 1e-4:  # never a ratio between two different functions
                    raise RuntimeError(f"the DLRM reference and the model differ by {disagree:.2e} at q={q}")
                calls[REFERENCE] = forward_reference(ref, [dlrm_reference.inputs(*batch) for batch in pool])
            calls.update(dhe_parts(models, pool))
            timed = interleaved(calls, repetitions=repetitions, block_s=block_s, min_iters=3, warmup=2)
        parts = {label: timed.pop(label) for label in list(timed) if label.endswith((HASH, LOOKUP))}
        rows[q] = {label: {"p50_ms": t["median_s"] * 1e3, "blocks_s": t["blocks_s"], "batches": len(pool),
                           "fp32_over_this": timed["fp32"]["median_s"] / t["median_s"]}
                   for label, t in timed.items()}
        _attach_parts(rows[q], parts)
        if ref is not None:
            for row in rows[q].values():
                row["reference_over_this"] = rows[q][REFERENCE]["p50_ms"] / row["p50_ms"]
        print(f"{representation:6s} q={q:5d} " + "  ".join(
            f"{label} {r['p50_ms']:.2f} ms" + (f" (hash {r['hash_share']:.0%} of its {r['lookup_ms']:.2f} ms "
                                                "lookup)" if "hash_share" in r else "")
            for label, r in rows[q].items()), flush=True)
    return rows


def rebound(representation: str, scale: float, rows: dict, peaks: dict) -> dict:
    """Each measured p50 against its bound from `peaks`: the bound, the fraction, and whether it is above
    the roof (a fraction over 1: the peaks were measured low; flagged)."""
    print(f"{representation} against its bound:")
    counts = {}  # label -> (precision, FLOPs and bytes per sample), from the cost model once per variant
    for label, precision, storage in paths(representation):
        spec = _spec(representation, scale, precision, storage)[1]
        counts[label] = (precision, path_cost(spec).flops_per_sample,
                         memory_bytes_per_sample(representation, spec, storage))
    counts[REFERENCE] = counts["fp32"]  # the reference's row: the same fp32 work
    for q, labels in rows.items():
        for label, row in labels.items():
            precision, flops, moved = counts[label]
            row["bound_ms"] = bound_s(flops, moved, q, precision, peaks) * 1e3
            row["fraction"] = row["bound_ms"] / row["p50_ms"]
            row["above_roof"] = row["fraction"] > 1.0
        print(f"  q={q:5d} " + "  ".join(
            f"{label} {r['p50_ms']:.2f} / {r['bound_ms']:.2f} ms = {r['fraction']:.0%}"
            + ("! (above the roof: flagged)" if r["above_roof"] else "") for label, r in labels.items()),
            flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = timing_parser(__doc__)
    parser.add_argument("--dlrm-reference", metavar="DIR", help="a checkout of facebookresearch/dlrm (else "
                        f"${dlrm_reference.ENV}, else dlrm_s_pytorch on the import path)")
    args = parser.parse_args(argv)
    scale, sizes = 1.0, SIZES
    if args.tiny:
        scale, sizes, args.repetitions, args.block_s = 0.001, (1, 64), 3, 0.01
    flags = numeric_flags()
    # A path cannot beat its roof: the paths are timed between two readings of the peaks and measured
    # against the higher of each (a kernel timed low once, by a frequency dip or a neighbour, would
    # otherwise put a path above 100 %); a fraction still above 1 is flagged, never handed on silently.
    reference, reference_note = dlrm_reference.load(args.dlrm_reference)
    print(f"DLRM reference: {reference_note}", flush=True)
    first = machine_peaks(args.tiny)
    rows = {representation: representation_rows(representation, scale, sizes, args.repetitions, args.block_s,
                                                reference if representation == "table" else None)
            for representation in VARIANTS}
    second = machine_peaks(args.tiny)
    peaks = {k: max(first[k], second[k]) for k in peak_metrics()}
    peaks["disturbed"] = sorted(set(first["disturbed"]) | set(second["disturbed"]))
    figures: dict[str, Any] = {"threads": torch.get_num_threads(), "cpu_flags": flags, "scale": scale,
                               "peaks": peaks, "peaks_before": first, "peaks_after": second,
                               "reference": reference_note, "fp16": native_cpu_dtype("fp16"),
                               "transparent_huge_pages": thp_mode()}
    print(f"peaks ({figures['threads']} threads; flags {', '.join(flags)}), the higher of before and after: "
          f"GEMM fp32 {peaks['gemm_gflops']:.0f} ({first['gemm_gflops']:.0f}, {second['gemm_gflops']:.0f}), "
          f"bf16 {peaks['gemm_bf16_gflops']:.0f}"
          + (f", fp16 {peaks['gemm_fp16_gflops']:.0f}" if "gemm_fp16_gflops" in peaks else "")
          + f" GFLOP/s; 64-B-row gather {peaks['gather64_gbps']:.2f} GB/s"
          + (f"; disturbed: {peaks['disturbed']}" if peaks["disturbed"] else ""), flush=True)
    if "gemm_fp16_gflops" not in peaks:
        print(f"table fp16: not run, {figures['fp16']} on this CPU (no amx_fp16 or avx512_fp16 flag)")
    for representation, by_size in rows.items():
        figures[representation] = rebound(representation, scale, by_size, peaks)
    _print_reference(figures["table"])
    print(f"written: {write_report('roofline', figures)}")
    return figures


def _print_reference(rows: dict) -> None:
    for q, labels in rows.items():
        if REFERENCE in labels:
            ratios = (f"{label} {row['reference_over_this']:.2f}x" for label, row in labels.items()
                      if label != REFERENCE)
            print(f"  q={q:5d} against the DLRM reference (its p50 / ours; above 1: ours faster): "
                  + "  ".join(ratios))


if __name__ == "__main__":
    main()
