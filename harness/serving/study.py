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

from harness.core import prices
from harness.core.errors import ConfigError
from harness.core.paths import PathLabel
from harness.serving import policies as pol
from harness.serving import sizes as size_dist
from harness.serving.config import ScaledDevice, ServingConfig
from harness.serving.profiles import PathProfile
from harness.serving.simulator import Batching, max_qps, simulate


def draw_sizes(cfg: ServingConfig, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x512E])
    if cfg.sizes.kind in ("quantiles", "mlperf"):
        file = size_dist.MLPERF_QUANTILES if cfg.sizes.kind == "mlperf" else cfg.sizes.file
        assert file is not None  # ServingConfig.check: kind=quantiles needs a file
        return size_dist.from_quantiles(rng, n, size_dist.read_quantiles(file))
    return size_dist.lognormal(rng, n, cfg.sizes.median, cfg.sizes.sigma, cfg.sizes.max)


def scaled_profiles(measured: list[PathProfile], scaled: list[ScaledDevice]) -> list[PathProfile]:
    out = []
    for s in scaled:
        for p in measured:
            label = PathLabel.parse(p.path)  # table@cpu/bf16 and table:int8@cpu are tables on the cpu too
            base = label.representation_name
            if label.backend == s.source and base in s.per_sample_speedup:
                out.append(p.scaled(s.device, s.per_sample_speedup[base], s.fixed_ms, s.label))
    return out


def build_policies(cfg: ServingConfig, profiles: list[PathProfile], sizes: np.ndarray) -> list:
    """Every policy of `cfg.policies`, by kind (harness/serving/policies.py: REGISTRY)."""
    return [policy for kind in cfg.policies for policy in pol.REGISTRY[kind].instances(profiles, sizes, cfg)]


def check_target(profiles: list[PathProfile], sizes: np.ndarray, target_ms: float, percentile: float) -> None:
    """A target no policy can meet even with empty queues is refused up front, with the numbers: the
    query at the target's percentile of sizes must fit on the fastest path (or all devices together)."""
    size = int(np.ceil(np.percentile(sizes, percentile)))
    fastest = min(profiles, key=lambda p: p.service_ms(size))
    by_device: dict[str, float] = {}
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
        raise ValueError(
            "no profiles: the experiment has no finished latency runs and no profile file was given"
        )
    sizes = draw_sizes(cfg, cfg.queries, cfg.seed)
    check_target(profiles, sizes, cfg.target_ms, cfg.percentile)
    policies = build_policies(cfg, profiles, sizes)
    modes: list[Batching | None] = [None]
    if cfg.batching.enabled:
        modes.append(Batching(cfg.batching.max_samples, tuple(cfg.batching.devices), cfg.batching.cpu))
    rows, best = [], {}
    rates = device_rates(profiles, prices.load(cfg.prices_file))
    for batching in modes:
        for policy in policies:
            name = policy.name + ("" if batching is None else BATCHED)
            qps, result = max_qps(policy, profiles, sizes, cfg.target_ms, cfg.percentile, cfg.seed,
                                  batching=batching)
            row = {"policy": name, "kind": policy.kind, "batching": batching is not None, "max_qps": qps}
            if result is not None:
                row.update({k: v for k, v in result.summary().items() if k != "offered_qps"})
                row["path_share"] = {p: round(float(n / result.sizes.sum()), 3)
                                     for p, n in result.path_samples.items() if n}
                row.update(cost(result, rates))
            rows.append(row)
            best[name] = qps
    table = pd.DataFrame(rows)
    top = max(best.values()) if best else 0.0
    loads = np.linspace(0.1, 1.2, cfg.load_points) * top if top > 0 else np.zeros(0)
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


def backend_of_path(path: str) -> str:
    """The backend of a profile's label, without the host a label measured on two machines carries
    (`table@cpu (host 1a2b)`: harness/analysis/runs.py separate_hosts)."""
    return PathLabel.parse(path).backend.split(" ")[0]


def device_rates(profiles: list[PathProfile], table: list[prices.Price]) -> dict[str, float | None]:
    """$/hour of each device the profiles run on (a host CPU: per core its paths used, the most of them);
    None where the price table has no entry."""
    rates: dict[str, float | None] = {}
    for p in profiles:
        rate = prices.rate(table, p.device, backend_of_path(p.path), p.cores)
        known = rates.get(p.device)
        rates[p.device] = rate if known is None else max(known, rate or 0.0)
    return rates


def cost(result, rates: dict[str, float | None]) -> dict[str, Any]:
    """What a policy's system costs: the devices it kept busy, priced; $ per million correct predictions at
    its highest load (NaN, naming the devices, where one has no price)."""
    used = sorted(d for d, busy in result.busy_s.items() if busy > 0)
    unpriced = [d for d in used if rates.get(d) is None]
    usd = math.nan if unpriced or not used else sum(rates[d] or 0.0 for d in used)
    return {"usd_per_hour": usd, "usd_per_million_correct": prices.per_million(usd, result.correct_per_s),
            "unpriced": ", ".join(unpriced)}


def headline(table: pd.DataFrame) -> dict[str, Any]:
    """The best MP-Rec policy against the best static path, each at its own highest load meeting the
    target."""
    if table.empty or "correct_per_s" not in table:
        return {}
    static = table[table["kind"] == pol.Static.kind]
    dynamic = table[table["kind"].isin([pol.MPRec.kind, pol.MPRecSplit.kind])]
    if static.empty or dynamic.empty:
        return {}
    s = static.loc[static["correct_per_s"].fillna(-1).idxmax()]
    d = dynamic.loc[dynamic["correct_per_s"].fillna(-1).idxmax()]
    ratio = d["correct_per_s"] / s["correct_per_s"] if s["correct_per_s"] else math.inf
    out = {"mprec_policy": d["policy"], "best_static": s["policy"],
           "mprec_correct_per_s": d["correct_per_s"], "static_correct_per_s": s["correct_per_s"],
           "ratio": ratio, "accuracy_gain_points": 100 * (d["accuracy_served"] - s["accuracy_served"]),
           "mprec_max_qps": d["max_qps"], "static_max_qps": s["max_qps"]}
    for side, row in (("mprec", d), ("static", s)):  # what each costs (conf/prices.yaml), where priced
        if row.get("usd_per_million_correct", math.nan) == row.get("usd_per_million_correct", math.nan):
            out[f"{side}_usd_per_million_correct"] = row["usd_per_million_correct"]
    if s["accuracy_served"] and s["correct_per_s"] and d["accuracy_served"]:
        # The ratio is exactly accuracy_term x throughput_term (correct/s over accuracy served: about the
        # samples served in time per second; exactly that where the queries in time are as accurate as
        # all), so a reader sees whether MP-Rec's gain is quality or load (the paper's 2.49x, issue 25).
        out["accuracy_term"] = d["accuracy_served"] / s["accuracy_served"]
        out["throughput_term"] = ((d["correct_per_s"] / d["accuracy_served"])
                                  / (s["correct_per_s"] / s["accuracy_served"]))
    threshold = table[table["kind"] == pol.SizeThreshold.kind]
    if not threshold.empty and threshold["correct_per_s"].iloc[0]:
        out["size_threshold_correct_per_s"] = threshold["correct_per_s"].iloc[0]
        out["ratio_vs_size_threshold"] = d["correct_per_s"] / threshold["correct_per_s"].iloc[0]
    return out


def plot(study: Study, cfg: ServingConfig, out: Path) -> Path:
    """Small multiples: one column per kind of policy (static, size threshold, mprec, mprec split), tail
    latency above and correct-prediction throughput below against offered load; the headline's policies
    drawn thick, batched variants dashed, each column's legend below it (never over the data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pct = f"p{cfg.percentile:g}_ms"
    kinds = {row["policy"]: row["kind"] for _, row in study.table.iterrows()} if len(study.table) else {}
    columns = [k for k in pol.REGISTRY if k in set(kinds.values())] or ["static"]
    headline = {study.headline.get("mprec_policy"), study.headline.get("best_static")}
    batched = study.headline.get("with_batching") or {}
    headline |= {batched.get("mprec_policy"), batched.get("best_static")}
    fig, axes = plt.subplots(2, len(columns), figsize=(4.2 * len(columns), 7.5), squeeze=False, sharex=True)
    for j, kind in enumerate(columns):
        top, bottom = axes[0][j], axes[1][j]
        group = study.sweep[study.sweep["policy"].map(kinds) == kind] if len(study.sweep) else study.sweep
        bases = sorted({name.removesuffix(BATCHED) for name in group["policy"]}) if len(group) else []
        for name, g in group.groupby("policy", sort=True) if len(group) else []:
            # A policy and its batched variant share a colour, the variant dashed.
            colour = plt.get_cmap("tab10")(bases.index(name.removesuffix(BATCHED)) % 10)
            style = {"linestyle": "--" if name.endswith(BATCHED) else "-", "marker": ".", "color": colour,
                     "linewidth": 2.6 if name in headline else 1.0}
            top.plot(g["offered_qps"], g[pct], label=name + (" (headline)" if name in headline else ""),
                     **style)
            bottom.plot(g["offered_qps"], g["correct_per_s"], **style)
        top.axhline(cfg.target_ms, color="black", linewidth=0.8)
        top.set(yscale="log", title=kind.replace("_", " "),
                ylabel=f"{pct.replace('_ms', '')} latency (ms)" if j == 0 else None)
        bottom.set(xlabel="offered load (queries/s)", ylabel="correct predictions / s" if j == 0 else None)
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
        if top.get_legend_handles_labels()[0]:
            bottom.legend(*top.get_legend_handles_labels(), fontsize=7, loc="upper center",
                          bbox_to_anchor=(0.5, -0.22), ncol=1, frameon=False)
    fig.suptitle(f"serving: {pct.replace('_ms', '')} target {cfg.target_ms:g} ms (black line); thick: the "
                 "headline's policies; dashed: with device batching", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
