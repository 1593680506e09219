"""Serving study: every policy over the same profiles, query sizes and target; max load; the headline.

For each policy: the highest offered load whose latency percentile meets the target (bisection), and at
that load p50/p95/p99, SLA-violation rate, accuracy served and correct predictions per second; a sweep
over offered load for the plot; and the headline: the best MP-Rec policy's correct predictions per second
at its highest load against the best static path's at its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.core.errors import ConfigError
from harness.serving import policies as pol
from harness.serving import sizes as size_dist
from harness.serving.config import ScaledDevice, ServingConfig
from harness.serving.profiles import PathProfile
from harness.serving.simulator import Batching, max_qps, simulate


def draw_sizes(cfg: ServingConfig, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x512E])
    if cfg.sizes.kind in ("quantiles", "mlperf"):
        file = size_dist.MLPERF_QUANTILES if cfg.sizes.kind == "mlperf" else cfg.sizes.file
        return size_dist.from_quantiles(rng, n, size_dist.read_quantiles(file))
    return size_dist.lognormal(rng, n, cfg.sizes.median, cfg.sizes.sigma, cfg.sizes.max)


def scaled_profiles(measured: list[PathProfile], scaled: list[ScaledDevice]) -> list[PathProfile]:
    out = []
    for s in scaled:
        for p in measured:
            rep, backend = p.path.split("@")
            base = rep.split("+")[0]
            if backend == s.source and base in s.per_sample_speedup:
                out.append(p.scaled(s.device, s.per_sample_speedup[base], s.fixed_ms, s.label))
    return out


def threshold_policy(profiles: list[PathProfile], sizes: np.ndarray) -> pol.SizeThreshold | None:
    """DeepRecSys' rule, chosen from the profiles: large queries to the path fastest at the largest size,
    small ones to the path fastest at size 1 on another device (or another path), the threshold where the
    large path overtakes. None if one path is fastest everywhere."""
    largest = int(sizes.max())
    large = min(profiles, key=lambda p: (p.service_ms(largest), p.path))
    others = [p for p in profiles if p.device != large.device] or [p for p in profiles if p is not large]
    if not others:
        return None
    small = min(others, key=lambda p: (p.service_ms(1), p.path))
    crossover = [q for q in range(1, largest + 1, max(1, largest // 512)) if large.service_ms(q) <= small.service_ms(q)]
    threshold = crossover[0] if crossover else int(np.median(sizes))
    return pol.SizeThreshold(small, large, threshold)


def build_policies(cfg: ServingConfig, profiles: list[PathProfile], sizes: np.ndarray) -> list:
    out = []
    if "static" in cfg.policies:
        out += [pol.Static(p) for p in profiles]
    if "size_threshold" in cfg.policies and len(profiles) > 1:
        threshold = threshold_policy(profiles, sizes)
        if threshold is not None:
            out.append(threshold)
    for slack in cfg.mprec_slack:
        if "mprec" in cfg.policies:
            out.append(pol.MPRec(profiles, slack))
        if "mprec_split" in cfg.policies and len({p.device for p in profiles}) > 1:
            out.append(pol.MPRecSplit(profiles, cfg.split_min_size, slack))
    return out


def check_target(profiles: list[PathProfile], sizes: np.ndarray, target_ms: float, percentile: float) -> None:
    """A target no policy can meet even with empty queues is refused up front, with the numbers: the
    query at the target's percentile of sizes must fit on the fastest path (or all devices together)."""
    size = int(np.ceil(np.percentile(sizes, percentile)))
    fastest = min(profiles, key=lambda p: p.service_ms(size))
    by_device = {}
    for p in profiles:  # splitting across devices at best divides the work by their combined speed
        by_device[p.device] = max(by_device.get(p.device, 0.0), size / p.service_ms(size))
    split_ms = size / sum(by_device.values())
    if min(fastest.service_ms(size), split_ms) > target_ms:
        raise ConfigError(
            "target_ms", f"no path meets p{percentile:g} <= {target_ms:g} ms even with empty queues: the "
            f"p{percentile:g} query has {size} samples and the fastest path, {fastest.path}, takes "
            f"{fastest.service_ms(size):.3g} ms (all devices together {split_ms:.3g} ms)")


@dataclass
class Study:
    table: pd.DataFrame  # one row per policy at its max load
    sweep: pd.DataFrame  # policy x offered load
    headline: dict[str, Any]
    profiles: list[PathProfile]


def run_study(cfg: ServingConfig, profiles: list[PathProfile]) -> Study:
    if not profiles:
        raise ValueError("no profiles: the experiment has no finished latency runs and no profile file was given")
    sizes = draw_sizes(cfg, cfg.queries, cfg.seed)
    check_target(profiles, sizes, cfg.target_ms, cfg.percentile)
    policies = build_policies(cfg, profiles, sizes)
    modes: list[Batching | None] = [None]
    if cfg.batching.enabled:
        modes.append(Batching(cfg.batching.max_samples, tuple(cfg.batching.devices), cfg.batching.cpu))
    rows, best = [], {}
    for batching in modes:
        for policy in policies:
            name = policy.name + ("" if batching is None else BATCHED)
            qps, result = max_qps(policy, profiles, sizes, cfg.target_ms, cfg.percentile, cfg.seed,
                                  batching=batching)
            row = {"policy": name, "batching": batching is not None, "max_qps": qps}
            if result is not None:
                row.update({k: v for k, v in result.summary().items() if k != "offered_qps"})
                row["path_share"] = {p: round(n / result.sizes.sum(), 3) for p, n in result.path_samples.items() if n}
            rows.append(row)
            best[name] = qps
    table = pd.DataFrame(rows)
    top = max(best.values()) if best else 0.0
    loads = np.linspace(0.1, 1.2, cfg.load_points) * top if top > 0 else []
    base = np.cumsum(np.random.default_rng([cfg.seed, 0xA11]).exponential(1.0, len(sizes)))
    sweep = []
    for batching in modes:
        for policy in policies:
            for load in loads:
                r = simulate(policy, profiles, base / load, sizes, cfg.target_ms, batching)
                sweep.append({"policy": policy.name + ("" if batching is None else BATCHED), **r.summary(),
                              f"p{cfg.percentile:g}_ms": r.percentile(cfg.percentile)})
    lead = headline(table[~table["batching"]]) if len(table) else {}
    if cfg.batching.enabled and len(table):
        lead["with_batching"] = headline(table[table["batching"]])
    return Study(table, pd.DataFrame(sweep), lead, profiles)


BATCHED = " +batching"


def headline(table: pd.DataFrame) -> dict[str, Any]:
    """The best MP-Rec policy against the best static path, each at its own highest load meeting the target."""
    if table.empty or "correct_per_s" not in table:
        return {}
    static = table[table["policy"].str.startswith("static:")]
    dynamic = table[table["policy"].str.startswith("mprec")]
    if static.empty or dynamic.empty:
        return {}
    s = static.loc[static["correct_per_s"].fillna(-1).idxmax()]
    d = dynamic.loc[dynamic["correct_per_s"].fillna(-1).idxmax()]
    ratio = d["correct_per_s"] / s["correct_per_s"] if s["correct_per_s"] else math.inf
    out = {"mprec_policy": d["policy"], "best_static": s["policy"],
           "mprec_correct_per_s": d["correct_per_s"], "static_correct_per_s": s["correct_per_s"],
           "ratio": ratio, "accuracy_gain_points": 100 * (d["accuracy_served"] - s["accuracy_served"]),
           "mprec_max_qps": d["max_qps"], "static_max_qps": s["max_qps"]}
    threshold = table[table["policy"].str.startswith("size_threshold")]
    if not threshold.empty and threshold["correct_per_s"].iloc[0]:
        out["size_threshold_correct_per_s"] = threshold["correct_per_s"].iloc[0]
        out["ratio_vs_size_threshold"] = d["correct_per_s"] / threshold["correct_per_s"].iloc[0]
    return out


def plot(study: Study, cfg: ServingConfig, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    pct = f"p{cfg.percentile:g}_ms"
    sweep = study.sweep if len(study.sweep) else pd.DataFrame(columns=["policy", "offered_qps", pct, "correct_per_s"])
    for name, g in sweep.groupby("policy", sort=True):
        style = "-" if name.startswith("mprec") else "--"
        left.plot(g["offered_qps"], g[pct], style, marker=".", label=name)
        right.plot(g["offered_qps"], g["correct_per_s"], style, marker=".", label=name)
    left.axhline(cfg.target_ms, color="black", linewidth=0.8)
    left.set(yscale="log", xlabel="offered load (queries/s)", ylabel=f"{pct.replace('_ms', '')} latency (ms)",
             title=f"tail latency (target {cfg.target_ms:g} ms)")
    right.set(xlabel="offered load (queries/s)", ylabel="correct predictions / s (within target)",
              title="correct-prediction throughput")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
