"""The analysis' figures (PNG), drawn with matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis.mapping import chosen, unreliable_cell


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def _flagged(rows: pd.DataFrame) -> pd.Series:
    """Measurements that broke a stability rule (reliable == 0); NaN (recorded before) is not flagged."""
    return rows["reliable"].eq(0) if "reliable" in rows else pd.Series(False, index=rows.index)


def latency_vs_query_size(runs: pd.DataFrame, workload: str, percentile: str, folder: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path, group in runs[runs["workload"] == workload].groupby("path", sort=True):
        g = group[group["feasible"] > 0].sort_values("query_size")
        if g.empty:
            continue
        line, = ax.plot(g["query_size"], g["p50_ms"], marker="o", label=f"{path} p50")
        ax.fill_between(g["query_size"], g["p50_ms"], g[f"{percentile}_ms"], color=line.get_color(),
                        alpha=0.2)
        bad = g[_flagged(g)]
        if len(bad):
            ax.scatter(bad["query_size"], bad["p50_ms"], marker="x", s=90, color="red", zorder=5)
    if _flagged(runs[runs["workload"] == workload]).any():
        ax.scatter([], [], marker="x", s=90, color="red", label="unreliable measurement")
    ax.set(xscale="log", yscale="log", xlabel="query size (samples)", ylabel="latency (ms)",
           title=f"latency vs query size, {workload} (band: p50 to {percentile})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    out = folder / f"latency_{_slug(workload)}.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def mapping_heatmap(table: pd.DataFrame, workload: str, percentile: str, folder: Path) -> Path:
    plt = _pyplot()
    cells = table[table["workload"] == workload]
    sizes = sorted(cells["query_size"].unique())
    targets = sorted(cells["target_ms"].unique())
    choices = sorted({c for c in cells["choice"] if chosen(c)})
    code = {c: i + 1 for i, c in enumerate(choices)}
    grid = np.zeros((len(sizes), len(targets)))
    fig, ax = plt.subplots(figsize=(1.9 * len(targets) + 5, 0.8 * len(sizes) + 2))
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    shaky = False
    for _, c in cells.iterrows():
        i, j = sizes.index(c["query_size"]), targets.index(c["target_ms"])
        grid[i, j] = code.get(c["choice"], 0) if chosen(c["choice"]) else 0
        text, bbox = (c["choice"] if chosen(c["choice"]) else "-"), None
        if chosen(c["choice"]) and chosen(c.get("runner_up")):  # one colour everywhere still says by how much
            text += f"\n2nd {c['runner_up']} +{100 * c['margin']:.0f}%"
        if unreliable_cell(c):  # hatched: the cell compared an unreliable measurement
            shaky = True
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#555555",
                                   linewidth=0, zorder=2))
            text += "\n(unreliable)"
            bbox = {"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1}
        ax.text(j, i, text, ha="center", va="center", fontsize=6, zorder=3, bbox=bbox)

    # Grey where no path meets the target, then one colour per chosen path, named in the legend.
    colours = ["#dddddd", *plt.get_cmap("tab10").colors[: max(1, len(choices))]]
    cmap = ListedColormap(colours)
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(colours) - 0.5, aspect="auto")
    handles = [Patch(color=colours[0], label="none meets the target")] + [
        Patch(color=colours[code[c]], label=c) for c in choices]
    if shaky:
        handles.append(Patch(facecolor="white", edgecolor="#555555", hatch="///",
                             label="unreliable measurement compared"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xticks(range(len(targets)), [f"{t:g}" for t in targets])
    ax.set_yticks(range(len(sizes)), [str(int(q)) for q in sizes])
    ax.set(xlabel=f"{percentile} latency target (ms)", ylabel="query size",
           title=f"chosen path, {workload} ('-': none meets the target; 2nd: runner-up, its margin)")
    out = folder / f"mapping_{_slug(workload)}.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def pareto(paths: pd.DataFrame, front: pd.Series, workload: str, folder: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rated = paths[(paths["workload"] == workload) & paths["accuracy"].notna()]
    ax.scatter(rated["peak_correct_throughput"], rated["accuracy"], color="tab:blue")
    # Labels of neighbouring points alternate above and below, so close paths (table, tt) stay readable.
    for i, (_, r) in enumerate(rated.sort_values("peak_correct_throughput").iterrows()):
        ax.annotate(r["path"], (r["peak_correct_throughput"], r["accuracy"]), fontsize=8,
                    xytext=(4, 6 if i % 2 == 0 else -12), textcoords="offset points")
    # An honest accuracy axis: at least 2 accuracy points tall, so a 0.05-point difference (noise for a
    # few thousand held-out samples) does not fill the plot's height.
    low, high = rated["accuracy"].min(), rated["accuracy"].max()
    middle, half = (low + high) / 2, max((high - low) / 2 * 1.2, 0.01)
    ax.set_ylim(middle - half, middle + half)
    on_front = rated[front.reindex(rated.index, fill_value=False)].sort_values("peak_correct_throughput")
    ax.plot(on_front["peak_correct_throughput"], on_front["accuracy"], color="tab:red", marker="o",
            markersize=10, markerfacecolor="none", label="Pareto front")
    ax.set(xscale="log", xlabel="peak correct predictions / s (accuracy x samples/s)", ylabel="accuracy",
           title=f"accuracy vs correct-prediction throughput, {workload}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    out = folder / f"pareto_{_slug(workload)}.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def roofline(runs: pd.DataFrame, device: str, folder: Path) -> Path | None:
    """Measured GEMM peak and bandwidths as roofs; each path at each query size by arithmetic intensity."""
    plt = _pyplot()
    rows = runs[(runs["device"] == device) & (runs["feasible"] > 0)].copy()
    if rows.empty:
        return None
    column = (
        "device_gemm_fp32_gflops" if rows["device_gemm_fp32_gflops"].notna().any() else "device_gemm_gflops"
    )
    peak = rows[column].dropna()
    if peak.empty:
        return None
    peak = float(peak.iloc[0])
    q = rows["query_size"]
    flops = rows["flops_per_sample"] * q
    moved = rows["bytes_read_per_sample"] * q + rows["bytes_read_fixed"]
    rows["intensity"] = flops / moved
    rows["gflops"] = flops / (q / rows["samples_per_s"]) / 1e9
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.logspace(np.log10(max(rows["intensity"].min() / 4, 1e-3)), np.log10(rows["intensity"].max() * 4),
                    100)
    for name, style in (("device_gather_gbps", ":"), ("device_gather64_gbps", "-."), ("device_copy_gbps",
                                                                                      "--")):
        bandwidth = rows[name].dropna() if name in rows else rows.iloc[0:0]
        if not bandwidth.empty:
            bw = float(bandwidth.iloc[0])
            ax.plot(x, np.minimum(peak, bw * x), style, color="black",
                    label=f"measured {name.split('_')[1]} {bw:.1f} GB/s, GEMM {peak:.0f} GFLOP/s")
    bf16 = rows["device_gemm_bf16_gflops"].dropna() if "device_gemm_bf16_gflops" in rows else rows.iloc[0:0]
    if not bf16.empty:  # the roof reduced-precision paths are under (harness/core/precision.py)
        ax.axhline(float(bf16.iloc[0]), color="tab:purple", linestyle="--", linewidth=1,
                   label=f"measured bf16 GEMM {float(bf16.iloc[0]):.0f} GFLOP/s")
    for path, group in rows.groupby("path", sort=True):
        ax.plot(group["intensity"], group["gflops"], marker="o", linestyle="-", label=path)
        for _, r in group.iterrows():
            ax.annotate(str(int(r["query_size"])), (r["intensity"], r["gflops"]), fontsize=6,
                        xytext=(2, 2), textcoords="offset points")
    # A point above its own precision's measured roof is impossible: the peak or the measurement is wrong.
    # It is drawn, never silently: a red cross, named in the legend; unreliable sizes are ringed.
    roof = rows["device_gemm_gflops"].where(rows["device_gemm_gflops"].notna(), peak)
    above = rows[rows["gflops"] > roof]
    if len(above):
        ax.scatter(above["intensity"], above["gflops"], marker="X", s=110, color="red", zorder=5,
                   label="above the measured roof (flagged)")
    bad = rows[_flagged(rows)]
    if len(bad):
        ax.scatter(bad["intensity"], bad["gflops"], s=130, facecolors="none", edgecolors="red", zorder=4,
                   label="unreliable measurement")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte read)", ylabel="GFLOP/s",
           title=f"roofline, {device} (points: query sizes)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    out = folder / f"roofline_{_slug(device)}.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
