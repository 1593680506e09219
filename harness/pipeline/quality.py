"""The quality stage of a run: train and evaluate once per (representation, dataset, model, training,
seed), and let every other run of that combination (another backend, a rerun) reuse it.

The run that trains tags itself `quality_key=<hash>` (harness/core/keys.py) and `quality_trained=true`,
logs the final `accuracy`, `auc`, `log_loss` and `positive_rate`, and stores the weights as
`model/state_dict.pt`. A later run with the same key finds that FINISHED run in its experiment, loads
the weights (`torch.load(..., weights_only=True)`), copies the quality metrics and tags
`quality_source_run`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable

import torch

from harness.core.keys import quality_key
from harness.core.schema import RunConfig
from harness.tracking import RunRecorder
from harness.workload.training import train

log = logging.getLogger(__name__)

QUALITY_METRICS = ("accuracy", "auc", "log_loss", "positive_rate")
WEIGHTS = "model/state_dict.pt"


def save_weights(model: torch.nn.Module, recorder: RunRecorder) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state_dict.pt"
        torch.save(model.state_dict(), path)
        recorder.log_file(path, "model")


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def train_or_reuse(run: RunConfig, model: torch.nn.Module, dataset, recorder: RunRecorder,
                   observe: Callable[[object], None] | None = None) -> dict[str, float]:
    """Give `model` trained weights and record the path's quality; returns the quality metrics."""
    key = quality_key(run.as_dict())
    recorder.set_tags({"quality_key": key})
    store = recorder.store
    if run.train.reuse:
        source = store.newest_finished({"quality_key": key, "quality_trained": "true"}, other_than=recorder.run_id)
        if source is not None:
            with tempfile.TemporaryDirectory() as tmp:
                load_weights(model, store.download(source.info.run_id, WEIGHTS, tmp))
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
