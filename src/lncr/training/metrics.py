"""Slide-level metrics used while training: AUC and the Youden threshold.

Small and dependency-free on purpose (the evaluation stage brings confidence intervals).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties count half); NaN with one class only.

    >>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold maximising sensitivity + specificity − 1 (predict 1 when score ≥
    threshold), by the authors' rule (``ModelTrain.py`` ``get_cm_train``, ``ModelTest.py``
    ``get_cm``): among thresholds of equal J the highest, and 0 (everything positive) when no
    threshold has J > 0; 0.5 with one class only.

    >>> youden_threshold([0, 1, 0, 1], [0.2, 0.4, 0.6, 0.8])  # J = 0.5 at 0.8 and at 0.4
    0.8
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    if len(set(labels.tolist())) < 2:
        return 0.5
    thresholds = np.unique(scores)[::-1]  # highest first, as sklearn's roc_curve
    pred = scores[None, :] >= thresholds[:, None]
    j = pred[:, labels == 1].mean(axis=1) - pred[:, labels == 0].mean(axis=1)
    best = int(np.argmax(j))  # the first, i.e. highest, of equal maxima
    return float(thresholds[best]) if j[best] > 0 else 0.0


def accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    labels = np.asarray(labels)
    return float(((np.asarray(scores) >= threshold).astype(int) == labels).mean()) if len(labels) \
        else float("nan")
