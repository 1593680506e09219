"""Write an experiment's analysis into a folder: tables, plots, a summary (recorded as a run by __init__)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis import html, plots
from harness.analysis import mapping as mp
from harness.analysis.config import AnalysisConfig
from harness.analysis.runs import join_quality, tidy
from harness.core import prices


@dataclass
class Analysis:
    folder: Path
    paths: pd.DataFrame
    mapping: pd.DataFrame
    feasibility: pd.DataFrame
    summary: list[str]
    missing: list[str]
    figures: list[Path]
    report: Path | None = None  # report.html: everything above in one self-contained page
    run_id: str | None = None


def _mapping_markdown(table: pd.DataFrame, percentile: str) -> str:
    lines = []
    for workload, cells in table.groupby("workload", sort=True):
        targets = sorted(cells["target_ms"].unique())
        score = (
            "samples/s (quality not measured: ranked by throughput)"
            if (cells["basis"] == "throughput").all()
            else "$ per million correct predictions (the cheapest path: conf/prices.yaml)"
            if (cells["basis"] == "correct_per_dollar").all()
            else "correct predictions/s (accuracy x samples/s)"
        )
        lines += [
            f"## {workload}",
            "",
            f"Chosen path per query size (rows) and {percentile} latency target (columns), with its "
            f"{score}, the runner-up and the margin; (unreliable): the cell compared a measurement that "
            "broke a stability rule (docs/measurement.md).",
            "",
            "| query size | " + " | ".join(f"<= {t:g} ms" for t in targets) + " |",
            "|---" * (len(targets) + 1) + "|",
        ]
        for q, row in cells.groupby("query_size", sort=True):
            out = []
            for t in targets:
                c = row[row["target_ms"] == t].iloc[0]
                shaky = " (unreliable)" if mp.unreliable_cell(c) else ""
                if mp.chosen(c["choice"]):
                    runner = (
                        f"; 2nd {c['runner_up']} (+{100 * c['margin']:.0f}%)"
                        if mp.chosen(c["runner_up"])
                        else ""
                    )
                    out.append(f"**{c['choice']}** {mp.score_text(c['score'], c['basis'])}{runner}{shaky}")
                else:
                    out.append(("none" if "meets" in c["note"] else c["note"]) + shaky)
            lines.append(f"| {int(q)} | " + " | ".join(out) + " |")
        lines.append("")
    return "\n".join(lines)


def priced(runs: pd.DataFrame, table: list[prices.Price]) -> pd.DataFrame:
    """Each row's device priced (column usd_per_hour: $/hour of the device, a host CPU per thread the run
    used; NaN without an entry)."""
    runs = runs.copy()
    rates = [prices.rate(table, str(r.get("device", "")), str(r.get("backend", "")), r.get("threads"))
             for _, r in runs.iterrows()]
    runs["usd_per_hour"] = [np.nan if v is None else v for v in rates]
    return runs


def write_analysis(records: list[dict], config: AnalysisConfig, folder: Path, errors: dict[str, str],
                   ram_bytes: float) -> Analysis:
    """Everything from plain run records; pure but for writing into `folder`."""
    settings = config.settings()
    folder.mkdir(parents=True, exist_ok=True)
    runs = priced(join_quality(tidy(records)) if records else tidy([]), prices.load(config.prices_file))
    table = mp.mapping(runs, settings) if records else pd.DataFrame()
    cheapest = (mp.mapping(runs, replace(settings, rank_by="correct_per_dollar"))
                if records and settings.rank_by != "correct_per_dollar" else pd.DataFrame())
    paths = mp.paths_table(runs, settings) if records else pd.DataFrame()
    devices = {name: (cap if cap else ram_bytes) for name, cap in config.devices.items()}
    feasibility = mp.feasibility_matrix(paths, devices) if len(paths) else pd.DataFrame()
    summary = (mp.quality_notices(runs, settings) + mp.reliability_notices(table, runs)
               + mp.regimes(table, settings.percentile)) if len(table) else []
    missing = mp.missing_report(runs, errors) if records else ["no runs of kind 'latency' in this experiment"]
    # Said only when true: a latency-only workload's paths are not rated (its summary says so).
    rated = bool(len(paths)) and bool(paths["accuracy"].notna().all())
    shown = missing or ["nothing: every run finished" + (" and every path is rated" if rated else "")]
    paths.to_csv(folder / "paths.csv", index=False)
    table.to_csv(folder / "mapping.csv", index=False)
    if len(cheapest):
        cheapest.to_csv(folder / "mapping_cheapest.csv", index=False)
    feasibility.to_csv(folder / "feasibility.csv", index=False)
    report = [f"# Mapping: experiment '{config.experiment_name}'", "", "## Summary", "",
              *(f"- {s}" for s in summary), "", "## Missing or unusable", "", *(f"- {m}" for m in shown), ""]
    if len(table):
        report.append(_mapping_markdown(table, settings.percentile))
    if len(cheapest):
        report += ["# The cheapest path that meets the target", "",
                   "Most correct predictions per dollar of the path's device (its $/hour: conf/prices.yaml, "
                   "with sources; a host CPU per core used); shown as $ per million correct predictions.", "",
                   _mapping_markdown(cheapest, settings.percentile)]
    (folder / "mapping.md").write_text("\n".join(report) + "\n")
    figures: list[Path] = []
    if config.plots and len(table):
        done = mp.latest_finished(runs)
        for workload in sorted(done["workload"].unique()):
            figures.append(plots.latency_vs_query_size(done, workload, settings.percentile, folder))
            figures.append(plots.mapping_heatmap(table, workload, settings.percentile, folder))
            rated = paths[(paths["workload"] == workload) & paths["accuracy"].notna()]
            if len(rated):  # accuracy against correct throughput: nothing to draw without a measured quality
                front = mp.pareto_front(rated, "peak_correct_throughput", "accuracy")
                figures.append(plots.pareto(paths, front, workload, folder))
        for device in sorted(done["device"].dropna().unique()):
            out = plots.roofline(done, device, folder)
            if out:
                figures.append(out)
    basis = (
        "samples/s (quality not measured)"
        if len(table) and (table["basis"] == "throughput").all()
        else "correct predictions per dollar (the cheapest path; prices: conf/prices.yaml)"
        if len(table) and (table["basis"] == "correct_per_dollar").all()
        else "correct predictions per second (accuracy x samples/s)"
        + (
            "; samples/s where quality is not measured"
            if len(table) and (table["basis"] == "throughput").any()
            else ""
        )
    )
    report_page = html.write_report(folder, config.experiment_name, summary, shown, table, paths, figures,
                                    basis, cheapest)
    return Analysis(folder, paths, table, feasibility, summary, missing, figures, report_page)
