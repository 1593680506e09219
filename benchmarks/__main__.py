"""Every performance benchmark in one run, and the JSON of ratios that guards against regressions.

    python -m benchmarks                      # all of them, full size (about 20 minutes on 2 cores)
    python -m benchmarks --tiny               # seconds-long shapes: what the CI test runs
    python -m benchmarks --only limits,torchrec_compare
    python -m benchmarks --collect            # no runs: ratios from the reports already in results/benchmarks

Each benchmark writes its own report (results/benchmarks/<name>.json, environment included); this writes
results/benchmarks/ratios.json: every headline figure with its target, whether it met it, and the report
it came from. Compare two ratios.json files to see a regression; no test times anything.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from typing import Any, Callable

from benchmarks.common import RESULTS, write_report

BENCHMARKS = ["table_path", "torchrec_compare", "limits", "representations", "dhe_cache", "criteo_reader",
              "serving", "harness_overhead", "precision", "roofline"]

Ratio = dict[str, Any]


def _ratio(value: float, target: str | None = None, note: str = "") -> Ratio:
    meets = None
    if target:
        op, bound = target.split(" ")
        meets = {">=": value >= float(bound), "<=": value <= float(bound), "<": value < float(bound)}[op]
    return {"value": value, "target": target, "meets": meets, "note": note}


def _table_path(f: dict) -> dict[str, Ratio]:
    p = f["path_vs_bare"]
    return {"table_path.harness_over_bare": _ratio(p["harness_over_bare"], ">= 0.8",
                                                   "samples/s, same weights and ids"),
            "table_path.loop_overhead_us": _ratio(p["loop_overhead_us"], None, "per iteration, empty model"),
            "table_path.overhead_fraction_of_q1": _ratio(p["overhead_fraction_of_q1"], "< 0.02")}


def _torchrec(f: dict) -> dict[str, Ratio]:
    out = {"torchrec.min_infer_ours_over_ebc": _ratio(f["min_infer_ours_over_ebc"], ">= 1.0"),
           # issue 24 raised the training target from 0.8x to 1.0x
           "torchrec.min_train_ours_over_fused": _ratio(f["min_train_ours_over_fused"], ">= 1.0")}
    for c in f["cases"]:
        key = f"torchrec.scale{c['scale']:g}.q{c['query_size']}.ids{c['ids_per_feature']}"
        out[f"{key}.infer_over_ebc"] = _ratio(c["infer_ours_over_ebc"], ">= 1.0")
        out[f"{key}.infer_over_fused"] = _ratio(c["infer_ours_over_fused"])
        out[f"{key}.train_over_fused"] = _ratio(c["train_ours_over_fused"], ">= 1.0")
    return out


def _limits(f: dict) -> dict[str, Ratio]:
    out = {}
    table_sizes = f["table"]["sizes"]
    largest = max(table_sizes, key=int)
    for q, row in table_sizes.items():
        # The target holds against the gather at the path's own row width (64-byte rows): a random row
        # costs one DRAM access whatever its width, so 256-byte rows' bytes/s is out of reach for 64-byte
        # rows (docs/performance.md); that fraction is reported beside it.
        target = ">= 0.7" if q == largest else None
        out[f"limits.table.q{q}.fraction_of_gather64"] = _ratio(row["fraction_of_gather64"], target,
                                                               "gather at the path's row width (64 B)")
        out[f"limits.table.q{q}.fraction_of_gather"] = _ratio(row["fraction_of_gather"], None,
                                                             "the roofline's 256-byte-row gather")
    for q, row in f["dhe"]["sizes"].items():
        target = ">= 0.6" if int(q) >= 1024 else None
        out[f"limits.dhe.q{q}.decoders_fraction_of_gemm"] = _ratio(row["decoders_fraction_of_gemm"], target)
        out[f"limits.dhe.q{q}.lookup_fraction_of_gemm"] = _ratio(row["lookup_fraction_of_gemm"], None,
                                                                 "hashing included")
    return out


def _representations(f: dict) -> dict[str, Ratio]:
    out = {f"representations.dhe.q{q}.loop_over_bmm": _ratio(r["loop_over_bmm"], None,
                                                             "batched vs looped decoders")
           for q, r in f["dhe_decoders"].items()}
    out["representations.tt.dense_over_tt"] = _ratio(f["tt_vs_dense"]["dense_over_tt"], ">= 1.0")
    return out


def _dhe_cache(f: dict) -> dict[str, Ratio]:
    key = "dhe_cache.zipf{zipf_exponent}.rows{cache_rows_per_table}.q{query_size}.speedup"
    return {key.format(**r): _ratio(r["speedup"]) for r in f["rows"]}


def _criteo_reader(f: dict) -> dict[str, Ratio]:
    return {"criteo_reader.one_core_over_pandas": _ratio(f["reader_one_core_over_pandas"]),
            "criteo_reader.threads_over_pandas": _ratio(f["reader_threads_over_pandas"]),
            "criteo_reader.rows_per_s": _ratio(f["rows_per_s"]["reader_one_core"])}


def _serving(f: dict) -> dict[str, Ratio]:
    return {f"serving.{name}.queries_per_s": _ratio(row["queries_per_s"]) for name, row in f.items()}


def _harness_overhead(f: dict) -> dict[str, Ratio]:
    return {"harness.dry_run_s": _ratio(f["dry_run_s"], "< 3"),
            "harness.default_sweep_s": _ratio(f["sweep_s"], "< 300", f["sweep_command"])}


def _precision(f: dict) -> dict[str, Ratio]:
    largest = str(max(f["sizes"]))
    out = {}
    for rep, rows in f["latency"].items():
        for label, row in rows[largest].items():
            if label != "fp32":
                target = ">= 2.5" if (rep, label) == ("table", "bf16") else None
                out[f"precision.{rep}.q{largest}.{label}_speedup"] = _ratio(row["fp32_over_this"], target,
                                                                           "whole DLRM, fp32 p50 / this p50")
    out["precision.table.int8_lookup_speedup"] = _ratio(f["lookups"]["table_lookup"]["fp32_over_int8"],
                                                        ">= 1.0", "lookup alone, largest size")
    for key, row in f["lookups"].items():
        if key.startswith("dhe_q"):
            big = int(key[5:]) >= 1024
            out[f"precision.{key}.whole_bf16_speedup"] = _ratio(row["whole_fp32_over_bf16"],
                                                                ">= 2.5" if big else None, "hashing included")
            out[f"precision.{key}.decoders_fraction_of_bf16_gemm"] = _ratio(
                row["decoder_fraction_of_gemm_peak"]["bf16"], ">= 0.6" if big else None)
    out["precision.table.int8_param_bytes_over_fp32"] = _ratio(f["param_bytes"]["int8_over_fp32"], "< 0.3",
                                                                "Kaggle 1.0; 8 bytes of scale and bias a row")
    if "int4_over_fp32" in f["param_bytes"]:  # reports written before int4 rows lack it
        out["precision.table.int4_param_bytes_over_fp32"] = _ratio(
            f["param_bytes"]["int4_over_fp32"], "<= 0.21", "Kaggle 1.0; 4 bytes of fp16 scale and bias a row")
    for rep, rows in f.get("accuracy", {}).items():
        for label, row in rows.items():
            if label != "fp32":
                out[f"precision.{rep}.{label}_accuracy_delta_pt"] = _ratio(
                    abs(100 * row["accuracy_delta"]) or 1e-9, "< 0.1", "|points|"
                )
    return out


def _roofline(f: dict) -> dict[str, Ratio]:
    """Issue 24's targets: every table precision >= 80 % of its bound at the largest size, DHE >= 70 % at
    sizes >= 1024 (the bound from the same run's peaks: benchmarks/roofline.py)."""
    out = {}
    for rep, floor in (("table", 0.8), ("dhe", 0.7)):
        rows = f.get(rep, {})
        largest = max(int(q) for q in rows) if rows else 0
        for q, labels in rows.items():
            big = int(q) >= 1024 if rep == "dhe" else int(q) == largest and largest >= 1024
            for label, row in labels.items():
                if label == "dlrm_reference":
                    continue  # not a path of ours: its ratio to each path is recorded below
                out[f"roofline.{rep}.q{q}.{label}.fraction_of_bound"] = _ratio(
                    row["fraction"], f">= {floor}" if big else None, "bound / p50, whole DLRM forward")
                if "hash_share" in row:  # reports written before slice 5 lack it
                    out[f"roofline.{rep}.q{q}.{label}.hash_share_of_lookup"] = _ratio(
                        row["hash_share"], "<= 0.15" if big else None, "DHE codes' p50 / whole lookup's p50")
                if "reference_over_this" in row:  # where facebookresearch/dlrm was installed
                    out[f"roofline.{rep}.q{q}.{label}.dlrm_reference_over_this"] = _ratio(
                        row["reference_over_this"], None, "DLRM_Net fp32 p50 / this p50 (> 1: ours faster)")
    return {**out, **_int8_never_slower(f)}


# Two copies of the same fp32 model, timed interleaved in one process, differ by up to ~1.5 % here: "never
# slower" is held to that spread, not to a coin toss.
SPREAD = 0.98


def _int8_never_slower(f: dict) -> dict[str, Ratio]:
    """Issue 24's int8 targets: int8 rows never slower than fp32 rows at any size, and int8 rows with bf16
    MLPs the fastest table path from 1024 where the CPU computes bf16 natively."""
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(f.get("cpu_flags", [])))
    out = {}
    for q, labels in f.get("table", {}).items():
        if "int8" in labels:
            out[f"roofline.table.q{q}.int8.fp32_over_this"] = _ratio(
                labels["int8"]["fp32_over_this"], f">= {SPREAD}", "fp32 rows' p50 / int8 rows' p50")
        if "int8+bf16" in labels and "bf16" in labels:
            fastest_other = min(r["p50_ms"] for label, r in labels.items()
                                if label not in ("int8+bf16", "dlrm_reference"))
            out[f"roofline.table.q{q}.int8+bf16.fastest_other_over_this"] = _ratio(
                fastest_other / labels["int8+bf16"]["p50_ms"],
                f">= {SPREAD}" if native_bf16 and int(q) >= 1024 else None,
                "the fastest other table path's p50 / int8 rows with bf16 MLPs' p50")
    return out


RATIOS: dict[str, Callable[[dict], dict[str, Ratio]]] = {
    "table_path": _table_path, "torchrec_compare": _torchrec, "limits": _limits,
    "representations": _representations, "dhe_cache": _dhe_cache, "criteo_reader": _criteo_reader,
    "serving": _serving, "harness_overhead": _harness_overhead, "precision": _precision,
    "roofline": _roofline,
}


def collect(names: list[str]) -> dict[str, Any]:
    ratios, sources = {}, {}
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            sources[name] = "missing: run python -m benchmarks --only " + name
            continue
        report = json.loads(path.read_text())
        sources[name] = str(path)
        for key, value in RATIOS[name](report["figures"]).items():
            ratios[key] = {**value, "report": name}
    return {"ratios": ratios, "reports": sources}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated: " + ",".join(BENCHMARKS))
    parser.add_argument("--collect", action="store_true", help="run nothing; gather the existing reports")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; known: {BENCHMARKS}")
    seconds = {}
    if not args.collect:
        for name in names:
            print(f"\n=== benchmarks.{name}")
            t0 = time.perf_counter()
            importlib.import_module(f"benchmarks.{name}").main(["--tiny"] if args.tiny else [])
            seconds[name] = time.perf_counter() - t0
    result = collect(names)
    result["tiny"] = args.tiny
    result["seconds"] = seconds
    path = write_report("ratios", result)
    print(f"\n{'figure':<58} {'value':>12}  target      met")
    for key, r in result["ratios"].items():
        met = {True: "yes", False: "NO", None: ""}[r["meets"]]
        print(f"{key:<58} {r['value']:>12.4g}  {r['target'] or '':<10}  {met}")
    missed = [k for k, r in result["ratios"].items() if r["meets"] is False]
    print(
        f"\n{len(result['ratios'])} figures, {len(missed)} below target"
        + (f": {', '.join(missed)}" if missed else "")
    )
    print(f"written: {path}")
    return result


if __name__ == "__main__":
    main()
