"""ROC and calibration figures (matplotlib, non-interactive), each as PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lncr.figures import pyplot
from lncr.fileio import atomic_save_figure


def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0) to
    (1, 1); ties move diagonally."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1 - y)[last]
    return (np.r_[0, fp / max(1, fp[-1])], np.r_[0, tp / max(1, tp[-1])])


def _save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    atomic_save_figure(fig, paths[0], dpi=150, bbox_inches="tight")
    atomic_save_figure(fig, paths[1], bbox_inches="tight")
    return paths


def roc_figure(rows: pd.DataFrame, metrics: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """One curve per model of ``rows`` (``model, label, probability``), the AUC with its
    DeLong CI in the legend. Models lacking one outcome are listed, not drawn."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    by_model = metrics.set_index("model")
    for model, part in rows.groupby("model", sort=False):
        part = part.dropna(subset=["probability"])
        if part.label.nunique() < 2:
            continue
        fpr, tpr = roc_points(part.label, part.probability)
        m = by_model.loc[model]
        lw = 2.2 if model == "multi-stain" else 1.2
        ax.plot(fpr, tpr, lw=lw, label=f"{model}: AUC {m.auc:.2f} "
                f"({m.delong_ci_low:.2f}–{m.delong_ci_high:.2f}), n={len(part)}")
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=title, xlim=(-0.01, 1.01),
           ylim=(-0.01, 1.01), aspect="equal")
    ax.legend(loc="lower right", fontsize=7, title="AUC (95% DeLong CI)", title_fontsize=7)
    paths = _save(fig, stem)
    plt.close(fig)
    return paths


def calibration_figure(rows: pd.DataFrame, bins: int, stem: Path, title: str) -> list[Path]:
    """Observed CR rate against mean predicted probability per equal-width bin, per model."""
    from lncr.evaluation.classification import calibration_table

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="perfect calibration")
    for model, part in rows.groupby("model", sort=False):
        part = part.dropna(subset=["probability"])
        if part.empty:
            continue
        t = calibration_table(part.label, part.probability, bins)
        ax.plot(t.mean_predicted, t.observed, marker="o", lw=2.2 if model == "multi-stain"
                else 1.0, label=model)
    ax.set(xlabel="mean predicted probability of CR", ylabel="observed CR rate", title=title,
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.legend(loc="upper left", fontsize=7)
    paths = _save(fig, stem)
    plt.close(fig)
    return paths
