"""Metrics at a threshold fixed on development data, with confidence intervals; the Brier
score and a calibration table.

A patient is predicted to reach complete response when its probability is ≥ the threshold
(the authors' convention). The threshold is chosen on development patients only
(:func:`development_threshold`) and then applied unchanged to the external cohort.
Proportions (accuracy, sensitivity, specificity, PPV, NPV) get Wilson score intervals; F1,
which is not a proportion, gets a stratified bootstrap interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lncr.evaluation.stats import wilson_interval
from lncr.training.metrics import youden_threshold


def development_threshold(labels, probabilities, rule: str = "youden") -> float:
    """The threshold a rule picks on development data: ``youden`` (max sensitivity +
    specificity − 1) or ``0.5``."""
    if rule == "youden":
        return float(youden_threshold(np.asarray(labels), np.asarray(probabilities)))
    if rule == "0.5":
        return 0.5
    raise ValueError(f"threshold rule {rule!r}: use youden or 0.5")


#: Why a proportion at the threshold is undefined (its denominator is zero).
UNDEFINED = {"accuracy": "no patients", "sensitivity": "no CR patients",
             "specificity": "no non-CR patients", "ppv": "no CR predictions",
             "npv": "no non-CR predictions", "f1": "no CR patient and no CR prediction"}


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = int(((pred == 1) & (y == 1)).sum())
    denominator = 2 * tp + int(((pred == 1) & (y == 0)).sum()) + int(((pred == 0) & (y == 1)).sum())
    return 2 * tp / denominator if denominator else float("nan")


def threshold_metrics(labels, probabilities, threshold: float, confidence: float = 0.95,
                      resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per metric: value, CI low/high, successes and total (for proportions)."""
    y = np.asarray(labels).astype(int)
    pred = (np.asarray(probabilities, dtype=float) >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    rows = []
    for name, k, n in (("accuracy", tp + tn, len(y)), ("sensitivity", tp, tp + fn),
                       ("specificity", tn, tn + fp), ("ppv", tp, tp + fp), ("npv", tn, tn + fn)):
        low, high = wilson_interval(k, n, confidence)
        rows.append({"metric": name, "value": k / n if n else float("nan"), "ci_low": low,
                     "ci_high": high, "successes": k, "total": n, "ci_method": "wilson",
                     "note": "" if n else UNDEFINED[name]})
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) and len(neg):  # stratified: each resample keeps the class counts
        tp_b = pred[pos[rng.integers(0, len(pos), (resamples, len(pos)))]].sum(axis=1)
        fn_b = len(pos) - tp_b
        fp_b = pred[neg[rng.integers(0, len(neg), (resamples, len(neg)))]].sum(axis=1)
    else:
        idx = rng.integers(0, len(y), (resamples, len(y)))
        tp_b = ((pred[idx] == 1) & (y[idx] == 1)).sum(axis=1)
        fn_b = ((pred[idx] == 0) & (y[idx] == 1)).sum(axis=1)
        fp_b = ((pred[idx] == 1) & (y[idx] == 0)).sum(axis=1)
    denominator = 2 * tp_b + fp_b + fn_b
    boot = np.where(denominator > 0, 2 * tp_b / np.maximum(denominator, 1), np.nan)
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(boot, [tail, 100 - tail]) if np.isfinite(boot).any() \
        else (float("nan"), float("nan"))
    rows.append({"metric": "f1", "value": _f1(y, pred), "ci_low": float(low),
                 "ci_high": float(high), "successes": tp, "total": 2 * tp + fp + fn,
                 "ci_method": "bootstrap", "note": "" if 2 * tp + fp + fn else UNDEFINED["f1"]})
    table = pd.DataFrame(rows)
    table.insert(0, "threshold", threshold)
    return table


def brier_score(labels, probabilities) -> float:
    """Mean squared difference between probability and outcome (0 is perfect)."""
    y = np.asarray(labels, dtype=float)
    return float(np.mean((np.asarray(probabilities, dtype=float) - y) ** 2))


def calibration_table(labels, probabilities, bins: int = 5) -> pd.DataFrame:
    """Equal-width probability bins: mean predicted probability, observed CR rate (with its
    Wilson interval) and count per non-empty bin."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(probabilities, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        low, high = wilson_interval(int(y[mask].sum()), int(mask.sum()))
        rows.append({"bin": b, "lower": b / bins, "upper": (b + 1) / bins,
                     "mean_predicted": float(p[mask].mean()),
                     "observed": float(y[mask].mean()), "ci_low": low, "ci_high": high,
                     "n": int(mask.sum())})
    return pd.DataFrame(rows)
