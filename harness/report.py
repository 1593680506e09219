"""Terminal output: a progress bar over the ladder (stderr) and the final summary table (stdout)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.measure import QuerySizeResult


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
