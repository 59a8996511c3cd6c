"""How well clusters match known classes: Hungarian-matched accuracy, NMI, ARI.

Accuracy matches clusters to classes one-to-one so that the matched pairs cover the most
samples (the assignment problem, solved exactly by SciPy's ``linear_sum_assignment``); when
there are more clusters than classes, unmatched clusters count as errors. NMI and ARI are
scikit-learn's.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def contingency(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Counts (clusters × classes) with the sorted cluster and class labels."""
    classes, t = np.unique(np.asarray(y_true), return_inverse=True)
    clusters, p = np.unique(np.asarray(y_pred), return_inverse=True)
    table = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return table, clusters, classes


def hungarian_match(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """The one-to-one cluster → class mapping that agrees with the most samples."""
    table, clusters, classes = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {_plain(clusters[r]): _plain(classes[c]) for r, c in zip(rows, cols)}


def _plain(value):
    """A NumPy scalar as the Python value it holds (object arrays hold Python values)."""
    return value.item() if isinstance(value, np.generic) else value


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of samples whose cluster is matched to their class (Hungarian matching)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} cluster assignments")
    if len(y_true) == 0:
        raise ValueError("no samples to score")
    mapping = hungarian_match(y_true, y_pred)
    hits = sum(mapping.get(p, object()) == t for p, t in zip(y_pred.tolist(), y_true.tolist()))
    return hits / len(y_true)


def clustering_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy (Hungarian), normalised mutual information and adjusted Rand index."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"accuracy": cluster_accuracy(y_true, y_pred),
            "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
            "ari": float(adjusted_rand_score(y_true, y_pred))}
