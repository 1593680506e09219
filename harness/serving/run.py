"""A serving study from recorded runs: gather the profiles, simulate every policy, write and record it.

Profiles come from the experiment's latency runs (profiles.py), profile files and labelled scaled
stand-ins; results go to `<results_dir>/<experiment>/serving/` and an MLflow run (tag mprec.kind=serving).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from harness.analysis.runs import join_quality, tidy
from harness.core import prices
from harness.core.errors import ConfigError
from harness.core.schema import container, typed
from harness.serving import profiles as prof
from harness.serving.config import ServingConfig
from harness.serving.study import backend_of_path, plot, run_study, scaled_profiles
from harness.tracking import Store, studies_experiment


def load_serving_config(cfg) -> ServingConfig:
    return typed(ServingConfig, container(cfg), root="serving")


def gather_profiles(cfg: ServingConfig, records: list[dict]) -> list[prof.PathProfile]:
    """Measured profiles of the experiment's runs, profile files, labelled scaled stand-ins."""
    measured = prof.from_runs(join_quality(tidy(records)), cfg.workload) if records else []
    extra = prof.with_accuracy_of(measured, [p for f in cfg.profile_files for p in prof.load(f)])
    profiles = measured + extra + scaled_profiles(measured, cfg.scaled_devices)
    if cfg.paths:
        known = {p.path for p in profiles} | {p.name for p in prof.distinguish(profiles)}
        missing = [p for p in cfg.paths if p not in known]
        if missing:
            raise ConfigError("paths", f"{missing} have no profile; known: {sorted(known)}")
        profiles = [p for p in prof.distinguish(profiles) if p.path in cfg.paths or p.name in cfg.paths]
    return prof.distinguish(profiles)


def check_inputs(cfg: ServingConfig, profiles: list[prof.PathProfile], where: str) -> None:
    """Refuse a study whose inputs are missing, before simulating: no profile at all, or a path without a
    measured accuracy (the study scores correct predictions/s, which would be NaN), saying how to record
    them."""
    unrated = sorted(p.path for p in profiles if p.accuracy is None)
    if profiles and not unrated:
        return
    command = cfg.inputs_command or (f"python -m harness -m representation=table,dhe train.steps=2000 "
                                     f"experiment_name={cfg.experiment_name}")
    how = f"record paths with their quality first: {command}"
    if not profiles:
        raise ValueError(
            f"no profiles: experiment '{cfg.experiment_name}' has no finished latency runs in {where} "
            f"and no profile file was given; {how}"
        )
    raise ValueError(f"no measured accuracy for {', '.join(unrated)} (experiment '{cfg.experiment_name}' in "
                     f"{where} has no finished run of their representation with quality); {how}")


def study_metrics(study, live: dict | None) -> dict[str, float]:
    """The headline and each policy's figures at its max load, as flat metrics."""
    metrics = {k: v for k, v in study.headline.items() if isinstance(v, (int, float))}
    batched = study.headline.get("with_batching") or {}
    metrics.update({f"batching.{k}": v for k, v in batched.items() if isinstance(v, (int, float))})
    for _, row in study.table.iterrows():
        for key in ("max_qps", "correct_per_s", "p99_ms", "accuracy_served", "usd_per_million_correct",
                    "correct_per_joule"):
            if key in row and row[key] == row[key]:
                metrics[f"{row['policy']}.{key}".replace("@", "_at_")] = row[key]
    if live is not None:
        metrics.update({k: v for k, v in live.items() if isinstance(v, (int, float))})
    return metrics


def reliability_of_inputs(profiles: list[prof.PathProfile]) -> str:
    """One sentence: which profiles' latencies come from measurements flagged unreliable, and which are of
    unknown reliability (recorded before it was judged, or from a file that does not say)."""
    flagged = [
        f"{p.name} at {', '.join(map(str, p.unreliable_sizes()))}" for p in profiles if p.unreliable_sizes()
    ]
    unknown = [p.name for p in profiles if not p.reliable or all(v != v for v in p.reliable)]
    parts = []
    if flagged:
        parts.append(
            "unreliable inputs (measurements that broke a stability rule, docs/measurement.md): "
            + "; ".join(flagged)
            + ". Their latencies feed the policies as measured: measure those paths "
            "again on a quiet machine before trusting this study"
        )
    if unknown:
        parts.append("reliability unknown for " + ", ".join(sorted(unknown)))
    return ("; ".join(parts) + ".") if parts else "Every input latency passed the stability rules."


def run_serving(cfg: ServingConfig, quiet: bool = False) -> dict:
    store = Store(cfg.tracking, cfg.experiment_name, create=False)  # a study that fails creates nothing
    records = store.load_runs("latency")
    profiles = gather_profiles(cfg, records)
    check_inputs(cfg, profiles, store.uri)
    study = run_study(cfg, profiles)
    folder = Path(cfg.output_dir or Path(cfg.tracking.results_dir) / cfg.experiment_name / "serving")
    folder.mkdir(parents=True, exist_ok=True)
    study.table.to_csv(folder / "serving.csv", index=False)
    study.sweep.to_csv(folder / "serving_load.csv", index=False)
    prof.save(profiles, folder / "profiles.json", {"experiment": cfg.experiment_name})
    plot(study, cfg, folder / "serving.png")
    live = None
    if cfg.live.enabled:
        from harness.serving.live_paths import run_live  # loads the models (torch); a simulation never does

        live = run_live(cfg, study, profiles, records, store, folder)
    whatif = None
    if cfg.what_if.enabled:
        from harness.serving import whatif as wi

        whatif = wi.what_if(cfg, profiles)
        whatif.to_csv(folder / "whatif.csv", index=False)
        wi.plot(whatif, folder / "whatif.png")
    (folder / "serving.md").write_text(markdown(cfg, study, live) + what_if_section(whatif))
    run_id = None
    if cfg.log_to_mlflow:
        tags: dict[str, Any] = {"target_ms": cfg.target_ms, "percentile": cfg.percentile,
                                "live": cfg.live.enabled}
        shaky = [f"{p.name} at {','.join(map(str, p.unreliable_sizes()))}" for p in profiles
                 if p.unreliable_sizes()]
        if shaky:
            tags["unreliable_inputs"] = "; ".join(shaky)
        if live is not None:
            tags["live_validity"] = live.get("live_validity", "?")
        studies = Store(cfg.tracking, studies_experiment(cfg.experiment_name))
        run_id = studies.record_files("serving", f"serving study of {cfg.experiment_name}", folder, tags,
                                      study_metrics(study, live))
    if not quiet:
        print(markdown(cfg, study, live) + what_if_section(whatif))
        files = ", ".join(sorted(f.name for f in folder.iterdir() if f.is_file()))
        print(
            f"written: {folder} ({files})"
            + (
                f"; recorded as MLflow run {run_id} in experiment '{studies_experiment(cfg.experiment_name)}'"
                if run_id
                else ""
            ),
            file=sys.stderr,
        )
    return {"headline": study.headline, "table": study.table, "live": live, "folder": folder,
            "run_id": run_id, "profiles": study.profiles, "whatif": whatif}


def markdown(cfg: ServingConfig, study, live: dict | None) -> str:
    pct = f"p{cfg.percentile:g}"
    lines = [
        f"# Serving: experiment '{cfg.experiment_name}', {pct} <= {cfg.target_ms:g} ms",
        "",
        "| policy | max QPS at target | p50 ms | p95 ms | p99 ms | SLA violations | accuracy served "
        "| correct predictions/s | $ per million correct | correct per joule |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in study.table.iterrows():
        if not r["max_qps"] > 0:
            lines.append(f"| {r['policy']} | cannot meet the target at any load | | | | | | | | |")
            continue
        lines.append(
            f"| {r['policy']} | {r['max_qps']:,.1f} | {r.get('p50_ms', float('nan')):.2f} | "
            f"{r.get('p95_ms', float('nan')):.2f} | {r.get('p99_ms', float('nan')):.2f} | "
            f"{100 * r.get('violation_rate', float('nan')):.2f}% | "
            f"{r.get('accuracy_served', float('nan')):.4f} | "
            f"{r.get('correct_per_s', float('nan')):,.0f} | {money(r)} | {per_joule(r)} |"
        )
    for title, h in (("Headline", study.headline), ("With device batching",
                                                    study.headline.get("with_batching"))):
        if h and "ratio" in h:
            threshold = (f"; against the size-threshold policy {h['ratio_vs_size_threshold']:.2f}x"
                         if "ratio_vs_size_threshold" in h else "")
            lines += [
                "",
                f"**{title}**: {h['mprec_policy']} serves {h['mprec_correct_per_s']:,.0f} correct "
                f"predictions/s at {h['mprec_max_qps']:,.1f} QPS against "
                f"{h['static_correct_per_s']:,.0f} for "
                f"the best static path ({h['best_static']} at {h['static_max_qps']:,.1f} QPS): "
                f"**{h['ratio']:.2f}x**, with {h['accuracy_gain_points']:+.2f} accuracy points{threshold}."
                + (f" The ratio is {h['accuracy_term']:.3f}x in accuracy served times "
                   f"{h['throughput_term']:.3f}x in correct predictions per unit of accuracy (about the "
                   "samples served in time per second)."
                   if "accuracy_term" in h else ""),
            ]
    lines += ["", cost_sentence(cfg, study)]
    sources = sorted({f"{p.name}: {p.source}" for p in study.profiles})
    lines += ["", "Profiles:", *(f"- {s}" for s in sources)]
    lines += ["", reliability_of_inputs(study.profiles)]
    if live:
        lines += [
            "",
            f"**Live (LoadGen, Server scenario)**: target {live['live_target_qps']:.1f} QPS, achieved "
            f"{live.get('live_achieved_qps', float('nan')):.1f}; p99 "
            f"{live.get('live_p99_ms', float('nan')):.2f} ms "
            f"vs simulated {live['simulated_p99_ms']:.2f} ms (error {100 * live['prediction_error']:+.1f}%); "
            f"validity {live.get('live_validity', '?')}; errors {live['live_errors']:.0f}.",
        ]
    return "\n".join(lines) + "\n"


def money(row) -> str:
    value = row.get("usd_per_million_correct", float("nan"))
    if value == value:
        return f"${value:.4g}"
    return f"- (no price: {row['unpriced']})" if row.get("unpriced") else "-"


def per_joule(row) -> str:
    value = row.get("correct_per_joule", float("nan"))
    return f"{value:,.4g}" if value == value else "-"


def cost_sentence(cfg: ServingConfig, study) -> str:
    """Where the $ and the joules come from, and why a column is empty."""
    table = prices.load(cfg.prices_file)
    backend_of = {p.device: backend_of_path(p.path) for p in study.profiles}
    entries = {d: prices.entry_for(table, d, b) for d, b in sorted(backend_of.items())}
    named = "; ".join(f"{d}: ${e.usd_per_hour:g}/h per {e.per} ({e.source}, {e.date})" if e else
                      f"{d}: no price" for d, e in entries.items())
    unmeasured = sorted(p.name for p in study.profiles if p.joules_table(1) is None)
    energy = ("Correct predictions per joule: the energy of the calls served, from each path's measured "
              "joules per sample." if not unmeasured else
              "Correct predictions per joule: not measured for " + ", ".join(unmeasured) + " (no readable "
              "energy counter where they were measured: their runs' tag `energy` says why).")
    return ("Cost: $ per million correct predictions = the $/hour of the devices a policy kept busy / 3600 "
            f"/ correct predictions per second x 1e6; prices ({cfg.prices_file or 'conf/prices.yaml'}): "
            f"{named}. " + energy)


def what_if_section(table) -> str:
    """The what-if sweep in serving.md: the ratio at each point, and where it reaches 2x and the paper's."""
    if table is None or table.empty:
        return ""
    lines = ["", "## What if (scaled stand-ins; (1x, 1x) is the measured pair: whatif.png)", "",
             "| CPU paths faster by | GPU paths slower by | batching | MP-Rec / best static |",
             "|---|---|---|---|"]
    for _, r in table.iterrows():
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] == r["ratio"] else f"- ({r['why']})"
        batching = "on" if r["batching"] else "off"
        lines.append(f"| {r['cpu_speedup']:g}x | {r['gpu_slowdown']:g}x | {batching} | {ratio} |")
    return "\n".join(lines) + "\n"


def main_cli(cfg) -> int:
    try:
        config = load_serving_config(cfg)
        if config.paper:
            from harness.serving.paper import run_paper

            run_paper(config)
        else:
            run_serving(config)
    except ValueError as exc:  # ConfigError included: a bad key, a missing input, an impossible target
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
