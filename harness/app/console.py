"""Terminal output: a progress bar over the ladder (stderr), a path's summary (stdout: what was timed, a
table per query size, notes, where the run went and how to look at it), a sweep's summary (stderr).
stdout carries results only (the summaries, the dry run's JSON)."""

from __future__ import annotations

import logging
import math
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from harness.core import trust
from harness.core.paths import PathLabel
from harness.core.precision import storage_label
from harness.pipeline.plan import Plan
from harness.pipeline.timing import QuerySizeResult, Reporter
from harness.tracking import Store

INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT


def print_interrupted(run_id: str | None = None, known: bool = False) -> None:
    """The one line an interrupted command prints (no traceback: nothing went wrong): what was recorded.
    `known`: the job said which run it ended (`run_id`, or None where it had created none yet)."""
    if known and run_id is None:
        print("interrupted: nothing was recorded yet; run the same command again to measure", file=sys.stderr)
        return
    what = f"MLflow run {run_id} is" if known else "the measurements in progress are"
    print(f"interrupted: {what} recorded as KILLED; run the same command again to resume (finished paths "
          "are skipped)", file=sys.stderr)


if TYPE_CHECKING:  # the run's stages import torch; the terminal never needs to
    from harness.pipeline.run import PathResult


_progress_log = logging.getLogger("harness.progress")


def size_line(label: str, result: QuerySizeResult) -> str:
    """One line per measured size: what it gave, how many calls, whether others used the machine."""
    attempt = f" (attempt {result.attempt})" if result.attempt > 1 else ""
    if not result.feasible:
        return f"{label} q={result.query_size}{attempt}: infeasible ({result.error})"
    t = result.timed
    load = result.load
    busy = (f"; other processes used {load.other_cores:.2f} cores" if load is not None and load.other_cores
            and load.other_cores > load.resolution_cores else "")
    return (f"{label} q={result.query_size}{attempt}: p50 {t.p50_ms:.3f} ms, {t.n} calls in "
            f"{sum(result.latencies_s):.1f} s{busy}")


class LineReporter(Reporter):
    """Not a terminal (a pipe, a log, a sweep's worker): one line per size and per note, through logging,
    so stderr and the job's harness.log both have them."""

    def __init__(self, label: str) -> None:
        self.label = label

    def done(self, result: QuerySizeResult) -> None:
        _progress_log.info(size_line(self.label, result))

    def note(self, text: str) -> None:
        _progress_log.info("%s: %s", self.label, text)


class LiveReporter(LineReporter):
    """A terminal: one live line (the size being timed, its attempt, calls and seconds so far, elapsed);
    sizes and notes printed above it and written to the log files (not to the console handler, whose
    stream would tear the live line)."""

    def __init__(self, label: str, progress: Progress, task) -> None:
        super().__init__(label)
        self.progress, self.task = progress, task
        self.current, self.planned_s = "", 0.0

    def size(self, query_size: int, attempt: int, planned_s: float = 0.0) -> None:
        again = f", attempt {attempt}" if attempt > 1 else ""
        self.current, self.planned_s = f"q={query_size}{again}", planned_s
        self.progress.update(self.task, now=f"timing {self.current}")

    def tick(self, calls: int, seconds: float) -> None:
        plan = f" of {self.planned_s:g}" if self.planned_s else ""
        self.progress.update(self.task, now=f"timing {self.current}: {calls} calls, {seconds:.1f}{plan} s")

    def done(self, result: QuerySizeResult) -> None:
        self._print(size_line(self.label, result))
        self.progress.update(self.task, advance=0 if result.attempt > 1 else 1, now="")

    def note(self, text: str) -> None:
        self._print(f"{self.label}: {text}")

    def _print(self, line: str) -> None:
        self.progress.console.print(line, highlight=False, markup=False)
        to_log_files(line)


def to_log_files(line: str) -> None:
    """`line` into the log files the root logger writes (Hydra's harness.log), not to the console."""
    record = _progress_log.makeRecord(_progress_log.name, logging.INFO, __file__, 0, line, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@contextmanager
def ladder_progress(label: str, total: int, job: str = "") -> Iterator[Reporter]:
    """Yields the reporter of one path's measurement: live on a terminal (stderr, so stdout stays
    parseable), else one line per size. `job` says where a sweep is (`job 3 of 6, 2 done`)."""
    label = f"[{job}] {label}" if job else label
    console = Console(stderr=True)
    if not console.is_terminal:
        yield LineReporter(label)
        return
    progress = live_progress(console)
    with progress:
        yield LiveReporter(label, progress, progress.add_task(label, total=total, now=""))


def live_progress(console: Console) -> Progress:
    """The live line's columns: label, bar, sizes done, what is being timed, elapsed."""
    return Progress(
        # Not markup: the label's "[job 3 of 6, 2 done]" would be read as a style tag and vanish.
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[now]}", markup=False), TimeElapsedColumn(), console=console, transient=True,
    )


# A path's summary: one row per query size, short headers (the table fits 80 columns) and LEGEND below.
COLUMNS = ("query size", "p50 ms", "± CI", "p99 ms", "CV", "samples/s", "first call ms", "n", "trusted")
_NO_WRAP = {"p50 ms", "± CI", "p99 ms", "CV", "samples/s", "n"}
LEGEND = (
    "n: timed calls; ± CI: half-width of p50's 95 % interval, in ms (the wider side); CV: standard "
    "deviation / mean; trusted: no stability rule broken (interference, dispersion, order of sizes, the "
    "roof: docs/measurement.md), '?' for runs recorded before it was judged; OOM: out of memory; first "
    "call: compilation and cold caches, timed apart and left out of the other columns"
)
SizeRow = dict  # query_size, feasible and, when feasible, the figures of COLUMNS


def rows_of(results: Sequence[QuerySizeResult],
            unreliable: dict[int, list[str]] | None = None) -> list[SizeRow]:
    unreliable = unreliable or {}
    return [{"query_size": r.query_size, "feasible": r.feasible} if not r.feasible else
            {"query_size": r.query_size, "feasible": True, "p50_ms": r.timed.p50_ms, "p99_ms": r.timed.p99_ms,
             "p50_ci_low_ms": r.timed.p50_ci_low_ms, "p50_ci_high_ms": r.timed.p50_ci_high_ms,
             "cv": r.timed.cv, "samples_per_s": r.timed.samples_per_s,
             "first_call_ms": r.first_call_ms, "n": r.timed.n,
             "reliable": 0.0 if r.query_size in unreliable else 1.0} for r in results]


def rows_recorded(per_size: dict[str, dict[int, float]]) -> list[SizeRow]:
    """The same rows from a recorded run's per-size metrics (a skipped job shows what was measured); a run
    recorded before reliability was judged has no `reliable`: NaN, shown as unknown."""
    keys = {"p50_ms": "latency_p50_ms", "p99_ms": "latency_p99_ms", "p50_ci_low_ms": "latency_p50_ci_low_ms",
            "p50_ci_high_ms": "latency_p50_ci_high_ms", "cv": "latency_cv", "samples_per_s": "samples_per_s",
            "first_call_ms": "first_call_ms", "n": "iterations", "reliable": "reliable"}
    rows: list[SizeRow] = []
    for q in sorted(per_size.get("feasible", {})):
        if not per_size["feasible"][q]:
            rows.append({"query_size": q, "feasible": False})
            continue
        figures = {k: per_size.get(m, {}).get(q, math.nan) for k, m in keys.items()}
        rows.append({"query_size": q, "feasible": True, **figures})
    return rows


def _plus_minus(r: SizeRow) -> str:
    low, high, p50 = r.get("p50_ci_low_ms", math.nan), r.get("p50_ci_high_ms", math.nan), r["p50_ms"]
    half = max(p50 - low, high - p50)
    return "" if math.isnan(half) else f"±{half:.3f}"


def summary_table(title: str, rows: Sequence[SizeRow]) -> Table:
    table = Table(title=Text(title), title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                  collapse_padding=True, pad_edge=False)
    for column in COLUMNS:
        table.add_column(column, justify="right", no_wrap=column in _NO_WRAP)
    for r in rows:
        if not r["feasible"]:
            table.add_row(str(r["query_size"]), *[""] * (len(COLUMNS) - 2), "OOM", style="red")
            continue
        reliable = r.get("reliable", math.nan)
        trusted = "?" if math.isnan(reliable) else ("yes" if reliable else "NO")
        table.add_row(str(r["query_size"]), f"{r['p50_ms']:.3f}", _plus_minus(r), f"{r['p99_ms']:.3f}",
                      f"{r['cv']:.2f}", f"{r['samples_per_s']:,.0f}", f"{r['first_call_ms']:.2f}",
                      f"{int(r['n'])}", trusted, style="yellow" if trusted == "NO" else None)
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
    return (
        f"timed: inference of DLRM ({run.dataset.name}, scale {run.dataset.scale}: {spec.num_tables} "
        f"embedding features, {p.cost.param_bytes / 2**20:,.1f} MiB of parameters) with {representation} "
        f"embeddings{numerics} on {device} ({p.adapter.name}); a sample is one user-item pair "
        f"({spec.num_dense} dense features, {ids} per feature), a query is `query size` samples in one call"
    )


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
    _print_summary(p, result.device.name, rows_of(result.results, result.unreliable), result.run_id, store,
                   result.unreliable)


def print_recorded_summary(p: Plan, run_id: str, store: Store) -> None:
    """The summary of a path measured before (a skipped job): what its recorded run holds."""
    run = store.get(run_id)
    device = run.data.tags.get("device_name", p.adapter.name)
    unreliable = {q: [why] for q, why in trust.parse(run.data.tags.get(trust.TAG)).items()}
    _print_summary(p, device, rows_recorded(store.size_metrics(run_id)), run_id, store, unreliable)


def _print_summary(p: Plan, device: str, rows: list[SizeRow], run_id: str, store: Store,
                   unreliable: dict[int, list[str]]) -> None:
    print(what_was_timed(p, device))
    Console().print(summary_table(f"{p.path}: latency per query", rows))
    print(LEGEND)
    feasible = sum(1 for r in rows if r["feasible"])
    line = trust.unreliable_line(unreliable, feasible, p.run.tracking.results_dir)
    if line:
        print(line)
    for note in p.notes():
        print(f"note: {note}")
    artifact_uri = store.get(run_id).info.artifact_uri
    print("\n".join(where_it_went(p.run_name, run_id, p.run.experiment_name, str(store.experiment_id),
                                 store.uri, artifact_uri)))


def print_sweep_summary(statuses: list[dict], counts: dict[str, int]) -> None:
    """One row per job of a sweep (stderr): status, path, the query sizes it flagged unreliable, overrides,
    run, error; and one line when any job has flagged sizes."""
    title = f"sweep: {counts['finished']} finished, {counts['skipped']} skipped, {counts['failed']} failed"
    if counts.get("unavailable"):
        title += f", {counts['unavailable']} could not run here (backend, or its precision, not available)"
    if counts.get("killed"):
        title += f", {counts['killed']} cancelled"
    if counts.get("lost"):
        title += (f" ({counts['lost']} lost with their node or cancelled: the same command again runs them; "
                  "the finished ones are skipped)")
    table = Table(title=title, title_justify="left")
    for column in ("status", "path", "unreliable at", "overrides", "run", "error"):
        table.add_column(column)
    style = {"finished": "green", "skipped": "blue", "failed": "red", "killed": "red",
             "unavailable": "yellow"}
    for s in statuses:
        # Text, not markup: a variant's label (`dhe[m=1000]@cpu`), an override or an error in square
        # brackets would be read as a style tag and vanish.
        cells = (s["status"], s.get("path", ""), s.get("unreliable") or "", " ".join(s.get("overrides", [])),
                 s.get("run_id") or "", (s.get("error") or "")[:120])
        table.add_row(*(Text(str(cell or "")) for cell in cells), style=style.get(s["status"]))
    console = Console(stderr=True, width=200)
    console.print(table)
    shaky = [s for s in statuses if s.get("unreliable")]
    if shaky:
        console.print(
            f"unreliable: {len(shaky)} of {len(statuses)} jobs have query sizes that broke a stability "
            "rule, measured again where that could help (their runs' tag `unreliable` says why; the "
            "analysis hatches them): python -m harness.doctor shows what else is using this machine",
            highlight=False,
        )


def print_paths_side_by_side(paths) -> None:
    """A sweep's paths in one table (stderr): path, accuracy, MiB, then p50/p99 ms per query size; one
    table per workload, sizes flagged unreliable marked `!` (the analysis' paths table, harness/analysis)."""
    if paths is None or not len(paths):
        return
    console = Console(stderr=True, width=200)
    for workload, rows in paths.groupby("workload", sort=True):
        sizes = sorted({int(c.split("@")[1]) for c in rows.columns if c.startswith("p50_ms@")
                        and rows[c].notna().any()})
        title = f"paths of this sweep, {workload}: p50 / p99 ms per query size ('!': unreliable)"
        table = Table(title=Text(title), title_justify="left", box=box.SIMPLE_HEAD)
        for column in ("path", "accuracy", "MiB", *map(str, sizes)):
            table.add_column(column, justify="left" if column == "path" else "right")
        for _, r in rows.iterrows():
            cells = []
            for q in sizes:
                p50, p99 = r.get(f"p50_ms@{q}", math.nan), r.get(f"p99_ms@{q}", math.nan)
                flag = "!" if r.get(f"reliable@{q}") == 0 else ""
                cells.append("" if p50 != p50 else f"{p50:.3g} / {p99:.3g}{flag}")
            accuracy = "" if r["accuracy"] != r["accuracy"] else f"{r['accuracy']:.4f}"
            table.add_row(Text(r["path"]), accuracy, f"{r['param_bytes'] / 2**20:,.1f}", *cells)
        console.print(table)
