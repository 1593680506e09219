"""MP-Rec serving: path-selection policies, an open-loop simulator, and live serving under LoadGen.

    python -m harness.serving experiment_name=mprec target_ms=10        # simulate every policy
    python -m harness.serving serving=mprec_headline                    # the two-device headline study
    python -m harness.serving live.enabled=true                         # also serve for real (LoadGen)

Profiles come from an experiment's latency runs (harness/serving/profiles.py); results go to
`<results_dir>/<experiment>/serving/` and an MLflow run (tag mprec.kind=serving). docs/serving.md.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from harness.serving import profiles as prof
from harness.serving.report import ServingConfig, plot, run_study, scaled_profiles


def load_serving_config(cfg) -> ServingConfig:
    from harness.config import load_section

    return load_section(cfg, ServingConfig, "check", "serving")


def gather_profiles(cfg: ServingConfig) -> tuple[list[prof.PathProfile], list[dict]]:
    """Measured profiles of the experiment, profile files, labelled scaled stand-ins; and the run records."""
    from harness.analysis.runs import join_quality, tidy
    from harness.tracking import load_runs

    records = load_runs(cfg.tracking, cfg.experiment_name)
    measured = prof.from_runs(join_quality(tidy(records))) if records else []
    extra = prof.with_accuracy_of(measured, [p for f in cfg.profile_files for p in prof.load(f)])
    profiles = measured + extra + scaled_profiles(measured, cfg.scaled_devices)
    if cfg.paths:
        known = {p.path for p in profiles}
        missing = [p for p in cfg.paths if p not in known]
        if missing:
            raise ValueError(f"paths: {missing} have no profile; known: {sorted(known)}")
        profiles = [p for p in profiles if p.path in cfg.paths]
    return profiles, records


def run_serving(cfg: ServingConfig, quiet: bool = False) -> dict:
    from harness.tracking import Ledger

    profiles, records = gather_profiles(cfg)
    study = run_study(cfg, profiles)
    folder = Path(cfg.output_dir or Path(cfg.tracking.results_dir) / cfg.experiment_name / "serving")
    folder.mkdir(parents=True, exist_ok=True)
    study.table.to_csv(folder / "serving.csv", index=False)
    study.sweep.to_csv(folder / "serving_load.csv", index=False)
    prof.save(profiles, folder / "profiles.json", {"experiment": cfg.experiment_name})
    plot(study, cfg, folder / "serving.png")
    live = run_live(cfg, study, profiles, records, folder) if cfg.live.enabled else None
    (folder / "serving.md").write_text(markdown(cfg, study, live))
    run_id = None
    if cfg.log_to_mlflow:
        ledger = Ledger(cfg.tracking, cfg.experiment_name)
        run_id = ledger.create("serving", {"mprec.kind": "serving", "target_ms": cfg.target_ms,
                                           "percentile": cfg.percentile, "live": cfg.live.enabled})
        metrics = {f"{k}": v for k, v in study.headline.items() if isinstance(v, (int, float))}
        for _, row in study.table.iterrows():
            for key in ("max_qps", "correct_per_s", "p99_ms", "accuracy_served"):
                if key in row and row[key] == row[key]:
                    metrics[f"{row['policy']}.{key}".replace("@", "_at_")] = row[key]
        if live is not None:
            metrics.update({k: v for k, v in live.items() if isinstance(v, (int, float))})
            ledger.set_tags(run_id, {"live_validity": live.get("live_validity", "?")})
        import re

        for key, value in metrics.items():  # MLflow allows letters, digits and _-. :/ in names
            ledger.client.log_metric(run_id, re.sub(r"[^\w\-. :/]", "_", key)[:250], float(value))
        ledger.client.log_artifacts(run_id, str(folder))
        ledger.finish(run_id)
    if not quiet:
        print(markdown(cfg, study, live))
    return {"headline": study.headline, "table": study.table, "live": live, "folder": folder, "run_id": run_id}


def markdown(cfg: ServingConfig, study, live: dict | None) -> str:
    pct = f"p{cfg.percentile:g}"
    lines = [f"# Serving: experiment '{cfg.experiment_name}', {pct} <= {cfg.target_ms:g} ms", "",
             "| policy | max QPS at target | p50 ms | p95 ms | p99 ms | SLA violations | accuracy served | correct predictions/s |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in study.table.iterrows():
        if not r["max_qps"] > 0:
            lines.append(f"| {r['policy']} | cannot meet the target at any load | | | | | | |")
            continue
        lines.append(f"| {r['policy']} | {r['max_qps']:,.1f} | {r.get('p50_ms', float('nan')):.2f} | "
                     f"{r.get('p95_ms', float('nan')):.2f} | {r.get('p99_ms', float('nan')):.2f} | "
                     f"{100 * r.get('violation_rate', float('nan')):.2f}% | {r.get('accuracy_served', float('nan')):.4f} | "
                     f"{r.get('correct_per_s', float('nan')):,.0f} |")
    h = study.headline
    if h:
        lines += ["", f"**Headline**: {h['mprec_policy']} serves {h['mprec_correct_per_s']:,.0f} correct predictions/s "
                      f"at {h['mprec_max_qps']:,.1f} QPS against {h['static_correct_per_s']:,.0f} for the best static "
                      f"path ({h['best_static']} at {h['static_max_qps']:,.1f} QPS): **{h['ratio']:.2f}x**, with "
                      f"{h['accuracy_gain_points']:+.2f} accuracy points."]
    sources = sorted({f"{p.path}: {p.source}" for p in study.profiles})
    lines += ["", "Profiles:", *(f"- {s}" for s in sources)]
    if live:
        lines += ["", f"**Live (LoadGen, Server scenario)**: target {live['live_target_qps']:.1f} QPS, achieved "
                      f"{live.get('live_achieved_qps', float('nan')):.1f}; p99 {live.get('live_p99_ms', float('nan')):.2f} ms "
                      f"vs simulated {live['simulated_p99_ms']:.2f} ms (error {100 * live['prediction_error']:+.1f}%); "
                      f"validity {live.get('live_validity', '?')}; errors {live['live_errors']:.0f}."]
    return "\n".join(lines) + "\n"


def run_live(cfg: ServingConfig, study, profiles, records, folder: Path) -> dict:
    from harness.serving.live import LivePath, query_batches, serve
    from harness.serving.report import build_policies, draw_sizes
    from harness.serving.simulator import simulate

    live_paths, generator = build_live_paths(cfg, profiles, records)
    live_profiles = [p.profile for p in live_paths]
    sizes = draw_sizes(cfg, cfg.live.samples, cfg.seed + 1)
    candidates = {p.name: p for p in build_policies(cfg, live_profiles, sizes)}
    if cfg.live.policy not in candidates:
        raise ValueError(f"live.policy: {cfg.live.policy!r} is not among this study's policies {sorted(candidates)}")
    policy = candidates[cfg.live.policy]
    qps = cfg.live.qps
    if qps is None:
        row = study.table[study.table["policy"] == cfg.live.policy]
        qps = 0.8 * float(row["max_qps"].iloc[0]) if len(row) else 10.0
    result = serve(live_paths, policy, query_batches(generator, sizes), sizes, qps, cfg.target_ms,
                   cfg.live.duration_s, log_dir=str(folder / "loadgen"))
    # The simulator's prediction for the same setting: same paths, policy, sizes and offered load.
    n = max(2000, int(qps * cfg.live.duration_s))
    rng = np.random.default_rng([cfg.seed, 0x11FE])
    sim_sizes = draw_sizes(cfg, n, cfg.seed + 2)
    predicted = simulate(policy, live_profiles, np.cumsum(rng.exponential(1.0, n)) / qps, sim_sizes, cfg.target_ms)
    predicted_p99 = predicted.percentile(99)
    out = {"live_target_qps": qps, "live_p99_ms": result.p99_ms, "simulated_p99_ms": predicted_p99,
           "prediction_error": (result.p99_ms - predicted_p99) / predicted_p99,
           "live_errors": float(result.errors), "live_served": float(result.served),
           "live_achieved_qps": float(result.loadgen.get("achieved_qps", float("nan"))),
           "live_valid": float(result.loadgen.get("validity") == "VALID")}
    out["live_validity"] = result.loadgen.get("validity", "?")
    (folder / "live.json").write_text(json.dumps({**out, "routed": result.per_path}, indent=2, default=str))
    return out


def build_live_paths(cfg: ServingConfig, profiles, records):
    """Rebuild each measured, present path from its run (weights where trained) on its backend."""
    import tempfile

    from omegaconf import OmegaConf

    from harness.data.sources import SyntheticDataset
    from harness.quality_stage import WEIGHTS, load_weights
    from harness.serving.live import LivePath
    from harness.task import plan
    from harness.tracking import Ledger
    from harness.workload.dlrm import build_model

    by_run = {r["run_id"]: r for r in records}
    ledger = Ledger(cfg.tracking, cfg.experiment_name)
    live, generator, workload = [], None, None
    for profile in profiles:
        run_id = profile.source.split("run ")[-1].rstrip(")") if profile.source.startswith("measured") else None
        record = by_run.get(run_id)
        if record is None:
            continue  # a file's or a scaled stand-in's profile: nothing here to run
        with tempfile.TemporaryDirectory() as tmp:
            config = OmegaConf.to_container(OmegaConf.load(ledger.client.download_artifacts(
                run_id, "config/resolved.yaml", tmp)))
            p = plan({**config, "dry_run": False})
            if not p.adapter.available()[0]:
                continue
            model = build_model(p.spec, seed=p.run.seed)
            source = record["tags"].get("quality_source_run")
            if source:
                load_weights(model, ledger.client.download_artifacts(source, WEIGHTS, tmp))
        key = (p.run.dataset.name, p.run.dataset.scale)
        if workload not in (None, key):
            raise ValueError(f"live paths must share one workload; {profile.path} is {key}, others {workload}")
        workload = key
        if generator is None:
            if p.run.dataset.kind != "synthetic":
                raise ValueError("live serving draws its queries from the synthetic generator of the paths' dataset")
            generator = SyntheticDataset(p.run.dataset, p.spec).generator
        from harness.cache_stage import attach_caches, cache_enabled

        if cache_enabled(p.spec):
            attach_caches(model, p.spec, SyntheticDataset(p.run.dataset, p.spec), None)
        p.adapter.prepare(model, None)
        live.append(LivePath(profile, p.adapter, fails=profile.path == cfg.live.fault_path))
    if not live:
        raise ValueError("live: no measured path of this experiment can run on this machine")
    return live, generator


def main_cli(cfg) -> int:
    from harness.config import ConfigError

    try:
        run_serving(load_serving_config(cfg))
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["ServingConfig", "load_serving_config", "run_serving", "asdict"]
