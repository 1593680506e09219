"""Terminal output: a progress bar over the ladder (stderr), a path's summary table (stdout), a sweep's
summary (stderr). stdout carries results only (the summary table, the dry run's JSON)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.pipeline.plan import Plan
from harness.pipeline.timing import QuerySizeResult
from harness.tracking import tracking_uri

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


def summary_table(title: str, results: Sequence[QuerySizeResult]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("query size", "p50 ms", "p99 ms", "mean ms", "CV", "samples/s", "first call ms", "n"):
        table.add_column(column, justify="right")
    for r in results:
        if not r.feasible:
            table.add_row(str(r.query_size), "infeasible", "", "", "", "", "", "", style="red")
            continue
        s = r.stats
        table.add_row(
            str(r.query_size), f"{s.p50_ms:.3f}", f"{s.p99_ms:.3f}", f"{s.mean_ms:.3f}", f"{s.cv:.2f}",
            f"{s.samples_per_s:,.0f}", f"{r.first_call_s * 1e3:.2f}", str(s.n),
        )
    return table


def print_summary(title: str, results: Sequence[QuerySizeResult], footer: str = "") -> None:
    console = Console()
    console.print(summary_table(title, results))
    if footer:
        console.print(footer)


def print_path_summary(p: Plan, result: PathResult) -> None:
    """The summary of one measured path, with where its MLflow run is."""
    run = p.run
    print_summary(
        f"{p.path} on {result.device.name} ({run.dataset.name}, scale {run.dataset.scale}, "
        f"{p.cost.param_bytes / 2**20:,.1f} MiB parameters)",
        result.results,
        footer=f"MLflow run {result.run_id} in experiment '{run.experiment_name}' at {tracking_uri(run.tracking)}",
    )
    for note in p.notes():
        print(f"note: {note}")


def print_sweep_summary(statuses: list[dict], counts: dict[str, int]) -> None:
    """One row per job of a sweep (stderr): status, path, overrides, run, error."""
    title = f"sweep: {counts['finished']} finished, {counts['skipped']} skipped, {counts['failed']} failed"
    if counts.get("unavailable"):
        title += f", {counts['unavailable']} could not run here (backend not available)"
    table = Table(title=title, title_justify="left")
    for column in ("status", "path", "overrides", "run", "error"):
        table.add_column(column)
    style = {"finished": "green", "skipped": "blue", "failed": "red", "unavailable": "yellow"}
    for s in statuses:
        table.add_row(s["status"], s.get("path", ""), " ".join(s.get("overrides", [])), s.get("run_id") or "",
                      (s.get("error") or "")[:120], style=style.get(s["status"]))
    Console(stderr=True, width=200).print(table)
