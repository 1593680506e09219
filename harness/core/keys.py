"""The identities of what a run measures and of the model it trains, as stable hashes of its config.

- `run_key`: what is measured (the resolved config, less where results go and how the job is run, plus
  the harness version). A sweep skips a job whose run key already has a FINISHED run (resume).
- `quality_key`: what determines the trained weights (representation without its cache or table storage,
  dataset, model, training, seed; not the backend nor the precision: training is fp32, and reduced
  precision is applied to the trained weights). Runs with the same quality key share one training.

The default precision (fp32 compute, fp32 tables), `backend.graphs=false` and `backend.allocator=retain` are
left out, so the keys of runs recorded before these were choices stay what they were, and those runs still
resume.

Both take `RunConfig.as_dict()`, so they never depend on how the config was typed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import harness
from harness.core.precision import DEFAULT

# Keys that say where results go or whether to run, not what is measured: left out of the run key.
NOT_IN_RUN_KEY = ("tracking", "dry_run", "experiment_name", "force", "isolate", "job_timeout_s", "debug",
                  "analysis_after_sweep", "analysis_scope", "serving_after_sweep")


def _digest(identity: Any) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_key(config: Mapping[str, Any]) -> str:
    """Stable hash of what is measured: a rerun's identity."""
    measured = {k: v for k, v in config.items() if k not in NOT_IN_RUN_KEY}
    if measured.get("precision", {}).get("name") == DEFAULT:
        del measured["precision"]
    if measured.get("backend", {}).get("graphs") is False:  # added with CUDA graphs; eager runs keep keys
        measured["backend"] = {k: v for k, v in measured["backend"].items() if k != "graphs"}
    for key, default in (("allocator", "retain"), ("huge_pages", True)):
        if measured.get("backend", {}).get(key) == default:
            # The CPU's defaults since issue 24, left out as code changes are: runs recorded before keep keys.
            measured["backend"] = {k: v for k, v in measured["backend"].items() if k != key}
    measured["representation"] = _without_universal_hash(_without_default_storage(measured["representation"]))
    # The stability rules judge a measurement, they do not change what is measured (added in issue 22):
    # runs recorded before them keep their keys; force=true measures again under changed thresholds.
    if isinstance(measured.get("measure"), dict):
        measured["measure"] = {k: v for k, v in measured["measure"].items() if k != "stability"}
    return _digest({"config": measured, "harness": harness.__version__})


def quality_key(config: Mapping[str, Any]) -> str:
    """What determines the trained model: not the backend, the query sizes, a cache or where results go."""
    identity = {
        "representation": _without_universal_hash(
            _without_default_storage(_without_cache(config["representation"]), always=True)),
        "dataset": config["dataset"],
        "model": config["model"], "train": {k: v for k, v in config["train"].items() if k != "reuse"},
        "seed": config["seed"], "harness": harness.__version__,
    }
    return _digest(identity)


def _without_default_storage(node: Any, always: bool = False) -> Any:
    """The representation without `storage` where it is fp32 (or always: storage is applied after
    training)."""
    if isinstance(node, dict) and "storage" in node and (always or node["storage"] == DEFAULT):
        return {k: v for k, v in node.items() if k != "storage"}
    return node


def _without_universal_hash(node: Any) -> Any:
    """The representation without DHE's `hash` where it is `universal`, the only family before the key was
    added (issue 24): runs recorded before keep their keys; multiply_shift, other codes, gets its own."""
    if not isinstance(node, dict):
        return node
    return {k: _without_universal_hash(v) for k, v in node.items() if not (k == "hash" and v == "universal")}


def _without_cache(node: Any) -> Any:
    """A cache serves the trained model's own outputs: it is not part of what training produces."""
    if isinstance(node, dict):
        return {k: _without_cache(v) for k, v in node.items() if k != "cache"}
    return node
