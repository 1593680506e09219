"""Training for quality: BCE on a dataset's training stream, evaluated on its held-out set.

Runs with torch on the host CPU, whatever backend the latency ladder then uses: the trained weights are
placed on that backend afterwards. Tables train with sparse gradients (a dense gradient of a 2 GB table
per step is not a training step anyone would use); SGD at lr 0.1 is DLRM's and MP-Rec's setting.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, cast

import numpy as np
import torch
from torch import nn

from harness.core.errors import ConfigError
from harness.workload.metrics import Quality, evaluate

log = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, float], int], None]


def enable_sparse_gradients(model: nn.Module) -> int:
    """Switch every table module to sparse gradients; returns how many were switched."""
    switched = 0
    for module in model.modules():
        if hasattr(module, "sparse_grad"):
            cast(Any, module).sparse_grad = True  # a table module's own flag (duck-typed)
            switched += 1
        elif isinstance(module, nn.EmbeddingBag):
            module.sparse = True
            switched += 1
    return switched


def enable_fused_sgd(model: nn.Module, lr: float) -> int:
    """Tables that can apply SGD inside their backward do so (table/fused_sgd.py: the same update as a
    sparse gradient and SGD, 2-3x faster on multi-id bags); returns how many. Their weights then get no
    .grad and are left out of the optimizer."""
    tables = (cast(Any, m) for m in model.modules() if hasattr(m, "enable_fused_sgd"))
    return sum(1 for m in tables if m.enable_fused_sgd(lr))


def disable_fused_sgd(model: nn.Module) -> None:
    for module in model.modules():
        if getattr(module, "fused_sgd_lr", None) is not None:
            cast(Any, module).fused_sgd_lr = None


def make_optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    fused = {id(m.weight) for m in model.modules() if getattr(m, "fused_sgd_lr", None) is not None}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in fused]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)  # plain SGD handles sparse gradients
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    raise ConfigError("train.optimizer", f"unknown optimizer {name!r}")


@torch.no_grad()
def predict(model: nn.Module, dense: np.ndarray, ids: np.ndarray, batch: int = 4096) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = [model(torch.from_numpy(dense[i : i + batch]), torch.from_numpy(ids[i : i + batch])).numpy()
           for i in range(0, len(dense), batch)]
    model.train(was_training)
    return np.concatenate(out)


def evaluate_model(model: nn.Module, eval_set) -> Quality:
    return evaluate(predict(model, eval_set.dense, eval_set.ids), eval_set.labels)


@dataclass
class TrainingResult:
    quality: Quality
    steps: int
    seconds: float
    final_train_loss: float


def train(model: nn.Module, dataset, cfg, seed: int, on_metrics: MetricsCallback | None = None,
          observe: Callable[[object], None] | None = None) -> TrainingResult:
    """Train `model` for cfg.steps batches; evaluate every cfg.eval_every steps and at the end."""
    torch.manual_seed(seed)
    enable_sparse_gradients(model)
    if cfg.optimizer == "sgd":
        log.info("fused SGD in %d table module(s)", enable_fused_sgd(model, cfg.lr))
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    eval_set = dataset.eval_set(cfg.eval_samples)
    report = on_metrics or (lambda metrics, step: None)
    model.train()
    start = time.perf_counter()
    window: list[float] = []  # losses since the last report
    last_loss = float("nan")
    quality = None
    step = 0
    for step, batch in enumerate(dataset.train_batches(cfg.batch_size), start=1):
        if observe is not None:
            observe(batch)  # e.g. count ids for a cache of the hottest
        logits = model(torch.from_numpy(batch.dense), torch.from_numpy(batch.ids))
        loss = loss_fn(logits, torch.from_numpy(batch.labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        if step % cfg.log_every == 0:
            last_loss = float(np.mean(window))
            report({"train_loss": last_loss}, step)
            window = []
        if step % cfg.eval_every == 0 or step == cfg.steps:
            quality = evaluate_model(model, eval_set)
            report({f"eval_{k}": v for k, v in quality.as_dict().items() if k != "samples"}, step)
            log.info("step %d: accuracy %.4f auc %.4f log loss %.4f", step, quality.accuracy, quality.auc,
                     quality.log_loss)
        if step >= cfg.steps:
            break
    model.eval()
    disable_fused_sgd(model)
    if quality is None:
        quality = evaluate_model(model, eval_set)
    final_loss = float(np.mean(window)) if window else last_loss
    return TrainingResult(quality, step, time.perf_counter() - start, final_loss)
