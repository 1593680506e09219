"""Criteo reader throughput against a plain pandas.read_csv of the same file.

    python -m benchmarks.criteo_reader               # 500,000 rows (about 120 MB), 3 repetitions
    python -m benchmarks.criteo_reader --tiny        # seconds (CI)

The file is written in the Kaggle train.txt format (TSV, no header, 8-digit hex categoricals, ~10% of
fields empty) from seeded random values. Figures: rows/s of the reader on one core (pyarrow without
threads), with pyarrow's threads, and of `pandas.read_csv(path, sep="\\t", header=None)`, which parses
but does not preprocess (no hex decoding, no log, no modulo, no malformed-line accounting).
Target: >= 200,000 rows/s on one core.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, interleaved, write_report
from harness.core.spec import KAGGLE_ROWS
from harness.data.criteo import CriteoReader


def write_criteo_tsv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < 0.25).astype(int).astype(str)
    ints = np.floor(np.exp(rng.normal(2.0, 2.0, (rows, 13)))).astype(np.int64).astype(str)
    ints[rng.random((rows, 13)) < 0.2] = ""
    cats = np.char.mod("%08x", rng.integers(0, 2**32, (rows, 26), dtype=np.uint64))
    cats[rng.random((rows, 26)) < 0.1] = ""
    columns = np.concatenate([labels[:, None], ints, cats], axis=1)
    with open(path, "w") as f:
        for start in range(0, rows, 50_000):
            f.write("\n".join("\t".join(r) for r in columns[start : start + 50_000].tolist()) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rows, args.repetitions = 20_000, 3
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"criteo_{args.rows}.tsv"
    if not path.is_file():
        write_criteo_tsv(path, args.rows)

    def reader(threads: bool):
        def read(i):
            n = sum(len(chunk.labels) for chunk in CriteoReader(path, KAGGLE_ROWS, use_threads=threads))
            assert n == args.rows
        return read

    def pandas_read(i):
        import pandas as pd

        assert len(pd.read_csv(path, sep="\t", header=None)) == args.rows

    t = interleaved({"reader_one_core": reader(False), "reader_threads": reader(True), "pandas": pandas_read},
                    args.repetitions, block_s=0.0, min_iters=1, warmup=1)
    rate = {name: args.rows / v["median_s"] for name, v in t.items()}
    figures = {
        "rows": args.rows,
        "file_bytes": path.stat().st_size,
        "rows_per_s": rate,
        "reader_one_core_over_pandas": rate["reader_one_core"] / rate["pandas"],
        "reader_threads_over_pandas": rate["reader_threads"] / rate["pandas"],
        "blocks_s": {name: v["blocks_s"] for name, v in t.items()},
    }
    print(f"Criteo reader, {args.rows:,} rows ({figures['file_bytes'] / 1e6:.0f} MB TSV):")
    for name, r in rate.items():
        print(f"  {name:16s} {r:>12,.0f} rows/s")
    print(f"  reader (one core) / pandas.read_csv: {figures['reader_one_core_over_pandas']:.2f}; "
          f"reader (threads) / pandas: {figures['reader_threads_over_pandas']:.2f}")
    print(f"written: {write_report('criteo_reader', figures)}")
    return figures


if __name__ == "__main__":
    main()
