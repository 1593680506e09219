"""Query sizes (samples per query): a lognormal, or MLPerf's DLRM quantiles (inverse CDF).

>>> import numpy as np
>>> sizes = lognormal(np.random.default_rng(0), 100_000, median=165, sigma=0.8, max_size=4096)
>>> int(np.median(sizes)) in range(160, 171)
True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def lognormal(rng: np.random.Generator, n: int, median: float, sigma: float, max_size: int) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(np.log(median), sigma, n)), 1, max_size).astype(np.int64)


def read_quantiles(path: str | Path) -> np.ndarray:
    """Quantile file: comma- or space-separated sizes at p = 1/n, 2/n, ..., 1. Errors name the file."""
    text = Path(path).read_text()
    try:
        values = np.array([float(v) for v in text.replace(",", " ").split()])
    except ValueError as exc:
        raise ValueError(f"{path}: not a list of numbers ({exc})") from None
    if values.size == 0:
        raise ValueError(f"{path}: no quantiles")
    bad = np.flatnonzero(values < 1)
    if bad.size:
        raise ValueError(
            f"{path}: query sizes must be >= 1; value {values[bad[0]]:g} at position {bad[0] + 1}"
        )
    if np.any(np.diff(values) < 0):
        raise ValueError(f"{path}: quantiles must not decrease")
    return values


MLPERF_QUANTILES = Path(__file__).parent / "data" / "mlperf_dlrm_query_size_quantiles.txt"


def from_quantiles(rng: np.random.Generator, n: int, quantiles: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling, linear between the quantile points (p = k/len, k = 1..len; p = 0 -> the
    first)."""
    p = np.concatenate([[0.0], np.arange(1, len(quantiles) + 1) / len(quantiles)])
    q = np.concatenate([[quantiles[0]], quantiles])
    return np.maximum(1, np.rint(np.interp(rng.random(n), p, q))).astype(np.int64)
