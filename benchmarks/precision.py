"""Reduced precision against fp32, side by side in one run (docs/performance.md, "Precision").

    python -m benchmarks.precision                 # Kaggle scale 1.0 (2.16 GB tables), ~10 minutes on 2 cores
    python -m benchmarks.precision --tiny          # seconds-long shapes (what the CI test runs)

1. Latency, whole DLRM forward, p50 per query size (1, 64, 1024, 4096), for table (fp32, bf16, int8
   rows in fp32 and bf16, int4 rows), tt, dhe and hybrid (fp32, bf16): each precision's model is built
   from the same fp32 weights (precision applied as a run applies it) and timed interleaved with its fp32
   twin.
2. Lookups alone: int8 rows against fp32 rows at 4096 (one call for every table); DHE's whole lookup
   (hashing included) and its decoders alone, fp32 against bf16, with their GFLOP/s against the GEMM
   peaks of each precision measured in the same run (the harness's own peak kernels).
3. Accuracy: each representation trained in fp32 on synthetic Kaggle data, then evaluated on the same
   held-out samples in fp32, bf16 and (tables) int8 and int4 rows: the deltas a run records as
   `accuracy_delta`.

The CPU's flags (native bf16 or not) are in the report's environment; ratios compare only within it.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from benchmarks.common import interleaved, torch_cpu_capabilities, write_report
from harness.core.conf import compose
from harness.core.host import native_cpu_dtype, numeric_flags
from harness.data.sources import open_dataset
from harness.pipeline.config import load_config, workload_spec
from harness.workload.device import configure_for
from harness.workload.dlrm import build_model
from harness.workload.precision import apply_precision
from harness.workload.training import evaluate_model, train

SIZES = (1, 64, 1024, 4096)
VARIANTS = {  # representation -> [(label, precision, storage)]
    "table": [("fp32", "fp32", "fp32"), ("bf16", "bf16", "fp32"), ("int8", "fp32", "int8"),
              ("int8+bf16", "bf16", "int8"), ("int4", "fp32", "int4")],
    "tt": [("fp32", "fp32", None), ("bf16", "bf16", None)],
    "dhe": [("fp32", "fp32", None), ("bf16", "bf16", None)],
    "hybrid": [("fp32", "fp32", "fp32"), ("bf16", "bf16", "fp32")],
}


def _spec(representation: str, scale: float, precision: str = "fp32", storage: str | None = None, extra=()):
    overrides = [f"representation={representation}", f"dataset.scale={scale}", f"precision={precision}",
                 *extra]
    if storage:
        overrides.append(f"representation.storage={storage}")
    run = load_config(compose(overrides))
    return run, workload_spec(run)


def _variant(model, precision: str, storage: str | None):
    """A copy of `model` in (precision, storage), sharing fp32 table weights it does not change."""
    shared = {id(p): p for n, p in model.named_parameters() if n.endswith("weight") and p.numel() > 1 << 22}
    twin = copy.deepcopy(model, memo=dict(shared))
    apply_precision(twin, precision, storage or "fp32")
    configure_for(twin, torch_cpu_capabilities())
    return twin.eval().requires_grad_(False)


def _batch(spec, size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, r, (size, spec.ids_per_lookup),
                                     generator=gen) for r in spec.table_rows], 1)
    return torch.rand(size, 13, generator=gen), ids


def latency(scale: float, sizes: tuple[int, ...], repetitions: int, block_s: float) -> dict:
    out = {}
    for representation, variants in VARIANTS.items():
        run, spec = _spec(representation, scale)
        model = build_model(spec, seed=0).eval().requires_grad_(False)
        configure_for(model, torch_cpu_capabilities())
        models = {label: (model if label == "fp32" else _variant(model, p, s)) for label, p, s in variants}
        rows = {}
        for q in sizes:
            dense, ids = _batch(spec, q)
            with torch.inference_mode():
                timed = interleaved({label: (lambda i, m=m, dense=dense, ids=ids: m(dense, ids))
                                     for label, m in models.items()},
                                    repetitions=repetitions, block_s=block_s, min_iters=3, warmup=2)
            base = timed["fp32"]["median_s"]
            rows[q] = {label: {"p50_ms": t["median_s"] * 1e3, "fp32_over_this": base / t["median_s"]}
                       for label, t in timed.items()}
            print(
                f"{representation:7s} q={q:5d} "
                + "  ".join(
                    f"{label} {r['p50_ms']:8.2f} ms ({r['fp32_over_this']:.2f}x)"
                    for label, r in rows[q].items()
                ),
                flush=True,
            )
        out[representation] = rows
        del model, models
    return out


def gemm_peaks(tiny: bool, repetitions: int, block_s: float) -> dict:
    """The fp32 and bf16 GEMM peaks from the harness's own peak kernels (backends/torch_kernels.py),
    timed interleaved: what a run's `device_gemm_gflops` and `device_gemm_bf16_gflops` measure."""
    from backends.torch_kernels import torch_peak_kernels
    from harness.core.host import host_memory_bytes

    kernels = torch_peak_kernels("cpu", host_memory_bytes(), 0.05 if tiny else 1.0, ("fp32", "bf16"))
    chosen = {"fp32": kernels["gemm"], "bf16": kernels["gemm_bf16"]}
    timed = interleaved({k: (lambda i, run=run: run()) for k, (run, _, _) in chosen.items()},
                        repetitions=repetitions, block_s=block_s, min_iters=3)
    return {k: chosen[k][1] / t["median_s"] / 1e9 for k, t in timed.items()}


def lookups(scale: float, repetitions: int, block_s: float, size: int, peaks: dict,
            dhe_sizes: tuple[int, ...] = (1024, 4096)) -> dict:
    figures = {"table_lookup": table_lookup(scale, repetitions, block_s, size)}
    for q in dhe_sizes:
        figures[f"dhe_q{q}"] = dhe_lookup(scale, repetitions, block_s, q, peaks)
    return figures


def table_lookup(scale: float, repetitions: int, block_s: float, size: int) -> dict:
    """fp32 rows against int8 rows, the lookup alone, side by side."""
    _, spec = _spec("table", scale)
    tables = build_model(spec, seed=0).sparse_arch.eval().requires_grad_(False)
    configure_for(tables, torch_cpu_capabilities())  # both as a CPU run's tables: the fp32 rows' kernel too
    int8 = copy.deepcopy(tables, memo={id(tables.weight): tables.weight})
    int8.store_as("int8")
    _, ids = _batch(spec, size)
    with torch.inference_mode():
        timed = interleaved({"fp32": lambda i, m=tables: m(ids), "int8": lambda i, m=int8: m(ids)},
                            repetitions, block_s, 3)
    out = {k: t["median_s"] * 1e3 for k, t in timed.items()}
    out["fp32_over_int8"] = timed["fp32"]["median_s"] / timed["int8"]["median_s"]
    print(f"table lookup q={size}: fp32 {out['fp32']:.2f} ms, int8 {out['int8']:.2f} ms "
          f"({out['fp32_over_int8']:.2f}x)", flush=True)
    return out


def dhe_lookup(scale: float, repetitions: int, block_s: float, q: int, peaks: dict) -> dict:
    """DHE in fp32 against bf16 at query size q: the whole lookup, the decoders and the hash, side by side."""
    from harness.workload.precision import cast_compute
    from harness.workload.representations.dhe import dhe_cost

    _, spec = _spec("dhe", scale)
    dhe = build_model(spec, seed=0).sparse_arch.eval().requires_grad_(False)
    configure_for(dhe, torch_cpu_capabilities())
    dhe16 = copy.deepcopy(dhe)
    cast_compute(dhe16, torch.bfloat16)
    flops = dhe_cost(spec.num_tables, spec.representation, spec.embedding_dim, 1).flops_per_sample
    _, ids = _batch(spec, q)
    with torch.inference_mode():
        codes, codes16 = dhe.encode(ids), dhe16.encode(ids)  # each in its decoders' dtype, as a run has them
        whole = interleaved({"fp32": lambda i: dhe(ids), "bf16": lambda i: dhe16(ids)}, repetitions, block_s,
                            3)
        decoders = interleaved({"fp32": lambda i: dhe.decode(codes), "bf16": lambda i: dhe16.decode(codes16)},
                               repetitions, block_s, 3)
        hashing = interleaved({"hash": lambda i: dhe.encode(ids), "hash_bf16": lambda i: dhe16.encode(ids)},
                              repetitions, block_s, 3)
    row = {"whole_ms": {k: t["median_s"] * 1e3 for k, t in whole.items()},
           "decoders_ms": {k: t["median_s"] * 1e3 for k, t in decoders.items()},
           "hash_ms": hashing["hash"]["median_s"] * 1e3,
           "hash_bf16_ms": hashing["hash_bf16"]["median_s"] * 1e3,
           "whole_fp32_over_bf16": whole["fp32"]["median_s"] / whole["bf16"]["median_s"],
           "decoders_fp32_over_bf16": decoders["fp32"]["median_s"] / decoders["bf16"]["median_s"],
           "decoder_gflops": {k: flops * q / t["median_s"] / 1e9 for k, t in decoders.items()}}
    row["decoder_fraction_of_gemm_peak"] = {k: row["decoder_gflops"][k] / peaks[k] for k in ("fp32", "bf16")}
    fraction = row["decoder_fraction_of_gemm_peak"]
    print(f"dhe q={q}: whole fp32 {row['whole_ms']['fp32']:.1f} ms, bf16 {row['whole_ms']['bf16']:.1f} ms "
          f"({row['whole_fp32_over_bf16']:.2f}x; hashing {row['hash_ms']:.1f} ms); decoders "
          f"{row['decoder_gflops']['fp32']:.0f} / {row['decoder_gflops']['bf16']:.0f} GFLOP/s = "
          f"{fraction['fp32']:.0%} / {fraction['bf16']:.0%} of the fp32 / bf16 GEMM peaks", flush=True)
    return row


def param_bytes() -> dict:
    """Kaggle scale 1.0 table model's bytes per storage (the cost model's, which the dry run prints)."""
    from harness.workload.cost import path_cost

    out = {storage: path_cost(_spec("table", 1.0, storage=storage)[1]).param_bytes
           for storage in ("fp32", "fp16", "int8", "int4")}
    out["int8_over_fp32"] = out["int8"] / out["fp32"]
    out["int4_over_fp32"] = out["int4"] / out["fp32"]
    return out


def accuracy(scale: float, steps: int, eval_samples: int) -> dict:
    out = {}
    for representation, variants in VARIANTS.items():
        run, spec = _spec(representation, scale, extra=[f"train.steps={steps}", f"train.eval_every={steps}",
                                                        f"train.eval_samples={eval_samples}"])
        model = build_model(spec, seed=run.seed)
        dataset = open_dataset(run.dataset, spec)
        t0 = time.perf_counter()
        train(model, dataset, run.train, run.seed)
        eval_set = dataset.eval_set(run.train.eval_samples)
        rows = {}
        for label, precision, storage in variants:
            twin = copy.deepcopy(model)
            apply_precision(twin, precision, storage or "fp32")
            rows[label] = evaluate_model(twin, eval_set).as_dict()
        for r in rows.values():
            for key in ("accuracy", "auc", "log_loss"):
                r[f"{key}_delta"] = r[key] - rows["fp32"][key]
        out[representation] = rows
        print(
            f"{representation:7s} trained {steps} steps in {time.perf_counter() - t0:.0f} s: "
            + "  ".join(
                f"{label} acc {r['accuracy']:.4f} ({100 * r['accuracy_delta']:+.3f} pt)"
                for label, r in rows.items()
            ),
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="seconds-long shapes (CI)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args(argv)
    from backends.cpu import set_allocator

    set_allocator("retain")  # as a run's CPU adapter does (backend.allocator's default)
    tiny = args.tiny
    scale = 0.0001 if tiny else args.scale
    sizes = (1, 64) if tiny else SIZES
    reps, block = (1, 0.02) if tiny else (3, 0.5)
    print(
        f"CPU flags {','.join(numeric_flags())}; bf16 {native_cpu_dtype('bf16')}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    peaks = gemm_peaks(tiny, reps, block)
    print(f"GEMM peaks: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s "
          f"({peaks['bf16'] / peaks['fp32']:.1f}x)", flush=True)
    figures = {"scale": scale, "sizes": list(sizes), "gemm_peak_gflops": peaks,
               "bf16": native_cpu_dtype("bf16"), "latency": latency(scale, sizes, reps, block),
               "lookups": lookups(scale, reps, block, 64 if tiny else 4096, peaks,
                                  (64,) if tiny else (1024, 4096)), "param_bytes": param_bytes()}
    if not args.skip_accuracy:
        figures["accuracy"] = accuracy(0.0001 if tiny else 0.01, 20 if tiny else 2000, 512 if tiny else 32768)
    path = write_report("precision", figures)
    print(f"report: {path}")
    print(json.dumps({"median_bf16_speedup_at_largest": statistics.median(
        rows[max(sizes)]["bf16"]["fp32_over_this"] for rows in figures["latency"].values())}))
    return figures


if __name__ == "__main__":
    main()
