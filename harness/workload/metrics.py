"""Quality metrics of a click model: accuracy (as MP-Rec and DLRM report it), AUC, log loss.

Pure numpy on logits and 0/1 labels, so tests and the analysis can use them without a model.

>>> import numpy as np
>>> q = evaluate(np.array([2.0, -1.0, 0.5, -3.0]), np.array([1.0, 0.0, 0.0, 0.0]))
>>> q.accuracy, q.auc, q.positive_rate
(0.75, 1.0, 0.25)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Quality:
    accuracy: float  # mean(round(sigmoid(logit)) == label)
    auc: float
    log_loss: float
    positive_rate: float  # of the evaluated labels: the constant predictor's accuracy is max(r, 1 - r)
    samples: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) statistic, ties given average ranks."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank within each run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    average = (starts + ends + 1) / 2.0  # 1-based ranks start+1 .. end
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy computed from logits (stable for large |logit|)."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))))


def evaluate(logits: np.ndarray, labels: np.ndarray) -> Quality:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    # round(sigmoid(x)) == 1 exactly when x > 0 (sigmoid(0) = 0.5 rounds to even, 0).
    predictions = (logits > 0).astype(np.float64)
    return Quality(
        accuracy=float(np.mean(predictions == labels)),
        auc=auc(logits, labels),
        log_loss=log_loss(logits, labels),
        positive_rate=float(labels.mean()),
        samples=int(len(labels)),
    )
