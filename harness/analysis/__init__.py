"""Derive the representation-hardware mapping of an experiment from its MLflow runs.

    python -m harness.analysis experiment_name=mprec            # or parent_run_id=<a sweep's parent run>

`mapping.py` holds the rules as pure functions over a tidy table; `runs.py` builds that table from run
records; `plots.py` draws; `output.py` writes `paths.csv`, `mapping.csv`, `mapping.md`,
`feasibility.csv` and the PNGs into `<results_dir>/<experiment>/analysis/`, which `run_analysis` also
records as an MLflow run of its own (tag `mprec.kind=analysis`); `config.py` is the typed config.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from harness.analysis.config import AnalysisConfig
from harness.analysis.output import Analysis, write_analysis
from harness.core.host import host_memory_bytes
from harness.core.schema import container, typed
from harness.tracking import Store, studies_experiment

__all__ = ["Analysis", "AnalysisConfig", "load_analysis_config", "run_analysis"]


def load_analysis_config(cfg) -> AnalysisConfig:
    return typed(AnalysisConfig, container(cfg), root="analysis")


def run_analysis(config: AnalysisConfig, quiet: bool = False, run_ids: list[str] | None = None) -> Analysis:
    """Load the experiment's runs from MLflow (only `run_ids` if given: a sweep's own), write the analysis,
    record it as a run, print the summary."""
    store = Store(config.tracking, config.experiment_name, create=False)
    records = store.load_runs("latency", config.parent_run_id)
    if run_ids is not None:
        wanted = set(run_ids)
        records = [r for r in records if r["run_id"] in wanted]
    errors = {r["run_id"]: r["tags"].get("error", "") for r in records if r["status"] != "FINISHED"}
    folder = Path(
        config.output_dir or Path(config.tracking.results_dir) / config.experiment_name / "analysis"
    )
    analysis = write_analysis(records, config, folder, errors, float(host_memory_bytes()))
    if config.log_to_mlflow and records:
        tags = {"parent_run_id": config.parent_run_id} if config.parent_run_id else {}
        tags["scope"] = (
            "sweep" if run_ids is not None else ("parent run" if config.parent_run_id else "experiment")
        )
        studies = Store(config.tracking, studies_experiment(config.experiment_name))
        analysis.run_id = studies.record_files("analysis", f"analysis of {config.experiment_name}", folder,
                                               tags)
    if not quiet:
        print_analysis(analysis, config)
    return analysis


def print_analysis(analysis: Analysis, config: AnalysisConfig) -> None:
    console = Console(stderr=True, width=160)
    console.print(f"[bold]analysis of '{config.experiment_name}'[/bold] -> {analysis.folder}")
    for sentence in analysis.summary:
        console.print(f"  {escape(sentence)}")
    for line in analysis.missing:
        console.print(f"  [yellow]missing:[/yellow] {escape(line)}")
    console.print(f"  report: {analysis.report}")
    if analysis.run_id:
        console.print(f"  logged as MLflow run {analysis.run_id} in experiment "
                      f"'{studies_experiment(config.experiment_name)}'")
