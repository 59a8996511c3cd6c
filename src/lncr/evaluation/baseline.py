"""The control every result needs: a trivial model on the same tiles.

A deep model is worth its cost only if it beats this. Per slide × magnification, the kept
tiles (up to ``TILES_PER_SLIDE``, spread over the store) give colour statistics: the mean and
standard deviation of each RGB channel's optical density and a coarse 4 × 4 × 4 RGB
histogram (fractions of pixels). A logistic regression (standardised features, L2, C = 1) per
stain × magnification is fitted on the development **training** patients only, as the deep
models are; it gives every patient a probability, and the study's own ensemble rules and
statistics (thresholds fixed on the validation patients) turn them into the same tables as
``lncr predict`` and ``lncr evaluate``. When the study's final models come from k-fold
(``final/folds.csv``), the control follows the same protocol: each development patient is
predicted by a regression fitted on the other folds (repeat 0's folds), the external and
prospective patients by one fitted on every development patient.

Written to ``<output_dir>/evaluation/baseline/``: ``features.csv`` (one row per slide ×
magnification), ``predictions/{single_models,stain_ensembles,multi_stain}.csv`` and
``metrics.csv`` / ``threshold_metrics.csv`` in ``lncr evaluate``'s format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lncr.layout import Layout, write_table

TILES_PER_SLIDE = 64
BINS = 4  # per RGB channel: 64 colour bins


def colour_features(tiles: np.ndarray) -> np.ndarray:
    """The feature vector of a slide's tiles (N × H × W × 3 uint8): 3 OD means, 3 OD s.d.s,
    ``BINS``³ histogram fractions.

    >>> colour_features(np.full((2, 4, 4, 3), 255, np.uint8)).shape
    (70,)
    """
    rgb = tiles.reshape(-1, 3)
    od = -np.log10((rgb.astype(np.float64) + 1.0) / 256.0)
    cells = (rgb // (256 // BINS)).astype(np.int64)
    codes = (cells[:, 0] * BINS + cells[:, 1]) * BINS + cells[:, 2]
    histogram = np.bincount(codes, minlength=BINS ** 3) / len(codes)
    return np.concatenate([od.mean(axis=0), od.std(axis=0), histogram])


def slide_features(layout: Layout) -> pd.DataFrame:
    """One row per tiled slide × magnification: ``patient_id, stain, magnification, f0…``."""
    from lncr.data.bags import eval_indices
    from lncr.tiling.store import TileStore

    index = layout.read_tiles_index()
    rows = []
    for r in index[(index.status == "ok") & (index.kept > 0)].itertuples():
        with TileStore(r.store) as store:
            picks = eval_indices(len(store), TILES_PER_SLIDE)
            tiles = np.stack([store[int(i)] for i in picks])
        rows.append([r.patient_id, r.stain, r.magnification, *colour_features(tiles)])
    names = [f"f{i}" for i in range(6 + BINS ** 3)]
    return pd.DataFrame(rows, columns=["patient_id", "stain", "magnification", *names])


def fit_and_predict(features: pd.DataFrame, sides: pd.DataFrame, seed: int = 0,
                    folds: dict[str, int] | None = None) -> pd.DataFrame:
    """Per stain × magnification, a logistic regression fitted on the training patients; the
    probability of every patient (``patient_id, stain, magnification, probability``). With
    ``folds`` (development patient → fold), development patients out of fold and the others
    from a fit on every development patient."""
    label = dict(zip(sides.patient_id, sides.label))
    out = []
    for _, part in features.groupby(["stain", "magnification"], sort=True):
        if folds is None:
            split = dict(zip(sides.patient_id, sides.split))
            groups = [(part.patient_id.map(split) == "train", part.index == part.index)]
        else:
            fold = part.patient_id.map(folds)
            groups = [(fold.notna() & (fold != f), fold == f) for f in sorted(set(folds.values()))]
            groups.append((fold.notna(), fold.isna()))
        for train, target in groups:
            fitted = _fit(part[train], label, seed)
            if fitted is not None and target.any():
                out.append(part[target][["patient_id", "stain", "magnification"]].assign(
                    probability=fitted(part[target])))
    return pd.concat(out, ignore_index=True)


def _fit(train: pd.DataFrame, label: dict, seed: int):
    """A standardised L2 logistic regression of ``train``'s features on the labels, as a
    function of feature rows; None with one outcome (the model's own runs refuse it too)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names = [c for c in train.columns if c.startswith("f")]
    y = train.patient_id.map(label).astype(int)
    if y.nunique() < 2:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000,
                                                               random_state=seed))
    model.fit(train[names].to_numpy(), y.to_numpy())
    return lambda rows: model.predict_proba(rows[names].to_numpy())[:, 1]


def beside(metrics: pd.DataFrame, control: pd.DataFrame) -> pd.DataFrame:
    """Each ensemble's AUC (``metrics``, ``lncr evaluate``'s) beside the control's:
    ``cohort, model, auc_lncr, auc_baseline`` (NaN where the control has no such row)."""
    ours = metrics[metrics.kind != "single model"][["cohort", "model", "auc"]]
    return ours.merge(control[["cohort", "model", "auc"]], on=["cohort", "model"],
                      how="left", suffixes=("_lncr", "_baseline"))


def run_baseline(study) -> Path:
    """Features, predictions and the evaluation of the baseline; its folder."""
    from lncr.evaluation.cohort_metrics import evaluate_predictions, long_predictions
    from lncr.evaluation.final_predictions import ensemble_tables, patient_sides

    cfg = study.config
    layout = Layout(cfg.output_dir)
    folder = layout.evaluation_dir / "baseline"
    features = slide_features(layout)
    write_table(folder / "features.csv", features)
    folds = None
    if layout.read_final_folds() is not None:
        from lncr.study.folds import study_folds

        table = study_folds(study.patients, cfg)
        folds = dict(zip(table.patient_id, table.fold))
    sides = patient_sides(cfg.output_dir, study.patients, folds is not None)
    single = fit_and_predict(features, sides, cfg.split.seed, folds)
    tables = ensemble_tables(single, sides, cfg)
    for kind, table in zip(("single_models", "stain_ensembles", "multi_stain"), tables):
        write_table(folder / "predictions" / f"{kind}.csv", table)
    metrics, thresholds, _, _ = evaluate_predictions(long_predictions(folder / "predictions"),
                                                     cfg.evaluation)
    write_table(layout.baseline_metrics, metrics)
    write_table(folder / "threshold_metrics.csv", thresholds)
    return folder
