"""What if the devices were faster or slower: MP-Rec's headline ratio over a grid of device speeds.

The paper measured 2.49x (Kaggle) on its own CPU-GPU system; a pair of this project's profiles gives
another figure. Where does the difference come from? This sweep scales the measured profiles (host-CPU
paths' latencies divided by `cpu_speedups`, for more or faster cores; every other device's multiplied by
`gpu_slowdowns`, for a slower accelerator), simulates the study at each point, with and without device
batching, and records the headline ratio (MP-Rec's correct predictions per second against the best static
path's). Each point is labelled a scaled stand-in, never a measurement; the (1, 1) point is the measured
pair itself. `python -m harness.serving what_if.enabled=true` writes whatif.csv and whatif.png.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd

from harness.core.paths import PathLabel
from harness.serving.config import ServingConfig
from harness.serving.profiles import PathProfile

PAPER_KAGGLE = 2.49  # MP-Rec's correct-prediction throughput over the best static path, the paper's abstract


def scaled(profiles: list[PathProfile], cpu_speedup: float, gpu_slowdown: float) -> list[PathProfile]:
    """Each profile's latencies scaled: host-CPU paths divided by `cpu_speedup`, the others multiplied by
    `gpu_slowdown`; the source says so."""
    out = []
    for p in profiles:
        on_cpu = PathLabel.parse(p.path).backend == "cpu"
        factor = 1 / cpu_speedup if on_cpu else gpu_slowdown
        if factor == 1:
            out.append(p)
            continue
        out.append(replace(p, latency_ms=tuple(v * factor for v in p.latency_ms),
                           p99_ms=tuple(v * factor for v in p.p99_ms),
                           source=f"{p.source}; what-if: latency x {factor:.3g}"))
    return out


def what_if(cfg: ServingConfig, profiles: list[PathProfile]) -> pd.DataFrame:
    """One row per (cpu speedup, gpu slowdown, batching): MP-Rec's headline ratio there, or why none."""
    from harness.serving.study import run_study  # the simulator; imported when a sweep is asked for

    grid = cfg.what_if
    quick = replace(cfg, queries=grid.queries, load_points=1)
    rows = []
    for cpu in grid.cpu_speedups:
        for gpu in grid.gpu_slowdowns:
            row: dict = {"cpu_speedup": cpu, "gpu_slowdown": gpu}
            try:
                study = run_study(quick, scaled(profiles, cpu, gpu))
            except ValueError as exc:  # no path meets the target there: said, not a crash
                why = str(exc)[:200]
                rows += [{**row, "batching": b, "ratio": math.nan, "why": why} for b in (False, True)]
                continue
            for batching, head in ((False, study.headline), (True, study.headline.get("with_batching"))):
                head = head or {}
                rows.append({**row, "batching": batching, "ratio": head.get("ratio", math.nan),
                             "accuracy_term": head.get("accuracy_term", math.nan),
                             "throughput_term": head.get("throughput_term", math.nan),
                             "why": "" if "ratio" in head else "no MP-Rec or static policy met the target"})
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, out: Path) -> Path:
    """The ratio as a map per batching mode: cells annotated, the paper's 2.49x and 2x outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted(table["batching"].unique())
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4.2), squeeze=False)
    for ax, batching in zip(axes[0], modes):
        grid = table[table["batching"] == batching].pivot(index="gpu_slowdown", columns="cpu_speedup",
                                                           values="ratio")
        image = ax.imshow(grid.values, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(grid.columns)), [f"{c:g}x" for c in grid.columns])
        ax.set_yticks(range(len(grid.index)), [f"{g:g}x" for g in grid.index])
        for (i, j), value in pd.DataFrame(grid.values).stack(future_stack=True).items():
            text = "-" if value != value else f"{value:.2f}"
            bold = value == value and value >= 2.0
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if not bold else "red",
                    fontweight="bold" if bold else "normal")
        ax.set(xlabel="CPU paths faster by", ylabel="GPU paths slower by",
               title=f"MP-Rec / best static, {'with' if batching else 'without'} device batching")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"where MP-Rec's gain comes from (red: >= 2x; the paper: {PAPER_KAGGLE}x); (1x, 1x) is the "
                 "measured pair, the rest scaled stand-ins", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
