"""Evaluation metrics (mAP, AUC, d-prime, accuracy) in numpy, and metric-logging helpers.

The classification metrics follow the official ``calculate_stats`` (OFFICIAL_CAVMAE.md §5.4):
mAP is the mean over classes of the per-class average precision (sklearn's definition: the
step-wise sum of precision times recall increments over distinct score thresholds), mAUC the
mean per-class ROC AUC, d-prime ``sqrt(2) * Phi^-1(mAUC)``, and accuracy the top-1 agreement of
the argmax of outputs and targets. The implementation is numpy only (no sklearn or scipy).

Unlike the official code (which puts a -1 placeholder into the AUC of a class without
positives), classes whose AP or AUC is undefined (no positives, or no negatives for AUC) are
left out of the means and counted in ``num_classes_scored``: small validation sets often lack
some classes.

Logging helpers: :class:`SmoothedValue` (window and global averages, as in MAE's ``misc.py``)
and :class:`JsonlWriter` (one JSON object per line, flushed after every record).
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "average_precision",
    "roc_auc",
    "mean_average_precision",
    "d_prime",
    "accuracy",
    "ClassificationStats",
    "classification_stats",
    "SmoothedValue",
    "JsonlWriter",
    "json_safe",
]


def _binary_curve(target: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true/false positive counts at each distinct threshold, highest first."""
    order = np.argsort(-score, kind="mergesort")
    score = score[order]
    target = target[order]
    # Indices where the score changes: ties form one threshold (sklearn semantics).
    distinct = np.where(np.diff(score))[0]
    ends = np.r_[distinct, target.size - 1]
    tps = np.cumsum(target)[ends]
    fps = (ends + 1) - tps
    return tps, fps


def average_precision(target: np.ndarray, score: np.ndarray) -> float:
    """Average precision of one binary problem (sklearn ``average_precision_score``).

    Args:
        target: (N,) 0/1 (or boolean) ground truth; values > 0.5 count as positives.
        score: (N,) scores, higher = more likely positive (logits or probabilities).

    Returns:
        ``sum_k (R_k - R_{k-1}) * P_k`` over distinct thresholds, or ``nan`` when there are no
        positives.
    """
    t = (np.asarray(target, dtype=np.float64).ravel() > 0.5).astype(np.float64)
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos = t.sum()
    if n_pos == 0:
        return float("nan")
    tps, fps = _binary_curve(t, s)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    recall_prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - recall_prev) * precision))


def roc_auc(target: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids over distinct thresholds, ties count one half).

    Returns:
        The AUC, or ``nan`` when the target has only positives or only negatives.
    """
    t = (np.asarray(target, dtype=np.float64).ravel() > 0.5).astype(np.float64)
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos = t.sum()
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    tps, fps = _binary_curve(t, s)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def mean_average_precision(target: np.ndarray, output: np.ndarray) -> float:
    """Mean over classes of :func:`average_precision`, skipping classes without positives.

    Args:
        target: (N, C) 0/1 labels.
        output: (N, C) scores.

    Returns:
        The mAP, or ``nan`` if no class has a positive.
    """
    aps = [average_precision(target[:, k], output[:, k]) for k in range(target.shape[1])]
    valid = [a for a in aps if not math.isnan(a)]
    return float(np.mean(valid)) if valid else float("nan")


def d_prime(auc: float) -> float:
    """Sensitivity index ``sqrt(2) * Phi^-1(auc)`` (official ``d_prime``); nan outside (0, 1)."""
    if not 0.0 < auc < 1.0:
        return float("nan")
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def accuracy(target: np.ndarray, output: np.ndarray) -> float:
    """Top-1 accuracy: ``mean(argmax(output) == argmax(target))`` over (N, C) arrays."""
    if target.shape[0] == 0:
        return float("nan")
    return float(np.mean(np.argmax(output, axis=1) == np.argmax(target, axis=1)))


@dataclass(frozen=True)
class ClassificationStats:
    """Summary of one evaluation pass.

    Attributes:
        mAP: mean average precision over classes with positives.
        mAUC: mean ROC AUC over classes with both positives and negatives.
        d_prime: ``sqrt(2) * Phi^-1(mAUC)``.
        acc: top-1 accuracy (argmax of output vs argmax of target).
        num_samples: number of rows scored.
        num_classes_scored: classes that entered the mAP mean.
    """

    mAP: float
    mAUC: float
    d_prime: float
    acc: float
    num_samples: int
    num_classes_scored: int

    def to_dict(self) -> dict[str, float]:
        """Plain dict (JSON-serialisable)."""
        return {
            "mAP": self.mAP,
            "mAUC": self.mAUC,
            "d_prime": self.d_prime,
            "acc": self.acc,
            "num_samples": self.num_samples,
            "num_classes_scored": self.num_classes_scored,
        }


def classification_stats(target: np.ndarray, output: np.ndarray) -> ClassificationStats:
    """All classification metrics of (N, C) targets and outputs (logits or probabilities).

    Soft targets (label smoothing, mixup) are binarised at 0.5 for AP/AUC, as the official
    evaluation always sees 0/1 evaluation labels.
    """
    target = np.asarray(target, dtype=np.float64)
    output = np.asarray(output, dtype=np.float64)
    if target.shape != output.shape or target.ndim != 2:
        raise ValueError(
            f"target and output must both be (N, C); got {target.shape} and {output.shape}"
        )
    aps = [average_precision(target[:, k], output[:, k]) for k in range(target.shape[1])]
    aucs = [roc_auc(target[:, k], output[:, k]) for k in range(target.shape[1])]
    valid_ap = [a for a in aps if not math.isnan(a)]
    valid_auc = [a for a in aucs if not math.isnan(a)]
    m_ap = float(np.mean(valid_ap)) if valid_ap else float("nan")
    m_auc = float(np.mean(valid_auc)) if valid_auc else float("nan")
    return ClassificationStats(
        mAP=m_ap,
        mAUC=m_auc,
        d_prime=d_prime(m_auc),
        acc=accuracy(target, output),
        num_samples=int(target.shape[0]),
        num_classes_scored=len(valid_ap),
    )


class SmoothedValue:
    """Track a series of values: the average over a recent window and over everything."""

    def __init__(self, window: int = 20) -> None:
        self._window: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        """Add ``value`` with weight ``n`` (e.g. the number of samples it averages)."""
        self._window.append(value)
        self.total += value * n
        self.count += n

    @property
    def avg(self) -> float:
        """Window average."""
        return float(np.mean(self._window)) if self._window else float("nan")

    @property
    def global_avg(self) -> float:
        """Average over every update, weighted by ``n``."""
        return self.total / self.count if self.count else float("nan")


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by None so that every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class JsonlWriter:
    """Append JSON objects, one per line, to a file (flushed and fsynced per record).

    Non-finite floats are written as ``null``. Each record is written with a single
    ``write`` call so that a reader sees at most one partial line, the last one.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        self._f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        """Close the file."""
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
