"""One self-contained `report.html` per analysis: the summary, the mapping, every figure and what was
missing, in a single file with the figures inline (base64 PNG), no script and no network access, so it
opens from a disk, an e-mail or MLflow's artifact view (which renders HTML) the same way.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import pandas as pd

import harness
from harness.analysis import mapping as mp

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td.path { text-align: left; font-family: monospace; }
td.none { color: #999; text-align: center; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #555; } ul.missing li { color: #8a4b00; }
td.unreliable { color: #777; background: repeating-linear-gradient(45deg, #f4f4f4 0 6px, #e2e2e2 6px 12px); }
span.swatch { display: inline-block; width: 2.2em; height: 1em; vertical-align: middle;
              border: 1px solid #ccc; }
td.flag { color: #a33; font-weight: bold; }
"""
LEGEND = (
    '<p class="note"><span class="swatch unreliable" style="background: repeating-linear-gradient(45deg, '
    '#f4f4f4 0 6px, #e2e2e2 6px 12px)"></span> hatched: the cell compared a measurement that broke a '
    "stability rule (interference, dispersion, order of sizes, above the roof; docs/measurement.md); "
    "hover a cell for why. Where a reliable path met the target it was chosen over an unreliable one.</p>"
)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _mapping_table(cells: pd.DataFrame) -> str:
    """Rows: query sizes; columns: latency targets; each cell the chosen path, its score and the runner-up
    with its margin; hatched where the cell compared an unreliable measurement."""
    targets = sorted(cells["target_ms"].unique())
    head = "".join(f"<th>&le; {t:g} ms</th>" for t in targets)
    rows = []
    for q, row in cells.groupby("query_size", sort=True):
        tds = []
        for t in targets:
            c = row[row["target_ms"] == t].iloc[0]
            shaky = mp.unreliable_cell(c)
            title = f' title="{html.escape(str(c["note"]))}"' if c["note"] else ""
            if mp.chosen(c["choice"]):
                runner = (f"<br><small>2nd {html.escape(c['runner_up'])} (+{100 * c['margin']:.0f}%)</small>"
                          if mp.chosen(c["runner_up"]) else "")
                tds.append(
                    f'<td class="path{" unreliable" if shaky else ""}"{title}>{html.escape(c["choice"])}'
                    f"<br><small>{html.escape(mp.score_text(c['score'], c['basis']))}</small>{runner}</td>"
                )
            else:
                tds.append(f'<td class="none{" unreliable" if shaky else ""}"{title}>none</td>')
        rows.append(f"<tr><th>{int(q)}</th>{''.join(tds)}</tr>")
    return f"<table><tr><th>query size</th>{head}</tr>{''.join(rows)}</table>"


def _reliability(r: pd.Series) -> str:
    """Which query sizes of a path were flagged unreliable ('unknown' for runs recorded before)."""
    flags = {int(k.split("@")[1]): v for k, v in r.items() if str(k).startswith("reliable@") and v == v}
    sizes = [int(k.split("@")[1]) for k, v in r.items() if str(k).startswith("reliable@")]
    if not flags and sizes:
        return "unknown"
    bad = sorted(q for q, v in flags.items() if v == 0)
    return "all sizes" if not bad else "<b>unreliable at " + ", ".join(map(str, bad)) + "</b>"


def _paths_table(paths: pd.DataFrame, workload: str) -> str:
    rows = paths[paths["workload"] == workload]
    if rows.empty:
        return ""
    body = []
    for _, r in rows.iterrows():
        accuracy = "not measured" if pd.isna(r["accuracy"]) else f"{r['accuracy']:.4f}"
        fraction = r.get("fraction_of_gemm_peak", float("nan"))
        roof = "" if fraction != fraction else f"{100 * fraction:.0f}%"
        roof_cell = (
            f'<td class="flag" title="above the measured GEMM peak: the peak or the measurement is '
            f'wrong">{roof} &#9888; above the roof</td>'
            if r.get("above_roof")
            else f"<td>{roof}</td>"
        )
        body.append(
            f'<tr><td class="path">{html.escape(r["path"])}</td><td>{html.escape(str(r["device"]))}</td>'
            f"<td>{accuracy}</td><td>{r['param_bytes'] / 2**20:,.1f}</td>"
            f"<td>{'yes' if r['fits'] else 'no'}</td><td>{r['achieved_gflops']:,.2f}</td>{roof_cell}"
            f"<td>{_reliability(r)}</td></tr>"
        )
    return ("<table><tr><th>path</th><th>device</th><th>accuracy</th><th>parameters (MiB)</th><th>fits</th>"
            "<th>GFLOP/s at its largest size</th><th>of the GEMM peak</th><th>trusted</th></tr>"
            f"{''.join(body)}</table>")


def write_report(folder: Path, experiment: str, summary: list[str], missing: list[str], mapping: pd.DataFrame,
                 paths: pd.DataFrame, figures: list[Path], basis: str,
                 cheapest: pd.DataFrame | None = None) -> Path:
    """Write `folder/report.html` from an analysis' tables and figures (already written into `folder`)."""
    by_name = {f.name: f for f in figures}
    parts = [
        f"<h1>Mapping of experiment '{html.escape(experiment)}'</h1>",
        f'<p class="note">mprec-harness {harness.__version__}, written {time.strftime("%Y-%m-%d %H:%M")}; '
        f"the choice maximises {html.escape(basis)} among the paths that fit their device and meet the "
        "latency target (docs/analysis.md).</p>",
        "<h2>Summary</h2>",
        "<ul>",
        *(f"<li>{html.escape(s)}</li>" for s in summary),
        "</ul>",
        "<h2>Missing or unusable inputs</h2>",
        '<ul class="missing">',
        *(f"<li>{html.escape(m)}</li>" for m in missing),
        "</ul>",
    ]
    for workload, cells in (mapping.groupby("workload", sort=True) if len(mapping) else []):
        slug = "".join(c if c.isalnum() else "_" for c in workload).strip("_")
        parts += [f"<h2>{html.escape(workload)}</h2>",
                  "<h3>Chosen path per query size and latency target</h3>", _mapping_table(cells)]
        if cheapest is not None and len(cheapest):
            parts += ["<h3>The cheapest path that meets the target ($ per million correct predictions; "
                      "prices: conf/prices.yaml)</h3>",
                      _mapping_table(cheapest[cheapest["workload"] == workload])]
        if any(mp.unreliable_cell(c) for _, c in cells.iterrows()):
            parts.append(LEGEND)
        for name, alt in ((f"mapping_{slug}.png", "mapping heat map"), (f"latency_{slug}.png",
                                                                        "latency vs query size"),
                          (f"pareto_{slug}.png", "accuracy vs correct-prediction throughput")):
            if name in by_name:
                parts.append(_img(by_name[name], f"{alt}, {workload}"))
        parts += ["<h3>Paths</h3>", _paths_table(paths, workload)]
    rooflines = [f for f in figures if f.name.startswith("roofline_")]
    if rooflines:
        parts.append("<h2>Rooflines (measured device peaks)</h2>")
        parts += [_img(f, f.stem.replace("_", " ")) for f in rooflines]
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>mprec-harness: {html.escape(experiment)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    out = folder / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
