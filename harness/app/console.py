"""Terminal output: a progress bar over the ladder (stderr), a path's summary (stdout: what was timed, a
table per query size, notes, where the run went and how to look at it), a sweep's summary (stderr).
stdout carries results only (the summaries, the dry run's JSON)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.core.paths import PathLabel
from harness.core.precision import storage_label
from harness.pipeline.plan import Plan
from harness.pipeline.timing import QuerySizeResult
from harness.tracking import Store

INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT


def print_interrupted() -> None:
    """The one line an interrupted command prints (no traceback: nothing went wrong)."""
    print("interrupted: the measurement in progress is recorded as KILLED; run the same command again to "
          "resume (finished paths are skipped)", file=sys.stderr)


if TYPE_CHECKING:  # the run's stages import torch; the terminal never needs to
    from harness.pipeline.run import PathResult


@contextmanager
def ladder_progress(label: str, total: int) -> Iterator:
    """Yields `advance(result)`; the bar lives on stderr so stdout stays parseable."""
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    )
    with progress:
        task = progress.add_task(label, total=total, last="")

        def advance(result: QuerySizeResult) -> None:
            last = (f"q={result.query_size}: p50 {result.stats.p50_ms:.3f} ms" if result.feasible
                    else f"q={result.query_size}: infeasible")
            progress.update(task, advance=1, last=last)

        yield advance


# A path's summary: one row per query size, short headers (the table fits 80 columns) and LEGEND below.
COLUMNS = ("query size", "p50 ms", "p99 ms", "mean ms", "CV", "samples/s", "first call ms", "n")
LEGEND = ("n: timed calls; CV: their standard deviation / mean (how much to trust the percentiles); first call: "
          "compilation and cold caches, timed apart and left out of the other columns")
SizeRow = dict  # query_size, feasible and, when feasible, the figures of COLUMNS


def rows_of(results: Sequence[QuerySizeResult]) -> list[SizeRow]:
    return [{"query_size": r.query_size, "feasible": r.feasible} if not r.feasible else
            {"query_size": r.query_size, "feasible": True, "p50_ms": r.stats.p50_ms, "p99_ms": r.stats.p99_ms,
             "mean_ms": r.stats.mean_ms, "cv": r.stats.cv, "samples_per_s": r.stats.samples_per_s,
             "first_call_ms": r.first_call_s * 1e3, "n": r.stats.n} for r in results]


def rows_recorded(per_size: dict[str, dict[int, float]]) -> list[SizeRow]:
    """The same rows from a recorded run's per-size metrics (a skipped job shows what was measured)."""
    keys = {"p50_ms": "latency_p50_ms", "p99_ms": "latency_p99_ms", "mean_ms": "latency_mean_ms",
            "cv": "latency_cv", "samples_per_s": "samples_per_s", "first_call_ms": "first_call_ms",
            "n": "iterations"}
    rows = []
    for q in sorted(per_size.get("feasible", {})):
        if not per_size["feasible"][q]:
            rows.append({"query_size": q, "feasible": False})
            continue
        rows.append({"query_size": q, "feasible": True, **{k: per_size.get(m, {}).get(q, float("nan"))
                                                            for k, m in keys.items()}})
    return rows


def summary_table(title: str, rows: Sequence[SizeRow]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for r in rows:
        if not r["feasible"]:
            table.add_row(str(r["query_size"]), "out of memory", "", "", "", "", "", "", style="red")
            continue
        table.add_row(
            str(r["query_size"]), f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['mean_ms']:.3f}",
            f"{r['cv']:.2f}", f"{r['samples_per_s']:,.0f}", f"{r['first_call_ms']:.2f}", f"{int(r['n'])}",
        )
    return table


def what_was_timed(p: Plan, device: str) -> str:
    """One line: the model, the representation, the device, and what a sample and a query are."""
    spec, run = p.spec, p.run
    ids = "one id" if spec.ids_per_lookup == 1 else f"{spec.ids_per_lookup} ids"
    label = PathLabel.parse(p.path)
    representation, precision = label.representation, label.precision
    storage = getattr(run.representation, "storage", "fp32")
    representation = representation.replace(storage_label(storage), "")  # said below, in words
    numerics = "" if precision == "fp32" and storage == "fp32" else (
        f", computing in {precision}" + ("" if storage == "fp32" else f" with {storage} table rows"))
    return (f"timed: inference of DLRM ({run.dataset.name}, scale {run.dataset.scale}: {spec.num_tables} "
            f"embedding features, {p.cost.param_bytes / 2**20:,.1f} MiB of parameters) with {representation} "
            f"embeddings{numerics} on {device} ({p.adapter.name}); a sample is one user-item pair ({spec.num_dense} dense "
            f"features, {ids} per feature), a query is `query size` samples in one call")


def experiment_page(server: str, experiment_id: str) -> str:
    """The MLflow UI's page of an experiment's runs. `workflowType=machine_learning` opens MLflow 3's
    training view (its default is the GenAI trace overview, where a path's runs do not show)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def where_it_went(run_name: str, run_id: str, experiment: str, experiment_id: str, uri: str,
                  artifact_uri: str | None) -> list[str]:
    """Lines that say where a run is and how to look at it (printed unwrapped: URIs stay whole)."""
    lines = [f"recorded: MLflow run {run_id} ({run_name}) in experiment '{experiment}'", f"  store: {uri}"]
    if artifact_uri:
        lines.append(f"  artifacts: {artifact_uri.removeprefix('file://')}")
    if uri.startswith("sqlite:///"):
        lines.append(f"  look at it: mlflow ui --backend-store-uri {uri}")
        lines.append(f"    then open {experiment_page('http://127.0.0.1:5000', experiment_id)}")
    elif uri.startswith("http"):
        lines.append(f"  look at it: open {experiment_page(uri, experiment_id)}")
    return lines


def print_path_summary(p: Plan, result: PathResult) -> None:
    """The summary of one measured path: what was timed, the table, any note, and where the run is."""
    store = Store(p.run.tracking, p.run.experiment_name)
    _print_summary(p, result.device.name, rows_of(result.results), result.run_id, store)


def print_recorded_summary(p: Plan, run_id: str, store: Store) -> None:
    """The summary of a path measured before (a skipped job): what its recorded run holds."""
    run = store.get(run_id)
    device = run.data.tags.get("device_name", p.adapter.name)
    _print_summary(p, device, rows_recorded(store.size_metrics(run_id)), run_id, store)


def _print_summary(p: Plan, device: str, rows: list[SizeRow], run_id: str, store: Store) -> None:
    print(what_was_timed(p, device))
    Console().print(summary_table(f"{p.path}: latency per query", rows))
    print(LEGEND)
    for note in p.notes():
        print(f"note: {note}")
    artifact_uri = store.get(run_id).info.artifact_uri
    print("\n".join(where_it_went(p.run_name, run_id, p.run.experiment_name, store.experiment_id, store.uri,
                                 artifact_uri)))


def print_sweep_summary(statuses: list[dict], counts: dict[str, int]) -> None:
    """One row per job of a sweep (stderr): status, path, overrides, run, error."""
    title = f"sweep: {counts['finished']} finished, {counts['skipped']} skipped, {counts['failed']} failed"
    if counts.get("unavailable"):
        title += f", {counts['unavailable']} could not run here (backend, or its precision, not available)"
    table = Table(title=title, title_justify="left")
    for column in ("status", "path", "overrides", "run", "error"):
        table.add_column(column)
    style = {"finished": "green", "skipped": "blue", "failed": "red", "unavailable": "yellow"}
    for s in statuses:
        table.add_row(s["status"], s.get("path", ""), " ".join(s.get("overrides", [])), s.get("run_id") or "",
                      (s.get("error") or "")[:120], style=style.get(s["status"]))
    Console(stderr=True, width=200).print(table)
