"""DHE decoders against the machine's GEMM peak, batched vs looped; TT lookups vs dense rebuilds.

    python -m benchmarks.representations           # Kaggle shape; about 2 minutes on 2 cores
    python -m benchmarks.representations --tiny    # seconds (CI)

Figures (medians of interleaved repetitions, one run):
1. fp32 GEMM peak of this machine: a large square torch.mm;
2. DHE decoders (the 26 Kaggle decoders 1024-128-16) at several query sizes: one baddbmm per layer vs a
   Python loop of per-table addmm, achieved GFLOP/s and the fraction of the GEMM peak (target >= 50% at
   query size >= 1024); the hashing/encoding time beside it, for context;
3. TT lookups for the seven Kaggle tables above 100k rows (scale 1.0, rank 16) at query size 4096 vs
   decompressing those tables densely and gathering: time and bytes of each.
"""

from __future__ import annotations

import torch

from benchmarks.common import interleaved, timing_parser, write_report
from harness.core.spec import WorkloadSpec
from harness.workload.representations import dhe, tt
from harness.workload.representations.dhe.module import DeepHashEmbedding
from harness.workload.representations.tt.module import TTTables

FP32 = 4


def gemm_peak(n: int, reps: int, block_s: float) -> dict:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = interleaved({"mm": lambda i: torch.mm(a, b)}, reps, block_s, min_iters=3)["mm"]
    return {"n": n, "median_s": t["median_s"], "gflops": 2 * n**3 / t["median_s"] / 1e9}


def kaggle_dhe(tables: int) -> tuple[DeepHashEmbedding, int]:
    """The Kaggle DHE (k = 1024, decoders 1024-128-16) for `tables` tables, and its FLOPs per lookup."""
    params = dhe.Config(k=1024, decoder=[1024, 128], m=1_000_000, hash="multiply_shift", encoding="uniform",
                        activation="none", batch_norm=False, seed=0)
    module = DeepHashEmbedding(range(tables), params, dim=16).requires_grad_(False)
    widths = params.widths(16)
    return module, 2 * sum(i * o for i, o in zip(widths[:-1], widths[1:]))


def decode_per_table(module: DeepHashEmbedding, codes: torch.Tensor) -> torch.Tensor:
    """The decoders as a Python loop of per-table GEMMs: the layout DeepHashEmbedding.decode replaces,
    kept here to measure what the batched GEMMs buy (no BatchNorm: the Kaggle decoders have none)."""
    last = len(module.weights) - 1
    out = []
    for t in range(codes.shape[0]):
        x = codes[t]
        for i, (weight, bias) in enumerate(zip(module.weights, module.biases)):
            x = torch.addmm(bias[t], x, weight[t])
            if i < last:
                x = torch.relu(x)
        out.append(x)
    return torch.stack(out)


def dhe_decoders(query_sizes: list[int], peak_gflops: float, reps: int, block_s: float, tables: int) -> dict:
    module, flops_per_lookup = kaggle_dhe(tables)
    out = {}
    for q in query_sizes:
        ids = torch.randint(0, 10_000_000, (q, tables, 1))
        codes = module.encode(ids)
        torch.testing.assert_close(module.decode(codes), decode_per_table(module, codes))
        t = interleaved({"bmm": lambda i, codes=codes: module.decode(codes), "loop": lambda i,
                         codes=codes: decode_per_table(module, codes), "encode": lambda i,
                         ids=ids: module.encode(ids)}, reps, block_s, min_iters=3)
        flops = flops_per_lookup * q * tables
        bmm_gflops = flops / t["bmm"]["median_s"] / 1e9
        out[q] = {
            "bmm_ms": t["bmm"]["median_s"] * 1e3,
            "loop_ms": t["loop"]["median_s"] * 1e3,
            "loop_over_bmm": t["loop"]["median_s"] / t["bmm"]["median_s"],
            "bmm_gflops": bmm_gflops,
            "bmm_fraction_of_peak": bmm_gflops / peak_gflops,
            "loop_fraction_of_peak": flops / t["loop"]["median_s"] / 1e9 / peak_gflops,
            "encode_ms": t["encode"]["median_s"] * 1e3,
        }
    return out


def tt_vs_dense(scale: float, query_size: int, reps: int) -> dict:
    cfg = tt.Config(rank=16, cores=3, min_rows=max(2, int(100_000 * scale)), layout="fused")
    spec = WorkloadSpec.from_shape("kaggle", scale, representation=cfg)
    facts = tt.factorizations(spec)
    torch.manual_seed(0)
    module = TTTables(facts).requires_grad_(False)
    ids = torch.stack([torch.randint(0, f.rows, (query_size, 1)) for f in facts], dim=1)

    def dense(i):
        return torch.stack([module.full_table(t)[ids[:, t, 0]] for t in range(len(facts))], dim=1)

    torch.testing.assert_close(module(ids), dense(0), rtol=1e-4, atol=1e-6)
    t = interleaved({"tt": lambda i: module(ids), "dense": dense}, reps, block_s=0.0, min_iters=1, warmup=1)
    lookups = query_size * len(facts)
    return {
        "tables": [f.describe() for f in facts],
        "query_size": query_size,
        "tt_ms": t["tt"]["median_s"] * 1e3,
        "dense_rebuild_ms": t["dense"]["median_s"] * 1e3,
        "dense_over_tt": t["dense"]["median_s"] / t["tt"]["median_s"],
        "tt_core_bytes": sum(f.params for f in facts) * FP32,
        "tt_bytes_read": lookups * facts[0].floats_read_per_lookup * FP32,
        "dense_table_bytes": sum(f.rows for f in facts) * spec.embedding_dim * FP32,
    }


def main(argv: list[str] | None = None) -> dict:
    args = timing_parser(__doc__).parse_args(argv)
    sizes, tables, tt_scale, gemm_n = [64, 256, 1024, 4096], 26, 1.0, 4096
    if args.tiny:
        sizes, tables, tt_scale, gemm_n, args.repetitions, args.block_s = [64, 1024], 2, 0.001, 512, 5, 0.01
    peak = gemm_peak(gemm_n, args.repetitions, args.block_s)
    figures = {
        "gemm_peak": peak,
        "dhe_decoders": dhe_decoders(sizes, peak["gflops"], args.repetitions, args.block_s, tables),
        "tt_vs_dense": tt_vs_dense(tt_scale, 4096 if not args.tiny else 256, 3),
    }
    print(f"fp32 GEMM peak (torch.mm {gemm_n}^2): {peak['gflops']:.1f} GFLOP/s")
    print(f"DHE decoders, {tables} tables 1024-128-16 (median ms; GFLOP/s; fraction of peak):")
    for q, row in figures["dhe_decoders"].items():
        print(f"  q={q:>5}: bmm {row['bmm_ms']:.2f} ms {row['bmm_gflops']:.1f} GFLOP/s "
              f"({100 * row['bmm_fraction_of_peak']:.0f}% of peak)  loop {row['loop_ms']:.2f} ms "
              f"(loop/bmm {row['loop_over_bmm']:.2f})  encode {row['encode_ms']:.2f} ms")
    t = figures["tt_vs_dense"]
    print(f"TT, {len(t['tables'])} tables at q={t['query_size']}: lookup {t['tt_ms']:.2f} ms reading "
          f"{t['tt_bytes_read'] / 1e6:.1f} MB of core slices ({t['tt_core_bytes'] / 1e6:.2f} MB of cores); "
          f"dense rebuild {t['dense_rebuild_ms']:.1f} ms writing {t['dense_table_bytes'] / 1e6:.0f} MB "
          f"-> dense/TT {t['dense_over_tt']:.1f}x")
    print(f"written: {write_report('representations', figures)}")
    return figures


if __name__ == "__main__":
    main()
