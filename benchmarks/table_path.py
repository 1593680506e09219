"""The table path against a bare torch loop, the timing loop's own overhead, and the two table layouts.

    python -m benchmarks.table_path                  # Kaggle shape at scale 1.0 (2.16 GB), query size 4096
    python -m benchmarks.table_path --tiny           # seconds; what the CI-safe test runs

Figures (all medians of interleaved repetitions, one run):
1. samples/s of the harness's table path (DLRM module through the CPU adapter) vs a bare loop written
   here with F.embedding_bag + F.linear on the *same* weights and ids; target ratio >= 0.8;
2. the timing loop's overhead: an empty model through the real loop and adapter, in microseconds and as a
   fraction of the table path's query-size-1 latency; target < 2%;
3. fused vs per-table layout at several query sizes (which layout is the default, and why).
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import backends
from backends.cpu import CpuBackend
from benchmarks.common import interleaved, write_report
from harness.core.conf import compose
from harness.core.spec import WorkloadSpec
from harness.data.pool import build_pool
from harness.data.synthetic import SyntheticCriteo
from harness.pipeline.config import load_config
from harness.pipeline.run import prepare_on
from harness.pipeline.timing import LadderSettings, time_iterations
from harness.workload.dlrm import build_model
from harness.workload.representations.table import Config as TableConfig


class EmptyModel(torch.nn.Module):
    """Does nothing with the batch: what remains is the cost of the loop and the adapter call."""

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return dense


def cpu_backend() -> CpuBackend:
    run = load_config(compose(["+backend=cpu"]))
    return CpuBackend(backends.resolve_auto(run.backend, "cpu"))


def bare_forward(model, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """DLRM written out with torch.nn.functional on the model's own weights: the reference loop."""
    tables = model.sparse_arch
    batch, num_tables, per_bag = ids.shape
    flat = (ids + tables.row_offsets.view(1, -1, 1)).view(-1, per_bag)
    emb = F.embedding_bag(flat, tables.weight, mode="sum").view(batch, num_tables, -1)
    x = dense
    for layer in model.dense_arch.mlp:
        if isinstance(layer, torch.nn.Linear):
            x = F.relu(F.linear(x, layer.weight, layer.bias))
    feats = torch.cat([x.unsqueeze(1), emb], dim=1)
    gram = torch.bmm(feats, feats.transpose(1, 2))
    rows, cols = torch.tril_indices(feats.shape[1], feats.shape[1], offset=-1)
    z = torch.cat([x, gram[:, rows, cols]], dim=1)
    linears = [m for m in model.over_arch.mlp if isinstance(m, torch.nn.Linear)]
    for k, layer in enumerate(linears):
        z = F.linear(z, layer.weight, layer.bias)
        if k < len(linears) - 1:
            z = F.relu(z)
    return z.squeeze(-1)


def path_vs_bare(scale: float, query_size: int, pool_batches: int, reps: int, block_s: float) -> dict:
    spec = WorkloadSpec.from_shape("kaggle", scale, representation=TableConfig(layout="fused",
                                                                               storage="fp32"))
    model = build_model(spec, seed=0)
    backend = cpu_backend()
    generator = SyntheticCriteo(spec.table_rows, seed=0)
    prepare_on(backend, model, build_pool(generator, 1, 1)[0])  # configured for the CPU as a run is
    pool = [backend.place(b) for b in build_pool(generator, query_size, pool_batches)]
    with torch.inference_mode():
        torch.testing.assert_close(bare_forward(model, *pool[0]), backend.run(pool[0]))

    def harness_path(i: int):
        backend.synchronize(backend.run(pool[i % pool_batches]))

    def bare(i: int):
        with torch.inference_mode():
            bare_forward(model, *pool[i % pool_batches])

    timings = interleaved({"harness": harness_path, "bare": bare}, reps, block_s)
    harness_sps = query_size / timings["harness"]["median_s"]
    bare_sps = query_size / timings["bare"]["median_s"]

    # Overhead: the same loop and adapter with a model that does nothing.
    single = [backend.place(b) for b in build_pool(generator, 1, 64)]
    settings = LadderSettings(warmup_iters=50, warmup_s=0.1, min_iters=2000, min_time_s=1.0,
                              max_iters=200_000, max_time_s=5.0)
    q1 = time_iterations(lambda i: backend.run(single[i % 64]), backend.synchronize, settings)
    empty = cpu_backend()
    empty.prepare(EmptyModel(), None)
    e = time_iterations(lambda i: empty.run(single[i % 64]), empty.synchronize, settings)
    overhead_s = statistics.median(e.latencies_s)
    q1_s = statistics.median(q1.latencies_s)
    return {
        "scale": scale,
        "param_bytes": spec.total_rows * spec.embedding_dim * 4,
        "query_size": query_size,
        "harness_samples_per_s": harness_sps,
        "bare_samples_per_s": bare_sps,
        "harness_over_bare": harness_sps / bare_sps,
        "harness_blocks_s": timings["harness"]["blocks_s"],
        "bare_blocks_s": timings["bare"]["blocks_s"],
        "loop_overhead_us": overhead_s * 1e6,
        "query_size_1_latency_us": q1_s * 1e6,
        "overhead_fraction_of_q1": overhead_s / q1_s,
        "num_threads": torch.get_num_threads(),
    }


def layouts(scale: float, query_sizes: list[int], reps: int, block_s: float) -> dict:
    backends = {}
    for layout in ("fused", "per_table"):
        spec = WorkloadSpec.from_shape("kaggle", scale, representation=TableConfig(layout=layout,
                                                                                   storage="fp32"))
        backend = cpu_backend()
        prepare_on(backend, build_model(spec, seed=0), None)
        backends[layout] = backend
    generator = SyntheticCriteo(spec.table_rows, seed=0)
    out = {}
    for q in query_sizes:
        pool = build_pool(generator, q, 16)
        candidates = {name: (lambda i, b=b, pool=pool: b.synchronize(b.run(pool[i % 16])))
                      for name, b in backends.items()}
        t = interleaved(candidates, reps, block_s)
        out[q] = {
            "fused_ms": t["fused"]["median_s"] * 1e3,
            "per_table_ms": t["per_table"]["median_s"] * 1e3,
            "per_table_over_fused": t["per_table"]["median_s"] / t["fused"]["median_s"],
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--query-size", type=int, default=4096)
    parser.add_argument("--layout-scale", type=float, default=0.1)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--block-s", type=float, default=1.0)
    parser.add_argument("--tiny", action="store_true", help="seconds-long run on a tiny shape (CI)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.scale, args.query_size, args.layout_scale, args.repetitions, args.block_s = (0.001, 64, 0.001, 5,
                                                                                          0.02)
    figures = {
        "path_vs_bare": path_vs_bare(args.scale, args.query_size, 8, args.repetitions, args.block_s),
        "layouts": layouts(args.layout_scale, [1, 64, 1024] if args.tiny else [1, 64, 1024, 4096],
                           args.repetitions, args.block_s),
    }
    p = figures["path_vs_bare"]
    print(
        f"table path, Kaggle scale {p['scale']} ({p['param_bytes'] / 1e9:.2f} GB), query size "
        f"{p['query_size']}:"
    )
    print(f"  harness {p['harness_samples_per_s']:,.0f} samples/s, bare loop {p['bare_samples_per_s']:,.0f} "
          f"samples/s -> ratio {p['harness_over_bare']:.3f} (target >= 0.8)")
    print(
        f"  timing-loop overhead {p['loop_overhead_us']:.2f} us = {100 * p['overhead_fraction_of_q1']:.3f}% "
        f"of the query-size-1 latency {p['query_size_1_latency_us']:.1f} us (target < 2%)"
    )
    print(f"layouts at scale {args.layout_scale} (median ms; per_table / fused):")
    for q, row in figures["layouts"].items():
        print(f"  q={q:>5}: fused {row['fused_ms']:.3f}  per_table {row['per_table_ms']:.3f}  "
              f"ratio {row['per_table_over_fused']:.2f}")
    print(f"written: {write_report('table_path', figures)}")
    return figures


if __name__ == "__main__":
    main()
