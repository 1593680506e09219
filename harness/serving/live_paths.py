"""Live serving of a study: rebuild the experiment's measured paths on this machine, serve them under
LoadGen with one policy, and compare what LoadGen measured with the simulator's prediction.

Each measured path whose device is here is rebuilt from its run's resolved config, with the trained
weights of its quality run where it has one, and prepared on its adapter; adapters are closed after.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from harness.core.errors import ConfigError
from harness.core.schema import plain
from harness.data.sources import SyntheticDataset
from harness.pipeline.cache import attach_caches, cache_enabled
from harness.pipeline.config import from_record
from harness.pipeline.plan import plan
from harness.pipeline.quality import WEIGHTS, load_weights
from harness.pipeline.run import close_quietly, prepare_on
from harness.serving.config import ServingConfig
from harness.serving.live import LivePath, query_batches, serve
from harness.serving.simulator import Batching, simulate
from harness.serving.study import BATCHED, build_policies, draw_sizes
from harness.tracking import Store
from harness.workload.dlrm import build_model
from harness.workload.precision import apply_precision


def run_live(cfg: ServingConfig, study, profiles, records: list[dict], store: Store, folder: Path) -> dict:
    live_paths, generator = build_live_paths(cfg, profiles, records, store)
    try:
        return _serve_and_compare(cfg, study, live_paths, generator, folder)
    finally:
        for path in live_paths:
            close_quietly(path.adapter)


def _serve_and_compare(cfg: ServingConfig, study, live_paths: list[LivePath], generator,
                       folder: Path) -> dict:
    live_profiles = [p.profile for p in live_paths]
    sizes = draw_sizes(cfg, cfg.live.samples, cfg.seed + 1)
    candidates = {p.name: p for p in build_policies(cfg, live_profiles, sizes)}
    if cfg.live.policy not in candidates:
        raise ConfigError("live.policy",
                          f"{cfg.live.policy!r} is not among this study's policies {sorted(candidates)}")
    policy = candidates[cfg.live.policy]
    batching = (Batching(cfg.batching.max_samples, tuple(cfg.batching.devices), cfg.batching.cpu)
                if cfg.live.batching else None)
    qps = cfg.live.qps
    if qps is None:
        name = cfg.live.policy + (BATCHED if batching is not None else "")
        row = study.table[study.table["policy"] == name]
        qps = 0.8 * float(row["max_qps"].iloc[0]) if len(row) else 10.0
    result = serve(live_paths, policy, query_batches(generator, sizes), sizes, qps, cfg.target_ms,
                   cfg.live.duration_s, log_dir=str(folder / "loadgen"), batching=batching)
    # The simulator's prediction for the same setting: same paths, policy, sizes and offered load.
    n = max(2000, int(qps * cfg.live.duration_s))
    rng = np.random.default_rng([cfg.seed, 0x11FE])
    sim_sizes = draw_sizes(cfg, n, cfg.seed + 2)
    predicted = simulate(policy, live_profiles, np.cumsum(rng.exponential(1.0, n)) / qps, sim_sizes,
                         cfg.target_ms, batching)
    predicted_p99 = predicted.percentile(99)
    out = {"live_target_qps": qps, "live_p99_ms": result.p99_ms, "simulated_p99_ms": predicted_p99,
           "prediction_error": (result.p99_ms - predicted_p99) / predicted_p99,
           "live_errors": float(result.errors), "live_served": float(result.served),
           "live_calls": float(result.calls), "live_batching": float(batching is not None),
           "live_achieved_qps": float(result.loadgen.get("achieved_qps", float("nan"))),
           "live_valid": float(result.loadgen.get("validity") == "VALID")}
    out["live_validity"] = result.loadgen.get("validity", "?")
    (folder / "live.json").write_text(json.dumps({**out, "routed": result.per_path}, indent=2, default=str))
    return out


def build_live_paths(cfg: ServingConfig, profiles, records: list[dict], store: Store):
    """Rebuild each measured, present path from its run (weights where trained) on its backend. Paths whose
    adapters set process-wide state differently (torch's threads, CUDA's TF32) are refused before any is
    built; if one fails to build, those already prepared are closed."""
    planned = _plans(profiles, records, store)
    if not planned:
        raise ConfigError("live.enabled", "no measured path of this experiment can run on this machine")
    _refuse_conflicts(planned)
    live, generator = [], None
    try:
        for profile, p, weights_run in planned:
            model = _model(p, weights_run, store)
            if generator is None:
                if p.run.dataset.kind != "synthetic":
                    raise ValueError(
                        "live serving draws its queries from the synthetic generator of the paths' dataset"
                    )
                generator = SyntheticDataset(p.run.dataset, p.spec).generator
            prepare_on(p.adapter, model, None, p.run.precision.name)
            live.append(LivePath(profile, p.adapter, fails=profile.path == cfg.live.fault_path))
    except BaseException:
        for path in live:
            close_quietly(path.adapter)
        raise
    return live, generator


def _plans(profiles, records: list[dict], store: Store) -> list:
    """(profile, plan, run holding its weights) for each measured profile whose backend is here."""
    by_run = {r["run_id"]: r for r in records}
    planned, workload = [], None
    for profile in profiles:
        record = by_run.get(profile.run_id)
        if record is None:
            continue  # a file's or a scaled stand-in's profile: nothing here to run
        with tempfile.TemporaryDirectory() as tmp:
            path = store.download(profile.run_id, "config/resolved.yaml", tmp)
            config = plain(OmegaConf.load(path))
        p = plan({**from_record(config), "dry_run": False})
        if not p.adapter.available()[0]:
            continue
        key = (p.run.dataset.name, p.run.dataset.scale)
        if workload not in (None, key):
            raise ValueError(
                f"live paths must share one workload; {profile.name} is {key}, others {workload}"
            )
        workload = key
        planned.append((profile, p, record["tags"].get("quality_source_run")))
    return planned


def _refuse_conflicts(planned: list) -> None:
    """Process-wide settings are the last path's for all: two paths that need different ones cannot be
    served side by side in one process (a tf32 path would make an fp32 one run in TF32)."""
    seen: dict[str, tuple[object, str]] = {}
    for profile, p, _ in planned:
        for setting, value in p.adapter.process_settings(p.run.precision.name).items():
            if setting in seen and seen[setting][0] != value:
                raise ConfigError(
                    "live.enabled",
                    f"{seen[setting][1]} and {profile.name} need different "
                    f"{setting} ({seen[setting][0]} and {value}), a process-wide setting: serve "
                    "them in separate studies (serving.paths)",
                )
            seen.setdefault(setting, (value, profile.name))


def _model(p, weights_run: str | None, store: Store):
    """The plan's model with its quality run's trained weights, precision and caches applied."""
    model = build_model(p.spec, seed=p.run.seed)
    if weights_run:
        with tempfile.TemporaryDirectory() as tmp:
            load_weights(model, store.download(weights_run, WEIGHTS, tmp))
    apply_precision(model, p.run.precision.name, getattr(p.run.representation, "storage", "fp32"))
    if cache_enabled(p.spec):
        attach_caches(model, p.spec, SyntheticDataset(p.run.dataset, p.spec), None)
    return model
