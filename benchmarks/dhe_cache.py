"""MP-Cache: speedup of dhe+cache over dhe by id skew, cache size and query size, with hit rates.

    python -m benchmarks.dhe_cache           # Kaggle shape at scale 0.1, 26 DHE tables; ~5 minutes
    python -m benchmarks.dhe_cache --tiny    # seconds (CI)

For each Zipf exponent (0.8, 1.05, 1.2) the timed queries are drawn from that law; for each cache size
(hot ids per table) the cache holds each table's most popular ids (the generator's exact ranks); for
each query size (64, 1024, 4096) the same DHE module is timed with and without its cache, interleaved,
on the same batches. Figures: hit rate, median latency of both, speedup = uncached / cached.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import interleaved, write_report
from harness.core.spec import WorkloadSpec
from harness.data.synthetic import SyntheticCriteo
from harness.workload.representations import dhe
from harness.workload.representations.dhe.cache import attach
from harness.workload.representations.dhe.module import DeepHashEmbedding


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    exponents, cache_rows, sizes = (0.8, 1.05, 1.2), (4096, 65536), (64, 1024, 4096)
    k, hidden, block_s = 1024, 128, 0.3
    if args.tiny:
        exponents, cache_rows, sizes, k, hidden, block_s, args.scale = ((1.05,), (64,), (64,), 16, 8, 0.01,
                                                                        0.001)
    spec = WorkloadSpec.from_shape("kaggle", args.scale)
    cache_off = dhe.CacheConfig(rows=0, bytes=None, sample_rows=1)
    params = dhe.Config(k=k, decoder=[k, hidden], m=1_000_000, hash="multiply_shift", encoding="uniform",
                        activation="none", batch_norm=False, seed=0, cache=cache_off)
    torch.manual_seed(0)
    module = (DeepHashEmbedding(range(spec.num_tables), params,
                                spec.embedding_dim).eval().requires_grad_(False))
    figures = []
    for exponent in exponents:
        generator = SyntheticCriteo(spec.table_rows, zipf_exponent=exponent, seed=0)
        for rows in cache_rows:
            hot = [torch.from_numpy(s.id_of_rank(np.arange(min(rows, s.rows)))) for s in generator.samplers]
            cache = attach(module, hot)
            for q in sizes:
                pool = [torch.from_numpy(generator.batch(i, q)[1]) for i in range(4)]

                def run(enabled, pool=pool):
                    def call(step, pool=pool):
                        module.cache_enabled = enabled
                        module(pool[step % len(pool)])
                    return call

                t = interleaved({"cached": run(True), "uncached": run(False)}, args.repetitions, block_s,
                                min_iters=2, warmup=1)
                module.cache_enabled = True
                figures.append({"zipf_exponent": exponent, "cache_rows_per_table": rows,
                                "cache_bytes": cache.nbytes, "query_size": q,
                                "hit_rate": float(np.mean([cache.hit_rate(ids) for ids in pool])),
                                "cached_ms": t["cached"]["median_s"] * 1e3,
                                "uncached_ms": t["uncached"]["median_s"] * 1e3,
                                "speedup": t["uncached"]["median_s"] / t["cached"]["median_s"]})
                f = figures[-1]
                print(
                    f"zipf {exponent:<4} cache {rows:>6}/table ({f['cache_bytes'] / 1e6:6.1f} MB) q={q:>5}: "
                    f"hit rate {f['hit_rate']:.3f}  dhe {f['uncached_ms']:8.2f} ms  dhe+cache "
                    f"{f['cached_ms']:8.2f} ms  speedup {f['speedup']:5.2f}x"
                )
    print(f"written: {write_report('dhe_cache', {'rows': figures})}")
    return {"rows": figures}


if __name__ == "__main__":
    main()
