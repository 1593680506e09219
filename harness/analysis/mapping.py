"""The representation-hardware mapping, as pure functions over a tidy table of measurements.

Input: one row per (run, query size) with the columns of `COLUMNS` (harness/analysis/runs.py builds it
from MLflow; tests build it by hand). No clock, no device, no MLflow here.

Rules (docs/analysis.md):
- a path is *feasible* at (query size, target) when its parameter bytes fit its device's capacity less
  the headroom, it was measured at that size without running out of memory, and its latency at the
  chosen percentile meets the target;
- the choice maximises correct-prediction throughput = accuracy x samples/s; a path without a measured
  quality is never given one: it is left out of the ranking and reported as unrated (or, with
  rank_by="throughput", everything is ranked by samples/s and says so). A workload where no path has a
  measured quality (a latency-only sweep) is ranked by throughput, and the analysis says so once;
- ties go to the lower latency, then the smaller model, then the path's name: deterministic;
- a measurement flagged unreliable (harness/pipeline/stability.py: `reliable` = 0) is never chosen over a
  reliable alternative that meets the target; a cell that compared any flagged measurement (chosen or
  not, meeting the target or not) is itself marked unreliable, with why in its note. Runs recorded before
  reliability was judged (`reliable` NaN) count as not flagged, and are reported as of unknown reliability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from harness.core.errors import could_not_run_here
from harness.core.fit import fits as fit_rule
from harness.core.metrics import PER_SIZE
from harness.core.paths import PathLabel

COLUMNS = ("run_id", "status", "path", "representation", "backend", "device", "workload", "query_size",
           *PER_SIZE.values(), "param_bytes", "flops_per_sample", "bytes_read_per_sample", "bytes_read_fixed",
           "device_memory_bytes", "device_gemm_gflops", "device_gather_gbps", "device_gather64_gbps",
           "device_copy_gbps", "accuracy", "start_time")
PERCENTILES = ("p50", "p90", "p95", "p99")
# correct_per_dollar: the cheapest path that meets the target (most correct predictions per $, the run's
# device priced by conf/prices.yaml: column usd_per_hour)
RANKINGS = ("correct_throughput", "throughput", "correct_per_dollar")


@dataclass(frozen=True)
class MappingSettings:
    """The mapping's rules in force: from conf/analysis.yaml, checked by AnalysisConfig (config.py)."""

    targets_ms: tuple[float, ...]
    percentile: str  # one of PERCENTILES
    rank_by: str  # one of RANKINGS


def latest_finished(runs: pd.DataFrame) -> pd.DataFrame:
    """Measurements of FINISHED runs; of several runs of one path in one workload, the latest with a
    measured quality (its latency is the path's as much as any other's, and it carries the accuracy), else
    the latest. A path's label names every setting of its model (harness/core/paths.py), so such runs
    differ in training, timing or query sizes only; `collapsed` reports those that differ in training."""
    done = runs[runs["status"] == "FINISHED"]
    if done.empty:
        return done
    rated = done["accuracy"].notna() if "accuracy" in done else pd.Series(False, index=done.index)
    order = done.assign(_rated=rated).sort_values(["_rated", "start_time"], kind="mergesort")
    chosen = order.groupby(["workload", "path"])["run_id"].transform("last")
    return done[done["run_id"] == chosen.reindex(done.index)].copy()


def collapsed(runs: pd.DataFrame) -> list[str]:
    """One line per path whose finished runs were trained differently (several quality keys): which run the
    mapping uses. Runs that differ only in timing settings or query sizes are not worth a line."""
    done = runs[runs["status"] == "FINISHED"].drop_duplicates("run_id")
    used = (latest_finished(runs).drop_duplicates(["workload", "path"]).set_index(["workload",
                                                                                   "path"])["run_id"])
    lines = []
    for (workload, path), group in done.groupby(["workload", "path"], sort=True):
        keys = group["quality_key"].fillna("none").unique() if "quality_key" in group else []
        if len(keys) > 1:
            lines.append(
                f"{path} ({workload}): {len(group)} runs of {len(keys)} training configurations (quality "
                f"keys {', '.join(sorted(map(str, keys)))}); the mapping uses run {used[(workload, path)]}, "
                "the latest with a measured quality"
            )
    return lines


def best_modes(rows: pd.DataFrame, percentile: str = "p50") -> pd.DataFrame:
    """Of the execution modes measured for one path family (harness/core/paths.py: the same model and
    numbers on one device, eager, compiled or replayed from CUDA graphs), keep at each query size the one
    with the lowest latency; its row keeps its own label, so a choice says which mode it is
    (`dhe@cuda+graphs/bf16`). A launch-bound GPU path is then never compared in its slowest mode.

    >>> rows = pd.DataFrame({"workload": "w", "family": "dhe@cuda", "query_size": [1, 1, 64, 64],
    ...                      "path": ["dhe@cuda", "dhe@cuda+graphs"] * 2, "p50_ms": [0.9, 0.3, 1.0, 1.2]})
    >>> best_modes(rows)[["query_size", "path"]].values.tolist()
    [[1, 'dhe@cuda+graphs'], [64, 'dhe@cuda']]
    """
    if rows.empty or "family" not in rows:
        return rows
    ordered = rows.sort_values([f"{percentile}_ms", "path"], na_position="last", kind="mergesort")
    return ordered.drop_duplicates(["workload", "family", "query_size"]).sort_index()


def twins(rows: pd.DataFrame) -> pd.Series:
    """For each row, the path whose model it exactly is (tag `same_model_as`), where that path was measured
    in the same workload on the same backend; else None. Such a row is the same model measured twice: its
    latency differs from its twin's by noise only, so the mapping must not rank it as another path."""
    if "same_model_as" not in rows or rows["same_model_as"].isna().all():
        return pd.Series([None] * len(rows), index=rows.index, dtype=object)
    measured = set(zip(rows["workload"], rows["path"]))
    out = []
    for _, r in rows.iterrows():
        # The same label with the twin's representation: same backend, mode and precision (and machine:
        # `path` may name its host after the label: harness/analysis/runs.py separate_hosts).
        label = r["path_label"] if isinstance(r.get("path_label"), str) else r["path"]
        twin = None
        if isinstance(r["same_model_as"], str):
            twin_label = str(replace(PathLabel.parse(label), representation=r["same_model_as"]))
            twin = r["path"].replace(label, twin_label, 1)
        out.append(twin if twin and (r["workload"], twin) in measured else None)
    return pd.Series(out, index=rows.index, dtype=object)


def fits(row) -> bool:
    """The run's own verdict at this query size (`fits_device`, harness/core/fit.py's rule with the run's
    headroom and this size's activations); for runs recorded without one, the same rule on what they
    recorded (parameters, and activations where known). Unknown capacity: does not fit."""
    verdict = row.get("fits_device", np.nan)
    if verdict == verdict and verdict is not None:
        return bool(verdict)
    needed = row.get("memory_needed_bytes", np.nan)
    needed = row["param_bytes"] if needed != needed or needed is None else needed
    return bool(fit_rule(needed, row["device_memory_bytes"], _headroom(row)))


def _headroom(row) -> float:
    """The run's `workload.memory_headroom`; none recorded (a hand-made record): none kept free."""
    headroom = row.get("memory_headroom", np.nan)
    return 0.0 if headroom is None or headroom != headroom else float(headroom)


def score_of(row, rank_by: str) -> float:
    if rank_by == "throughput":
        return row["samples_per_s"]
    accuracy = row["accuracy"]
    correct = np.nan if accuracy is None or pd.isna(accuracy) else accuracy * row["samples_per_s"]
    if rank_by == "correct_per_dollar":  # correct predictions per $ of the device's time; no price: unrated
        usd = row.get("usd_per_hour", np.nan)
        return correct / (usd / 3600.0) if usd == usd and usd and usd > 0 else np.nan
    return correct


def score_text(score: float, basis: str) -> str:
    """A cell's score as the mapping tables print it."""
    if basis == "correct_per_dollar":
        return f"${1e6 / score:.3g}/M correct" if score > 0 else "-"
    return f"{score:,.0f}/s"


def _ordered(cands: pd.DataFrame, latency: str) -> pd.DataFrame:
    """Best first: score desc, then latency, model size, name (deterministic ties)."""
    return cands.sort_values(["score", latency, "param_bytes", "path"], ascending=[False, True, True, True],
                             kind="mergesort")


def flagged(rows: pd.DataFrame) -> pd.Series:
    """Rows whose measurement broke a stability rule (reliable == 0; NaN, unknown, is not flagged)."""
    return rows["reliable"].eq(0) if "reliable" in rows else pd.Series(False, index=rows.index)


def _why(rows: pd.DataFrame) -> str:
    reasons = rows["unreliable_reason"] if "unreliable_reason" in rows else pd.Series("", index=rows.index)
    return ", ".join(f"{r['path']} ({why})" if isinstance(why, str) and why else r["path"]
                     for (_, r), why in zip(rows.iterrows(), reasons))


def choose(rows: pd.DataFrame, query_size: int, target_ms: float, settings: MappingSettings) -> dict:
    """The mapping cell for one workload at (query size, target)."""
    latency = f"{settings.percentile}_ms"
    at_size = rows[rows["query_size"] == query_size].copy()
    cell = {"query_size": query_size, "target_ms": target_ms, "choice": None, "score": np.nan,
            "latency_ms": np.nan, "runner_up": None, "runner_up_score": np.nan, "margin": np.nan,
            "basis": settings.rank_by, "note": "", "reliable": True, "unreliable_paths": ""}
    if at_size.empty:
        cell["note"] = "no path measured at this query size"
        return cell
    at_size["fits"] = [fits(r) for _, r in at_size.iterrows()]
    compared = at_size[at_size["fits"] & (at_size["feasible"] > 0)]
    shaky = compared[flagged(compared)]
    cell["reliable"] = shaky.empty
    cell["unreliable_paths"] = ",".join(sorted(set(shaky["path"])))  # which measurements: the sentences say
    unreliable = f"unreliable measurement: {_why(shaky)}" if len(shaky) else ""
    meets = compared[compared[latency] <= target_ms].copy()
    if meets.empty:
        cell["note"] = "; ".join(x for x in (f"no path meets {settings.percentile} <= {target_ms:g} ms",
                                             unreliable) if x)
        return cell
    meets["score"] = [score_of(r, settings.rank_by) for _, r in meets.iterrows()]
    rated = meets[meets["score"].notna()]
    if rated.empty:
        fastest = meets.sort_values([latency, "path"]).iloc[0]
        needs = "a measured quality" + (" and a price" if settings.rank_by == "correct_per_dollar" else "")
        cell["note"] = (
            f"no path with {needs} meets the target; fastest unrated: {fastest['path']} "
            f"({fastest[latency]:.3g} ms)"
        )
        return cell
    ranked = _ordered(rated, latency)
    trusted = ranked[~flagged(ranked)]
    notes = []
    if len(trusted) and flagged(ranked.iloc[:1]).iloc[0]:
        notes.append(
            f"{ranked.iloc[0]['path']} set aside (unreliable measurement), {trusted.iloc[0]['path']} "
            "chosen on reliable figures"
        )
        ranked = pd.concat([trusted, ranked[flagged(ranked)]])
    best = ranked.iloc[0]
    cell.update(choice=best["path"], score=best["score"], latency_ms=best[latency])
    if len(ranked) > 1:
        second = ranked.iloc[1]
        cell.update(runner_up=second["path"], runner_up_score=second["score"],
                    margin=best["score"] / second["score"] - 1.0 if second["score"] > 0 else np.inf)
    unrated = meets[meets["score"].isna()]["path"].tolist()
    if unrated:
        why = "no quality or no price" if settings.rank_by == "correct_per_dollar" else "no quality"
        notes.append(f"unrated ({why}): " + ", ".join(sorted(unrated)))
    cell["note"] = "; ".join(notes + ([unreliable] if unreliable else []))
    return cell


def basis_for(rows: pd.DataFrame, settings: MappingSettings) -> MappingSettings:
    """The rules a workload is ranked by: correct throughput needs accuracy, so a workload where no path has
    a measured quality is ranked by throughput (samples/s) instead of choosing nothing."""
    if settings.rank_by == "correct_throughput" and rows["accuracy"].isna().all():
        return replace(settings, rank_by="throughput")
    return settings


def quality_notices(runs: pd.DataFrame, settings: MappingSettings) -> list[str]:
    """One sentence naming the workloads ranked by throughput because no path of theirs has a measured
    quality (none if every workload has one)."""
    rows = latest_finished(runs)
    unmeasured = [w for w, group in rows.groupby("workload", sort=True)
                  if basis_for(group, settings).rank_by != settings.rank_by]
    if not unmeasured:
        return []
    return [f"quality is not measured for {', '.join(unmeasured)} (no run trained: train.steps=0), so their "
            "paths are ranked by throughput (samples/s) alone; train.steps > 0 measures accuracy, e.g. "
            "python -m harness -m representation=table,dhe train.steps=2000"]


def mapping(runs: pd.DataFrame, settings: MappingSettings) -> pd.DataFrame:
    """One row per (workload, query size, target): the chosen path, its score, the runner-up and margin."""
    rows = best_modes(latest_finished(runs), settings.percentile)
    rows = rows[twins(rows).isna()]  # a model measured twice under two names is ranked once
    cells = []
    for workload, group in rows.groupby("workload", sort=True):
        rules = basis_for(group, settings)
        for q in sorted(group["query_size"].unique()):
            for target in settings.targets_ms:
                cells.append({"workload": workload, **choose(group, int(q), float(target), rules)})
    return pd.DataFrame(cells, columns=["workload", "query_size", "target_ms", "choice", "score",
                                        "latency_ms", "runner_up", "runner_up_score", "margin", "basis",
                                        "note", "reliable", "unreliable_paths"])


def reliability_notices(table: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """One sentence per workload whose mapping rests in part on unreliable measurements (how many cells,
    which paths and sizes, how many choices were made on reliable figures instead), and one naming the
    workloads whose runs were recorded before reliability was judged."""
    sentences = []
    for workload, cells in table.groupby("workload", sort=True):
        shaky = cells[[unreliable_cell(c) for _, c in cells.iterrows()]]
        if shaky.empty:
            continue
        rows = latest_finished(runs)
        rows = rows[(rows["workload"] == workload) & flagged(rows)]
        which = "; ".join(f"{path} at {', '.join(str(int(q)) for q in sorted(g['query_size']))}"
                          for path, g in rows.groupby("path", sort=True))
        avoided = int(cells["note"].str.contains("set aside", regex=False).sum())
        sentences.append(
            f"[{workload}] {len(shaky)} of {len(cells)} cells compared unreliable measurements "
            f"(hatched in the report: {which})"
            + (f"; in {avoided} a reliable path that meets the target was chosen instead" if avoided else "")
            + "; measure those paths again on a quiet machine (python -m harness.doctor) to trust them."
        )
    if "reliable" in runs:
        done = latest_finished(runs)
        unknown = sorted(done.loc[done["reliable"].isna() & (done["feasible"] > 0), "workload"].unique())
        if unknown:
            sentences.append(
                f"reliability unknown for {', '.join(unknown)}: some runs were recorded before "
                "measurements were judged (no `reliable` metric); force=true measures them again."
            )
    return sentences


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True for points no other point beats on both x and y (higher is better on both)."""
    values = points[[x, y]].to_numpy(dtype=float)
    front = []
    for i, (xi, yi) in enumerate(values):
        dominated = any((xj >= xi and yj >= yi and (xj > xi or yj > yi)) for j, (xj, yj) in enumerate(values)
                        if j != i)
        front.append(not dominated and not (math.isnan(xi) or math.isnan(yi)))
    return pd.Series(front, index=points.index)


def paths_table(runs: pd.DataFrame, settings: MappingSettings) -> pd.DataFrame:
    """One row per path: identity, quality, memory and fit, and per query size latency and throughput."""
    rows = latest_finished(runs)
    out = []
    for (workload, path), group in rows.groupby(["workload", "path"], sort=True):
        first = group.iloc[0]
        largest = group.sort_values("query_size").iloc[-1]
        needed = largest.get("memory_needed_bytes", np.nan)
        record = {
            "workload": workload, "path": path, "representation": first["representation"],
            "backend": first["backend"], "device": first["device"], "run_id": first["run_id"],
            "accuracy": first["accuracy"], "param_bytes": first["param_bytes"],
            "same_model_as": first.get("same_model_as"),
            # What the largest query size needs, and whether it fits (the run's rule, harness/core/fit.py).
            "memory_needed_bytes": first["param_bytes"] if needed != needed else needed,
            "memory_headroom": largest.get("memory_headroom", np.nan),
            "device_memory_bytes": first["device_memory_bytes"], "fits": fits(largest),
        }
        for _, r in group.sort_values("query_size").iterrows():
            q = int(r["query_size"])
            record[f"p50_ms@{q}"] = r["p50_ms"]
            record[f"{settings.percentile}_ms@{q}"] = r[f"{settings.percentile}_ms"]
            record[f"samples_per_s@{q}"] = r["samples_per_s"]
            # 1, 0, or empty: recorded before it was judged
            record[f"reliable@{q}"] = r.get("reliable", np.nan)
        achieved_gflops = largest["flops_per_sample"] * largest["samples_per_s"] / 1e9
        achieved_gbps = (
            largest["bytes_read_per_sample"] * largest["samples_per_s"]
            + largest["bytes_read_fixed"] * largest["samples_per_s"] / largest["query_size"]
        ) / 1e9
        fraction = (
            achieved_gflops / largest["device_gemm_gflops"] if largest["device_gemm_gflops"] else np.nan
        )
        record.update({
            "largest_query_size": int(largest["query_size"]),
            "achieved_gflops": achieved_gflops,
            "achieved_gbps": achieved_gbps,
            "fraction_of_gemm_peak": fraction,
            # Above the measured roof: the peak or the measurement is wrong; never shown without this flag.
            "above_roof": bool(fraction > 1.0) if fraction == fraction else False,
            "peaks_reliable": largest.get("peaks_reliable", np.nan),
            "fraction_of_gather_bandwidth": achieved_gbps / largest["device_gather_gbps"]
            if largest["device_gather_gbps"] else np.nan,
            "peak_correct_throughput": max((score_of(r, "correct_throughput") for _, r in group.iterrows()),
                                           default=np.nan),
        })
        out.append(record)
    return pd.DataFrame(out)


def feasibility_matrix(paths: pd.DataFrame, devices: dict[str, float]) -> pd.DataFrame:
    """Does each representation's model, at its largest measured query size, fit each device (nominal
    capacities for devices not here)? The run's own rule (harness/core/fit.py) and headroom."""
    reps = paths.drop_duplicates(["workload", "representation"])
    rows = []
    for _, r in reps.iterrows():
        row = {"workload": r["workload"], "representation": r["representation"],
               "param_bytes": r["param_bytes"], "memory_needed_bytes": r["memory_needed_bytes"]}
        for device, capacity in devices.items():
            row[device] = bool(fit_rule(r["memory_needed_bytes"], capacity, _headroom(r)))
        rows.append(row)
    return pd.DataFrame(rows)


def shaky_paths(cell) -> str:
    """The paths whose flagged measurements a cell compared ("," joined; "" when none; "?" for a table
    written before the column, whose cell only says it was unreliable)."""
    if not unreliable_cell(cell):
        return ""
    value = cell.get("unreliable_paths", "")
    return value if isinstance(value, str) and value else "?"


def _unreliable_clause(winner: str, shaky: str) -> str:
    """What a regime's sentence says of the unreliable measurements it rests on, naming whose they were:
    the winner's own, or the paths it was compared with (its own figures trusted)."""
    if not shaky:
        return ""
    if shaky == "?":
        return " (on unreliable measurements)"
    paths = shaky.split(",")
    others = [p for p in paths if p != winner]
    own = "its own measurement unreliable" if winner in paths else ""
    beside = f"compared with an unreliable measurement of {', '.join(others)}" if others else ""
    if own and beside:
        return f" ({own}; {beside})"
    if own:
        return f" ({own})"
    return f" ({'its own measurements reliable, ' if winner != 'none' else ''}{beside})"


def unreliable_cell(cell) -> bool:
    """A mapping cell that compared a flagged measurement (`reliable` False; absent in older tables)."""
    value = cell.get("reliable", True)
    return value is not None and not pd.isna(value) and not bool(value)


def chosen(value) -> bool:
    """A mapping cell's choice is set (pandas turns a missing one into NaN)."""
    return isinstance(value, str) and value != ""


def _ranges(values: list[int]) -> str:
    return f"{values[0]}" if len(values) == 1 else f"{values[0]}-{values[-1]}"


def regimes(table: pd.DataFrame, percentile: str = "p99") -> list[str]:
    """One sentence per workload and target: which path wins over which query sizes, runs merged; targets
    with the same winners share one sentence (`p99 <= 10, 25 ms: ...`)."""
    sentences = []
    for workload, group in table.groupby("workload", sort=True):
        described_by_target: list[tuple[tuple[float, ...], str]] = []
        for target, cells in group.groupby("target_ms", sort=True):
            cells = cells.sort_values("query_size")
            parts: list[tuple[tuple[str, str], list[int]]] = []
            current: tuple[str, str] = ("", "")
            sizes: list[int] = []
            for _, c in cells.iterrows():
                # A run of sizes with one winner, split where the cells' unreliable measurements change.
                winner = (c["choice"] if chosen(c["choice"]) else "none", shaky_paths(c))
                if winner != current and sizes:
                    parts.append((current, sizes))
                    sizes = []
                current = winner
                sizes.append(int(c["query_size"]))
            if sizes:
                parts.append((current, sizes))
            described = "; ".join(f"{'no path' if w == 'none' else w} for query sizes {_ranges(s)}"
                                  + _unreliable_clause(w, shaky) for (w, shaky), s in parts)
            if described_by_target and described_by_target[-1][1] == described:
                described_by_target[-1] = (described_by_target[-1][0] + (float(target),), described)
            else:
                described_by_target.append(((float(target),), described))
        for targets, described in described_by_target:
            bounds = ", ".join(f"{t:g}" for t in targets)
            sentences.append(f"[{workload}] {percentile} <= {bounds} ms: {described}.")
    return sentences


def missing_report(runs: pd.DataFrame, errors: dict[str, str] | None = None) -> list[str]:
    """What the analysis could not use, in words: failed or unfinished runs (paths whose backend was not
    available grouped apart: "could not run here"), unrated paths, out-of-memory sizes."""
    lines = []
    elsewhere: dict[str, set[str]] = {}  # why a backend could not run -> its paths
    errors = errors or {}
    finished = runs[runs["status"] == "FINISHED"].groupby(["workload", "path"])["start_time"].max().to_dict()
    for run_id, group in runs.groupby("run_id", sort=True):
        first = group.iloc[0]
        # A run that failed or was interrupted and then measured again is not missing: the rerun is used.
        redone = finished.get((first["workload"], first["path"]), -1) > first["start_time"]
        if first["status"] != "FINISHED" and not redone:
            reason = errors.get(run_id, "")
            if could_not_run_here(reason):  # not a failure of the path: its backend is not on that machine
                elsewhere.setdefault(reason.split(": ", 1)[1],
                                     set()).add(f"{first['path']} ({first['workload']})")
                continue
            lines.append(f"{first['path']} ({first['workload']}): run {run_id} is {first['status']}"
                         + (f": {reason}" if reason else ""))
    lines += [f"could not run here: {', '.join(sorted(paths))}: {why}"
              for why, paths in sorted(elsewhere.items())]
    done = latest_finished(runs)
    for (workload, path, twin), _ in done.assign(twin=twins(done)).dropna(subset=["twin"]).groupby(
            ["workload", "path", "twin"], sort=True):
        lines.append(
            f"{path} ({workload}): exactly the {twin} model at this scale (tag same_model_as): left out "
            "of the mapping"
        )
    lines += collapsed(runs)
    # said once, elsewhere
    unmeasured = {w for w, g in done.groupby("workload") if g["accuracy"].isna().all()}
    for (workload, path), group in done.groupby(["workload", "path"], sort=True):
        if group["accuracy"].isna().all() and workload not in unmeasured:
            lines.append(f"{path} ({workload}): no measured quality (train.steps > 0 measures it)")
        oom = sorted(int(q) for q in group.loc[group["feasible"] <= 0, "query_size"])
        if oom:
            lines.append(f"{path} ({workload}): out of memory at query sizes {oom}")
    return lines
