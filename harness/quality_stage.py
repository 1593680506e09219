"""The quality stage of a run: train and evaluate once per (representation, dataset, model, training,
seed), and let every other run of that combination (another backend, a rerun) reuse it.

The run that trains tags itself `quality_key=<hash>` and `quality_trained=true`, logs the final
`accuracy`, `auc`, `log_loss` and `positive_rate`, and stores the weights as `model/state_dict.pt`.
A later run with the same key finds that FINISHED run in its experiment, loads the weights
(`torch.load(..., weights_only=True)`), copies the quality metrics and tags `quality_source_run`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import torch

import harness
from harness.train import train

log = logging.getLogger(__name__)

QUALITY_METRICS = ("accuracy", "auc", "log_loss", "positive_rate")
WEIGHTS = "model/state_dict.pt"


def quality_key(run) -> str:
    """What determines the trained model: not the backend, the query sizes, a cache or where results go."""
    config = run.as_dict()
    train_cfg = {k: v for k, v in config["train"].items() if k != "reuse"}
    config["representation"] = _without_cache(config["representation"])
    identity = {
        "representation": config["representation"], "dataset": config["dataset"], "model": config["model"],
        "train": train_cfg, "seed": config["seed"], "harness": harness.__version__,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _without_cache(node):
    """A cache serves the trained model's own outputs: it is not part of what training produces."""
    if isinstance(node, dict):
        return {k: _without_cache(v) for k, v in node.items() if k != "cache"}
    return node


def save_weights(model: torch.nn.Module, recorder) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state_dict.pt"
        torch.save(model.state_dict(), path)
        recorder.log_file(path, "model")


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def train_or_reuse(run, model: torch.nn.Module, dataset, recorder, observe=None) -> dict[str, float]:
    """Give `model` trained weights and record the path's quality; returns the quality metrics."""
    key = quality_key(run)
    recorder.set_tags({"quality_key": key})
    if run.train.reuse:
        source = recorder.find_finished_run({"quality_key": key, "quality_trained": "true"})
        if source is not None:
            with tempfile.TemporaryDirectory() as tmp:
                load_weights(model, recorder.download(source.info.run_id, WEIGHTS, tmp))
            quality = {k: source.data.metrics[k] for k in QUALITY_METRICS if k in source.data.metrics}
            recorder.log_metrics(quality)
            recorder.set_tags({"quality_source_run": source.info.run_id})
            log.info("quality reused from run %s (quality key %s)", source.info.run_id, key)
            return quality

    result = train(model, dataset, run.train, run.seed, on_metrics=recorder.log_metrics, observe=observe)
    quality = {k: v for k, v in result.quality.as_dict().items() if k in QUALITY_METRICS}
    recorder.log_metrics({**quality, "eval_samples": result.quality.samples, "train_steps": result.steps,
                          "train_seconds": result.seconds, "train_final_loss": result.final_train_loss})
    save_weights(model, recorder)
    recorder.set_tags({"quality_trained": "true", "quality_source_run": recorder.run_id})
    return quality
