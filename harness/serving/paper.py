"""MP-Rec's claims as measured figures: one table from an experiment's runs on two workloads (issue 25).

The paper (Hsia et al., ASPLOS 2023) claims in its abstract: (a) up to 16.65x from matching devices with
compatible representations; on a CPU-GPU system, (b) 2.49x (Kaggle) and (c) 3.76x (Terabyte) more correct
predictions per second and (d) +0.19 % and (e) +0.22 % better quality; (f) the hybrid representation is
better than a table at a higher memory and compute cost. `run_paper` runs a serving study per workload
(the Terabyte GPU a labelled stand-in where no Terabyte GPU profile exists), then computes each claim with
its definition, which inputs were measured here and which borrowed, how far they can be trusted, and why
the figure differs. docs/paper.md defines every figure.

    python -m harness experiment=mprec_paper        # the runs, then this (serving=mprec_paper: paper=true)
    python -m harness.serving serving=mprec_paper   # this alone, from the recorded runs
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from harness.analysis.runs import join_quality, tidy
from harness.core.errors import ConfigError
from harness.core.paths import PathLabel
from harness.serving import profiles as prof
from harness.serving.config import ServingConfig
from harness.serving.paper_claims import Claim, claims_table
from harness.tracking import Store, studies_experiment

ROLES = ("Kaggle", "Terabyte")
HEADER = ("claim", "paper", "measured", "definition", "measured here", "borrowed", "reliability",
          "why they differ")  # the paper's two datasets, found by name in a workload's dataset


def role_of(workload: str) -> str | None:
    dataset = workload.split(" x")[0].lower()
    return next((r for r in ROLES if r.lower() in dataset), None)


def workloads_by_role(runs: pd.DataFrame) -> dict[str, str]:
    """The one Kaggle and the one Terabyte workload of the finished runs; two of one role are refused."""
    held = sorted(str(w) for w in runs.loc[runs["status"] == "FINISHED", "workload"].dropna().unique())
    out: dict[str, str] = {}
    for role in ROLES:
        mine = [w for w in held if role_of(w) == role]
        if len(mine) > 1:
            raise ConfigError("experiment_name", f"{len(mine)} {role} workloads ({'; '.join(mine)}): the "
                              "paper's table takes one of each; record them in separate experiments")
        if mine:
            out[role] = mine[0]
    return out


def terabyte_stand_in(borrowed: list[prof.PathProfile], cpu_kaggle: list[prof.PathProfile],
                      cpu_terabyte: list[prof.PathProfile]) -> list[prof.PathProfile]:
    """A Terabyte profile for each borrowed (Kaggle-only) device profile, NOT measured: its latency at the
    smallest size (launch and transfer) kept, what it adds with size scaled by this CPU's Terabyte/Kaggle
    latency ratio of the same path at that size (the shapes' cost ratio, as a CPU sees it).

    >>> g = prof.PathProfile("table@cuda", "gpu", None, (1, 100), (1.0, 2.0))
    >>> k = prof.PathProfile("table@cpu", "cpu", 0.8, (1, 100), (0.5, 5.0))
    >>> t = prof.PathProfile("table@cpu", "cpu", 0.8, (1, 100), (1.0, 15.0))
    >>> terabyte_stand_in([g], [k], [t])[0].latency_ms   # 1.0 + (2.0 - 1.0) x 15/5
    (1.0, 4.0)
    """
    kaggle = {PathLabel.parse(p.path).numbers: p for p in cpu_kaggle}
    terabyte = {PathLabel.parse(p.path).numbers: p for p in cpu_terabyte}
    out = []
    for p in borrowed:
        numbers = PathLabel.parse(p.path).numbers
        if numbers not in kaggle or numbers not in terabyte:
            continue  # no CPU pair to scale by: this path has no Terabyte stand-in

        def scale(values: tuple[float, ...], base: float) -> tuple[float, ...]:
            ratios = [terabyte[numbers].service_ms(q) / kaggle[numbers].service_ms(q) for q in p.sizes]  # noqa: B023
            return tuple(base + max(v - base, 0.0) * r for v, r in zip(values, ratios))

        out.append(replace(p, latency_ms=scale(p.latency_ms, p.latency_ms[0]),
                           p99_ms=scale(p.p99_ms, p.p99_ms[0]) if p.p99_ms else (), accuracy=None,
                           reliable=(), display="", joules_per_sample=(),  # energy is not scaled: unknown
                           source=f"Terabyte stand-in (NOT measured): {p.source}, its growth with size x "
                                  "this CPU's Terabyte/Kaggle latency ratio"))
    return out


def serve(cfg: ServingConfig, role: str, workload: str, folder: Path, files: list[str]) -> dict:
    """One workload's serving study, written under `folder/serving_<role>`."""
    from harness.serving.run import run_serving

    one = replace(cfg, workload=workload, profile_files=files,
                  output_dir=str(folder / f"serving_{role.lower()}"))
    return run_serving(one, quiet=True)


def studies_of(cfg: ServingConfig, runs: pd.DataFrame, folder: Path) -> dict[str, dict]:
    """The serving study of each workload: Kaggle with the scenario's profile files (Kaggle profiles),
    Terabyte with their stand-ins (a measured Terabyte GPU profile is not taken yet: none exists)."""
    roles = workloads_by_role(runs)
    studies: dict[str, dict] = {}
    if "Kaggle" in roles:
        studies["Kaggle"] = serve(cfg, "Kaggle", roles["Kaggle"], folder, list(cfg.profile_files))
    if "Terabyte" in roles:
        files: list[str] = []
        if "Kaggle" in studies and cfg.profile_files:
            borrowed = [p for f in cfg.profile_files for p in prof.load(f)]
            cpu_kaggle = prof.from_runs(runs, roles["Kaggle"])
            cpu_terabyte = prof.from_runs(runs, roles["Terabyte"])
            stand_in = terabyte_stand_in(borrowed, cpu_kaggle, cpu_terabyte)
            if stand_in:
                path = folder / "terabyte_stand_in_profiles.json"
                prof.save(stand_in, path, {"source": "harness/serving/paper.py terabyte_stand_in (NOT "
                                                     "measured)", "from": ", ".join(cfg.profile_files)})
                files = [str(path)]
        studies["Terabyte"] = serve(cfg, "Terabyte", roles["Terabyte"], folder, files)
    return studies


def markdown(experiment: str, claims: list[Claim]) -> str:
    lines = [f"# MP-Rec's claims, measured: experiment '{experiment}'", "",
             "Definitions: docs/paper.md. Measured here: this machine's runs; borrowed: profile files and "
             "stand-ins, named.", "",
             "| " + " | ".join(HEADER) + " |", "|---" * len(HEADER) + "|"]
    for c in claims:
        cells = [f"({c.key}) {c.claim}", c.paper, c.measured, c.definition, c.measured_inputs,
                 c.borrowed_inputs, c.reliability, c.why]
        lines.append("| " + " | ".join(x.replace("|", "/").replace("\n", " ") for x in cells) + " |")
    return "\n".join(lines) + "\n"


def add_to_report(report: Path, body_md: str) -> bool:
    """The claims as a section of the experiment's report.html (replacing an earlier one); False when
    there is no report yet."""
    import html

    if not report.exists():
        return False
    page = report.read_text(encoding="utf-8")
    start, end = '<section id="paper">', "</section><!-- paper -->"
    if start in page:
        page = page[:page.index(start)] + page[page.index(end) + len(end):]
    rows = [line for line in body_md.splitlines() if line.startswith("| (")]
    cells = ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r.strip("|").split(" | "))
             + "</tr>" for r in rows]
    head = "".join(f"<th>{h}</th>" for h in HEADER)
    section = (f'{start}<h2>MP-Rec\'s claims, measured (paper.md)</h2><table><tr>{head}</tr>'
               + "".join(cells) + f"</table>{end}")
    report.write_text(page.replace("</body>", section + "</body>"), encoding="utf-8")
    return True


def run_paper(cfg: ServingConfig, quiet: bool = False) -> dict:
    """Every claim from the experiment's runs: paper.md, paper.csv, the serving studies beside them, a
    section of report.html, and one MLflow run (kind paper) in the studies experiment."""
    store = Store(cfg.tracking, cfg.experiment_name, create=False)
    records = store.load_runs("latency")
    if not records:
        raise ValueError(f"no latency runs in experiment '{cfg.experiment_name}' ({store.uri}); record them: "
                         f"{cfg.inputs_command or 'python -m harness experiment=mprec_paper'}")
    runs = join_quality(tidy(records))
    results = Path(cfg.tracking.results_dir) / cfg.experiment_name
    folder = Path(cfg.output_dir) if cfg.output_dir else results / "paper"
    folder.mkdir(parents=True, exist_ok=True)
    studies = studies_of(cfg, runs, folder)
    claims = claims_table(studies, runs)
    text = markdown(cfg.experiment_name, claims)
    (folder / "paper.md").write_text(text)
    pd.DataFrame([asdict(c) for c in claims]).to_csv(folder / "paper.csv", index=False)
    in_report = add_to_report(results / "analysis" / "report.html", text)
    run_id = None
    if cfg.log_to_mlflow:
        metrics = {f"claim_{c.key}": c.value for c in claims
                   if c.value is not None and math.isfinite(c.value)}
        studies_store = Store(cfg.tracking, studies_experiment(cfg.experiment_name))
        run_id = studies_store.record_files("paper", f"MP-Rec's claims, {cfg.experiment_name}", folder,
                                            {"workloads": "; ".join(sorted(studies))}, metrics)
    if not quiet:
        print(text)
        print(f"written: {folder} (paper.md, paper.csv, serving_*/)"
              + ("; a section of report.html" if in_report else "")
              + (f"; recorded as MLflow run {run_id}" if run_id else ""), file=sys.stderr)
    return {"claims": claims, "folder": folder, "run_id": run_id, "studies": studies}
