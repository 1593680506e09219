"""Each of MP-Rec's claims computed from serving studies and recorded runs (definitions: docs/paper.md).

A claim's figure is a sentence, never a bare NaN: what cannot be computed says why. Its inputs are named as
measured here (this experiment's runs) or borrowed (profile files, stand-ins), with their reliability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.core.paths import PathLabel
from harness.serving.profiles import PathProfile

STAND_IN = "Terabyte stand-in"  # how terabyte_stand_in's profiles begin their source


@dataclass(frozen=True)
class Claim:
    key: str  # a..f, the abstract's order
    claim: str
    paper: str
    measured: str
    value: float | None  # the figure recorded as metric claim_<key>; None when it cannot be computed
    definition: str
    measured_inputs: str
    borrowed_inputs: str
    reliability: str
    why: str


def split_inputs(profiles: list[PathProfile],
                 run_ids: set[str]) -> tuple[list[PathProfile], list[PathProfile]]:
    """(measured here, borrowed): a profile is measured here when its run is one of the experiment's."""
    here = [p for p in profiles if p.run_id in run_ids]
    return here, [p for p in profiles if p.run_id not in run_ids]


def origin(p: PathProfile) -> str:
    """Where a borrowed profile comes from, in a few words (serving_<workload>/serving.md lists its runs)."""
    if p.source.startswith(STAND_IN):
        return f"a stand-in scaled from {p.device}'s Kaggle profiles, NOT measured"
    return f"measured on {p.device}, from a profile file"


def named(profiles: list[PathProfile], with_origin: bool = False) -> str:
    """The profiles' names; borrowed ones with where they come from."""
    if not profiles:
        return "none"
    names = ", ".join(sorted(p.name for p in profiles))
    return names + (" (" + "; ".join(sorted({origin(p) for p in profiles})) + ")" if with_origin else "")


def reliability(profiles: list[PathProfile]) -> str:
    flagged = [f"{p.name} at {', '.join(map(str, p.unreliable_sizes()))}"
               for p in profiles if p.unreliable_sizes()]
    unknown = sorted(p.name for p in profiles if not p.reliable or all(v != v for v in p.reliable))
    parts = (["unreliable: " + "; ".join(flagged)] if flagged else []) + (
        ["unknown for " + ", ".join(unknown)] if unknown else [])
    return "; ".join(parts) if parts else "every input latency passed the stability rules"


def device_speedup(studies: dict[str, dict]) -> dict | None:
    """Claim (a): per workload and representation (with its precision), the latency on its slowest device
    over its fastest at a query size measured on every one of them; the largest. Stand-ins are left out."""
    best: dict | None = None
    for role, study in studies.items():
        groups: dict[str, list[PathProfile]] = {}
        for p in study["profiles"]:
            if not p.source.startswith(STAND_IN):
                groups.setdefault(PathLabel.parse(p.path).numbers, []).append(p)
        for numbers, group in groups.items():
            if len({p.device for p in group}) < 2:
                continue
            for q in sorted(set.intersection(*(set(p.sizes) for p in group))):
                lat = {p.name: p.latency_ms[p.sizes.index(q)] for p in group}
                slow, fast = max(lat, key=lambda n: lat[n]), min(lat, key=lambda n: lat[n])
                if best is None or lat[slow] / lat[fast] > best["ratio"]:
                    best = {"ratio": lat[slow] / lat[fast], "role": role, "numbers": numbers, "size": q,
                            "slow": slow, "fast": fast, "slow_ms": lat[slow], "fast_ms": lat[fast],
                            "devices": sorted({p.device for p in group}), "inputs": group}
    return best


def claim_a(studies: dict[str, dict], run_ids: set[str]) -> Claim:
    best = device_speedup(studies)
    text = "matching devices with compatible embedding representations: speedup"
    definition = ("per representation, its latency on the slowest vs the fastest device at a query size "
                  "measured on each; the maximum over representations, sizes and workloads (stand-ins "
                  "left out)")
    if best is None:
        return Claim("a", text, "up to 16.65x", "- (no representation was measured on two devices)", None,
                     definition, "none", "none", "-",
                     "a profile file of another device (the GPU check's) is needed")
    here, borrowed = split_inputs(best["inputs"], run_ids)
    figure = f"{best['ratio']:.2f}x ({best['numbers']}, q={best['size']}, {best['role']})"
    why = (f"{len(best['devices'])} devices here ({', '.join(best['devices'])}), not the paper's four (CPU, "
           f"GPU, TPU, IPU); widest gap: {best['slow']} {best['slow_ms']:.3g} ms vs {best['fast']} "
           f"{best['fast_ms']:.3g} ms")
    return Claim("a", text, "up to 16.65x", figure, best["ratio"], definition, named(here),
                 named(borrowed, with_origin=True), reliability(best["inputs"]), why)


def region(whatif: pd.DataFrame | None, paper: float) -> str:
    """Where on the what-if map MP-Rec reaches 2x and the paper's figure (without device batching)."""
    if whatif is None or whatif.empty:
        return "what-if map not drawn (what_if.enabled=false)"
    plain = whatif[~whatif["batching"].astype(bool)]
    here = plain[(plain["cpu_speedup"] == 1) & (plain["gpu_slowdown"] == 1)]["ratio"]
    where = []
    for goal in (2.0, paper):
        hits = plain[plain["ratio"] >= goal]
        points = ", ".join(f"CPU {r.cpu_speedup:g}x faster/GPU {r.gpu_slowdown:g}x slower"
                           for r in hits.itertuples())
        where.append(f">= {goal:g}x at {points}" if points else f">= {goal:g}x nowhere on the map")
    measured = f"{here.iloc[0]:.2f}x" if len(here) and here.iloc[0] == here.iloc[0] else "-"
    return (f"this machine is the map's (1x, 1x) point ({measured} there: the map simulates fewer queries); "
            + "; ".join(where))


def claim_serving(key: str, role: str, paper: float, study: dict | None, run_ids: set[str]) -> Claim:
    text = f"CPU-GPU serving, {role}: correct predictions/s, MP-Rec over the best static path"
    definition = ("the best MP-Rec policy's correct predictions/s at its highest load meeting the p99 target "
                  "over the best static path's at its own; no device batching (with it in brackets)")
    if study is None or "ratio" not in study["headline"]:
        why = "no runs of this workload" if study is None else "no MP-Rec or static policy met the target"
        return Claim(key, text, f"{paper:g}x", f"- ({why})", None, definition, "none", "none", "-", why)
    head, batched = study["headline"], study["headline"].get("with_batching") or {}
    here, borrowed = split_inputs(study["profiles"], run_ids)
    with_batching = f" (with device batching {batched['ratio']:.2f}x)" if "ratio" in batched else ""
    terms = (f"{head['accuracy_term']:.3f}x accuracy x {head['throughput_term']:.3f}x throughput; "
             if "accuracy_term" in head else "")
    why = f"{terms}{head['mprec_policy']} vs {head['best_static']}; " + region(study.get("whatif"), paper)
    if batched.get("ratio", 1) < 1:
        why += (f"; with device batching the best static path ({batched['best_static']}) coalesces queued "
                f"queries into one call and serves more than {batched['mprec_policy']}, which chooses a "
                "path per query")
    return Claim(key, text, f"{paper:g}x", f"{head['ratio']:.2f}x{with_batching}", head["ratio"], definition,
                 named(here), named(borrowed, with_origin=True), reliability(study["profiles"]), why)


def claim_quality(key: str, role: str, paper: float, study: dict | None) -> Claim:
    text = f"model quality, {role}: MP-Rec over the best static path"
    definition = ("accuracy served by the headline's MP-Rec policy minus the best static path's, in "
                  "percentage points (the paper's % read as points)")
    if study is None or "accuracy_gain_points" not in study["headline"]:
        return Claim(key, text, f"{paper:+g} %", "- (no headline: see the serving claim)", None, definition,
                     "none", "none", "-", "no runs of this workload, or no policy met the target")
    head = study["headline"]
    rated = [p.accuracy for p in study["profiles"] if p.accuracy is not None]
    spread = 100 * (max(rated) - min(rated)) if rated else math.nan
    batched = head.get("with_batching") or {}
    with_batching = (f" (with device batching {batched['accuracy_gain_points']:+.2f})"
                     if "accuracy_gain_points" in batched else "")
    return Claim(key, text, f"{paper:+g} %", f"{head['accuracy_gain_points']:+.2f} points{with_batching}",
                 head["accuracy_gain_points"], definition, "accuracies of the paths trained here",
                 "GPU paths take their representation's accuracy (trained on the host)",
                 "one training run per representation (seed 0): no interval",
                 f"the representations' accuracies span {spread:.2f} points on this synthetic data (the "
                 "paper's: real Criteo); the gain is at most that span")


def claim_hybrid(runs: pd.DataFrame) -> Claim:
    text = "hybrid: higher quality than a table at a higher memory and compute cost"
    definition = ("hybrid minus table accuracy (points); hybrid over table parameter bytes and FLOPs per "
                  "sample (the cost model); holds when all three are above 0, 1, 1")
    done = runs[(runs["status"] == "FINISHED") & runs["accuracy"].notna()]
    parts, value, verdicts = [], None, []
    for workload, group in done.groupby("workload", sort=True):
        latest = group.sort_values("start_time").groupby("representation").last()
        if not {"hybrid", "table"} <= set(latest.index):
            parts.append(f"{workload}: - (needs finished table and hybrid runs with quality)")
            continue
        h, t = latest.loc["hybrid"], latest.loc["table"]
        gain = 100 * (h["accuracy"] - t["accuracy"])
        memory, flops = h["param_bytes"] / t["param_bytes"], h["flops_per_sample"] / t["flops_per_sample"]
        holds = gain > 0 and memory > 1 and flops > 1
        verdicts.append(holds)
        parts.append(f"{workload}: {gain:+.2f} points, {memory:.2f}x memory, {flops:.1f}x FLOPs: "
                     f"{'holds' if holds else 'does not hold'}")
        value = gain if value is None else value
    measured = "; ".join(parts) or "- (no finished runs with quality)"
    why = ("it holds here as in the paper" if verdicts and all(verdicts) else
           "where it does not hold: synthetic data whose planted signal a table learns well at this "
           "scale and training length; the paper trained on real Criteo, whose rare ids DHE generalises over")
    return Claim("f", text, "qualitative", measured, value, definition,
                 "accuracy from training here; bytes and FLOPs from the cost model", "none",
                 "one training run each (seed 0): no interval", why)


def claim_cost(studies: dict[str, dict]) -> Claim:
    """Not the paper's: what a million correct predictions cost with MP-Rec and with the best static path."""
    text = "(not in the paper) $ per million correct predictions, MP-Rec and the best static path"
    definition = ("the $/hour of the devices a policy kept busy (conf/prices.yaml, with sources) / 3600 / "
                  "its correct predictions per second x 1e6, at its highest load meeting the target")
    parts, value = [], None
    for role, study in studies.items():
        head = study["headline"]
        if "mprec_usd_per_million_correct" in head and "static_usd_per_million_correct" in head:
            m, s = head["mprec_usd_per_million_correct"], head["static_usd_per_million_correct"]
            parts.append(f"{role}: ${m:.3g} ({head['mprec_policy']}) vs ${s:.3g} ({head['best_static']})")
            value = m / s if value is None else value
        else:
            parts.append(f"{role}: - (a device the policies used has no price, or no headline)")
    return Claim("g", text, "-", "; ".join(parts) or "- (no serving study)", value, definition,
                 "the latencies and accuracies of the serving claims", "device prices (conf/prices.yaml)",
                 "as the serving claims'; prices are list prices of one provider on one date",
                 "a policy that spreads load over the CPU and the GPU pays for both devices' hours; the "
                 "paper reports no cost")


def claims_table(studies: dict[str, dict], runs: pd.DataFrame) -> list[Claim]:
    """The six claims in the abstract's order, then what a million correct predictions cost."""
    run_ids = set(runs["run_id"].astype(str))
    return [claim_a(studies, run_ids),
            claim_serving("b", "Kaggle", 2.49, studies.get("Kaggle"), run_ids),
            claim_serving("c", "Terabyte", 3.76, studies.get("Terabyte"), run_ids),
            claim_quality("d", "Kaggle", 0.19, studies.get("Kaggle")),
            claim_quality("e", "Terabyte", 0.22, studies.get("Terabyte")),
            claim_hybrid(runs), claim_cost(studies)]
