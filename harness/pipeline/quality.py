"""The quality stage of a run: train and evaluate once per (representation, dataset, model, training,
seed), and let every other run of that combination (another backend, a rerun) reuse it.

The run that trains tags itself `quality_key=<hash>` (harness/core/keys.py) and `quality_trained=true`,
logs the final `accuracy`, `auc`, `log_loss` and `positive_rate`, and stores the weights as
`model/state_dict.pt`. A later run with the same key finds that FINISHED run in its experiment, loads
the weights (`torch.load(..., weights_only=True)`), copies the quality metrics and tags
`quality_source_run`.

Training is fp32 whatever the path's precision. A path in a reduced precision (or with fp16/int8 tables)
is then evaluated again in its own precision on the same held-out samples: its `accuracy`, `auc` and
`log_loss` are that evaluation's, the fp32 ones are kept as `accuracy_fp32`, ... and the differences as
`accuracy_delta`, ... (reduced minus fp32), so every study scores a path with its own accuracy.
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
from harness.workload.precision import apply_precision
from harness.workload.training import evaluate_model, train

log = logging.getLogger(__name__)

QUALITY_METRICS = ("accuracy", "auc", "log_loss", "positive_rate")
PRECISION_METRICS = ("accuracy", "auc", "log_loss")  # re-evaluated in a reduced precision
WEIGHTS = "model/state_dict.pt"
FP32_SUFFIX = "_fp32"


def is_reduced(run: RunConfig) -> bool:
    """Whether the path's quality differs from fp32's where it is evaluated (on the host): bf16, fp16 or
    reduced table storage. TF32 is a GPU matmul mode the host evaluation does not have: a tf32 path's
    quality is the fp32 evaluation's, and says so (tag `quality_precision=fp32`)."""
    compute = "fp32" if run.precision.name == "tf32" else run.precision.name
    return compute != "fp32" or getattr(run.representation, "storage", "fp32") != "fp32"


def _fp32_names(quality: dict[str, float], run: RunConfig) -> dict[str, float]:
    """fp32 quality under the names it is recorded with: `accuracy` on an fp32 path, else `accuracy_fp32`."""
    if not is_reduced(run):
        return quality
    return {f"{k}{FP32_SUFFIX}" if k in PRECISION_METRICS else k: v for k, v in quality.items()}


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
        source = store.newest_finished({"quality_key": key, "quality_trained": "true"},
                                       other_than=recorder.run_id)
        if source is not None:
            with tempfile.TemporaryDirectory() as tmp:
                load_weights(model, store.download(source.info.run_id, WEIGHTS, tmp))
            metrics = source.data.metrics  # a reduced-precision source keeps its fp32 figures as *_fp32
            quality = {k: metrics.get(f"{k}{FP32_SUFFIX}", metrics.get(k)) for k in QUALITY_METRICS
                       if k in metrics or f"{k}{FP32_SUFFIX}" in metrics}
            recorder.log_metrics(_fp32_names(quality, run))
            recorder.set_tags({"quality_source_run": source.info.run_id})
            log.info("quality reused from run %s (quality key %s)", source.info.run_id, key)
            return quality

    result = train(model, dataset, run.train, run.seed, on_metrics=recorder.log_metrics, observe=observe)
    quality = {k: v for k, v in result.quality.as_dict().items() if k in QUALITY_METRICS}
    recorder.log_metrics({**_fp32_names(quality, run), "eval_samples": result.quality.samples,
                          "train_steps": result.steps,
                          "train_seconds": result.seconds, "train_final_loss": result.final_train_loss})
    save_weights(model, recorder)
    recorder.set_tags({"quality_trained": "true", "quality_source_run": recorder.run_id})
    return quality


def into_precision(run: RunConfig, model: torch.nn.Module, dataset, fp32_quality: dict[str, float],
                   recorder: RunRecorder) -> dict[str, float]:
    """Put the (trained) model into the path's precision; where it was trained, evaluate it again in that
    precision on the same held-out samples and record the figures and their deltas. Returns the path's
    own quality (the fp32 one on an fp32 path)."""
    apply_precision(model, run.precision.name, getattr(run.representation, "storage", "fp32"))
    if not is_reduced(run) or not fp32_quality:
        if fp32_quality and run.precision.name != "fp32":
            recorder.set_tags({"quality_precision": "fp32", "train_precision": "fp32"})
        return fp32_quality
    own = evaluate_model(model, dataset.eval_set(run.train.eval_samples)).as_dict()
    quality = {**fp32_quality, **{k: own[k] for k in PRECISION_METRICS}}
    deltas = {f"{k}_delta": quality[k] - fp32_quality[k] for k in PRECISION_METRICS}
    recorder.log_metrics({**{k: quality[k] for k in PRECISION_METRICS}, **deltas})
    recorder.set_tags({"quality_precision": run.precision.name, "train_precision": "fp32"})
    log.info("in %s: accuracy %.4f (fp32 %.4f, delta %+.4f)", run.precision.name, quality["accuracy"],
             fp32_quality["accuracy"], deltas["accuracy_delta"])
    return quality
