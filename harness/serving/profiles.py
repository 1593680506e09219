"""Latency profiles of paths: what the policies and the simulator know about each path.

A profile is a path's measured service time per query size (the p50 of its latency ladder), its
device (paths on one device share a FIFO server) and its accuracy. Profiles come from an experiment's
MLflow runs, or from a profile file (JSON) for devices not here, e.g. the GPU check's output, with its
provenance. A *scaled* profile (labelled as such, never mistaken for a measurement) stands in for a
device no profile exists for.

>>> p = PathProfile("table@cpu", "cpu", 0.78, (1, 64, 1024), (0.5, 1.8, 18.0))
>>> round(p.service_ms(32), 3), round(p.service_ms(2048), 3)   # interpolated; extrapolated linearly
(1.14, 35.28)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from harness.analysis.mapping import best_modes, latest_finished
from harness.core.errors import ConfigError
from harness.core.paths import PathLabel


@dataclass(frozen=True)
class PathProfile:
    path: str  # representation@backend
    device: str  # the server the path runs on
    accuracy: float | None
    sizes: tuple[int, ...]
    latency_ms: tuple[float, ...]  # service time at each size (p50)
    p99_ms: tuple[float, ...] = ()
    source: str = "measured"
    run_id: str | None = None  # the MLflow run a measured profile comes from
    extra: dict = field(default_factory=dict, compare=False)
    # Per size: 1.0 trusted, 0.0 flagged unreliable (harness/pipeline/stability.py), NaN unknown (recorded
    # before reliability was judged, or a file without it); empty: unknown at every size.
    reliable: tuple[float, ...] = ()
    # How tables, policies and plots name it when its label alone is ambiguous (the same label measured on
    # two devices, e.g. this machine's table@cpu and a GPU machine's host-CPU table@cpu): `distinguish`.
    display: str = ""
    cores: float | None = None  # the threads a host-CPU path ran on: what a per-core price multiplies
    # Per size: energy per sample (J) where the machine's counters were readable (harness/core/energy.py);
    # empty: not measured.
    joules_per_sample: tuple[float, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        """What identifies a profile: its path on its device (service tables, live serving, duplicates)."""
        return self.path, self.device

    @property
    def name(self) -> str:
        return self.display or self.path

    def unreliable_sizes(self) -> list[int]:
        """The query sizes whose latency this profile holds from a measurement flagged unreliable."""
        return [q for q, ok in zip(self.sizes, self.reliable) if ok == 0]

    def __post_init__(self) -> None:
        if not self.sizes or len(self.sizes) != len(self.latency_ms):
            raise ValueError(f"profile of {self.path}: no measured query sizes (an empty profile)")
        if list(self.sizes) != sorted(self.sizes):
            raise ValueError(f"profile of {self.path}: query sizes must be increasing, got {self.sizes}")
        if any(not (v > 0) for v in self.latency_ms):
            raise ValueError(f"profile of {self.path}: latencies must be positive, got {self.latency_ms}")

    def use_table(self, table: list[float] | None) -> None:
        """Let `service_ms` read a precomputed table (seconds by size) while a simulation runs."""
        object.__setattr__(self, "_table", table)

    def service_ms(self, size: float) -> float:
        """Piecewise-linear in query size; below the smallest size its latency; beyond the largest, the
        last segment's slope (never below the largest measured latency)."""
        table = getattr(self, "_table", None)
        if table is not None and type(size) is int and size < len(table):
            return table[size] * 1e3
        sizes, lat = self.sizes, self.latency_ms
        if size <= sizes[0] or len(sizes) == 1:
            return lat[0] if size <= sizes[0] else lat[0] * size / sizes[0]
        if size >= sizes[-1]:
            slope = (lat[-1] - lat[-2]) / (sizes[-1] - sizes[-2])
            return max(lat[-1], lat[-1] + slope * (size - sizes[-1]))
        return float(np.interp(size, sizes, lat))

    def service_table(self, max_size: int) -> list[float]:
        """Service time (seconds) for every size 0..max_size: the simulator's lookup table."""
        return [self.service_ms(max(1, q)) / 1e3 for q in range(max_size + 1)]

    def joules_table(self, max_size: int) -> list[float] | None:
        """Energy (J) of a call of every size 0..max_size: a call's energy interpolated between the measured
        sizes' (energy per sample x size; per-sample energy falls with size, so interpolating it instead
        would overstate the calls between), below the smallest and above the largest its energy per
        sample there times the size; None where energy was not measured at every size.

        >>> p = PathProfile("t@cuda", "gpu", 0.8, (1, 64, 1024), (1.0, 1.5, 6.0),
        ...                 joules_per_sample=(5e-3, 1e-4, 2e-5))
        >>> [round(j, 5) for j in p.joules_table(2048)[1:65:63]], round(p.joules_table(2048)[2048], 5)
        ([0.005, 0.0064], 0.04096)
        """
        jps = self.joules_per_sample
        if len(jps) != len(self.sizes) or not all(v == v and v > 0 for v in jps):
            return None
        sizes = np.arange(max_size + 1, dtype=float)
        energy = np.interp(sizes, self.sizes, np.asarray(jps) * np.asarray(self.sizes))
        below, above = sizes < self.sizes[0], sizes > self.sizes[-1]
        energy[below] = jps[0] * sizes[below]
        energy[above] = jps[-1] * sizes[above]
        return energy.tolist()

    def scaled(self, device: str, factor_per_sample: float, fixed_ms: float, label: str) -> "PathProfile":
        """A stand-in on another device: per-sample time divided by `factor_per_sample`, plus `fixed_ms`."""
        base = self.latency_ms[0]
        lat = tuple(
            fixed_ms + base / factor_per_sample + (v - base) / factor_per_sample for v in self.latency_ms
        )
        return PathProfile(str(PathLabel.parse(self.path).on(device)), device, self.accuracy, self.sizes, lat,
                           (), label)


def distinguish(profiles: list[PathProfile]) -> list[PathProfile]:
    """Refuse two profiles of one path on one device (two sources would silently share one service table:
    the error names both); name a label measured on several devices by label and device."""
    seen: dict[tuple[str, str], PathProfile] = {}
    for p in profiles:
        if p.key in seen:
            raise ValueError(
                f"two profiles of {p.path} on {p.device}: {seen[p.key].source} and {p.source}; keep "
                "one (serving.paths, or drop one of profile_files)"
            )
        seen[p.key] = p
    devices: dict[str, set[str]] = {}
    for p in profiles:
        devices.setdefault(p.path, set()).add(p.device)
    return [replace(p, display=f"{p.path} ({p.device})") if len(devices[p.path]) > 1 else p for p in profiles]


def one_workload(runs, wanted: str | None):
    """The rows of the one workload (dataset x scale) served: `wanted`, or the only one the finished
    runs hold. A path measured on two workloads is two different measurements: a profile built from both
    would interleave their latencies and take one's accuracy, so several are refused, named."""
    if "workload" not in runs or runs.empty:
        return runs
    held = sorted(str(w) for w in runs.loc[runs["status"] == "FINISHED", "workload"].dropna().unique())
    if wanted is None:
        if len(held) > 1:
            raise ConfigError("workload", f"the experiment's runs measure {len(held)} workloads ("
                              f"{'; '.join(held)}); a study serves one: workload='<one of them>'")
        return runs
    if wanted not in held:
        raise ConfigError("workload", f"{wanted!r} has no finished latency run; the experiment's runs "
                          f"measure: {'; '.join(held) or 'none'}")
    return runs[runs["workload"] == wanted]


def from_runs(runs, workload: str | None = None) -> list[PathProfile]:
    """Profiles from the analysis' tidy table (harness.analysis.runs) of one workload (`one_workload`):
    the latest FINISHED run per path, and per path family (harness/core/paths.py) the best execution mode
    measured at each query size: a family measured eager and with CUDA graphs is one profile, each size
    served in its faster mode (its source says which); its live path is the run of the mode that wins
    most sizes."""
    done = best_modes(latest_finished(one_workload(runs, workload)))
    done = done[done["feasible"] > 0]
    out = []
    for _, group in done.groupby("family" if "family" in done else "path", sort=True):
        g = group.sort_values("query_size")
        accuracy = g["accuracy"].iloc[0]
        # Labels as recorded: a family measured on two machines is two groups, told apart by `device`
        # (which names the host: harness/analysis/runs.py separate_hosts), never by the label.
        labels = list(g["path_label"] if "path_label" in g else g["path"])
        main = max(set(labels), key=lambda label: (labels.count(label), label))
        run_id = str(g[[label == main for label in labels]]["run_id"].iloc[0])
        workload = f", {g['workload'].iloc[0]}" if "workload" in g else ""
        if len(set(labels)) == 1:
            path, source = main, f"measured (run {run_id}{workload})"
        else:  # several modes: the family's label, and which mode served which sizes
            path = PathLabel.parse(main).family
            source = f"measured{workload}, best mode per size: " + ", ".join(
                f"{q} {PathLabel.parse(label).mode} (run {rid})" for q, label, rid in
                zip(g["query_size"], labels, g["run_id"]))
        out.append(
            PathProfile(
                path=path,
                device=str(g["device"].iloc[0]),
                accuracy=None
                if accuracy is None or (isinstance(accuracy, float) and math.isnan(accuracy))
                else float(accuracy),
                sizes=tuple(int(q) for q in g["query_size"]),
                latency_ms=tuple(float(v) for v in g["p50_ms"]),
                p99_ms=tuple(float(v) for v in g["p99_ms"]),
                source=source,
                run_id=run_id,
                cores=float(g["threads"].iloc[0]) if "threads" in g and g["threads"].iloc[0] > 0 else None,
                joules_per_sample=tuple(float(v) for v in g["joules_per_sample"])
                if "joules_per_sample" in g and g["joules_per_sample"].notna().all() else (),
                reliable=tuple(float(v) for v in g["reliable"]) if "reliable" in g else (),
            )
        )
    return out


def with_accuracy_of(measured: list[PathProfile], profiles: list[PathProfile]) -> list[PathProfile]:
    """Give a profile without accuracy (a latency-only file, e.g. the GPU check's) the accuracy of the
    measured path of the same representation and precision, and say so in its source. The harness trains
    on the host whatever the backend, so a representation's weights, and so its accuracy in a precision,
    do not depend on the device that serves them; a profile with no such path keeps None (the policies
    rank it last). A bf16 path never takes an fp32 path's accuracy."""
    by_rep = {PathLabel.parse(p.path).numbers: p for p in measured if p.accuracy is not None}
    out = []
    for p in profiles:
        donor = by_rep.get(PathLabel.parse(p.path).numbers)
        if p.accuracy is None and donor is not None:
            p = replace(p, accuracy=donor.accuracy,
                        source=f"{p.source}; accuracy of {donor.path} ({donor.source})")
        out.append(p)
    return out


def accuracy_donors(measured: list[PathProfile], provenance: dict) -> dict:
    """The measured accuracy of each (representation, precision) with the run it comes from: what a
    latency-only profile on another machine borrows (`with_donor_accuracy`), saved as JSON."""
    donors = {}
    for p in measured:
        if p.accuracy is not None:
            donors[PathLabel.parse(p.path).numbers] = {"accuracy": p.accuracy, "path": p.path,
                                                       "run_id": p.run_id}
    return {"provenance": provenance, "accuracy": donors}


def with_donor_accuracy(profiles: list[PathProfile], donors: dict) -> list[PathProfile]:
    """Profiles without accuracy take their (representation, precision)'s from a donors file
    (`accuracy_donors`), the donor run named in their source."""
    table, origin = donors["accuracy"], donors.get("provenance", {}).get("source", "a donors file")
    out = []
    for p in profiles:
        donor = table.get(PathLabel.parse(p.path).numbers)
        if p.accuracy is None and donor is not None:
            p = replace(p, accuracy=donor["accuracy"],
                        source=f"{p.source}; accuracy of run {donor['run_id']} ({donor['path']}, {origin})")
        out.append(p)
    return out


def save(profiles: list[PathProfile], path: str | Path, provenance: dict) -> None:
    # JSON: no NaN
    entries = [{**asdict(p), "reliable": [None if v != v else v for v in p.reliable]} for p in profiles]
    Path(path).write_text(json.dumps({"provenance": provenance, "paths": entries}, indent=2))


BUILTIN = Path(__file__).parent / "data"  # profiles shipped with the package: `builtin:<name>`


def load(path: str | Path) -> list[PathProfile]:
    """Profiles from a JSON file (`save`'s format), or `builtin:<name>` from harness/serving/data; errors
    name the file."""
    if str(path).startswith("builtin:"):
        path = BUILTIN / str(path).split(":", 1)[1]
    try:
        data = json.loads(Path(path).read_text())
        entries = data["paths"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a profile file ({exc})") from None
    source = data.get("provenance", {}).get("source", f"file {Path(path).name}")

    def origin(entry: dict) -> str:  # the path's own source (its run), then where the file came from
        return f"{entry['source']}, {source}" if entry.get("source") else source

    try:
        # No run_id: a file's profile is served from its figures, never rebuilt as this experiment's run.
        return [
            PathProfile(
                e["path"],
                e["device"],
                e.get("accuracy"),
                tuple(e["sizes"]),
                tuple(e["latency_ms"]),
                tuple(e.get("p99_ms", ())),
                origin(e),
                reliable=tuple(math.nan if v is None else float(v) for v in e.get("reliable", ())),
                cores=e.get("cores"),
                joules_per_sample=tuple(math.nan if v is None else float(v)
                                        for v in e.get("joules_per_sample") or ()),
            )
            for e in entries
        ]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
