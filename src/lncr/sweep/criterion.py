"""What the selection compares: one score per configuration and repeat.

- ``sweep.validation: split`` (the published protocol): a unit's score is the AUC of its last
  epoch on the validation patients of its split; one row per unit.
- ``sweep.validation: kfold``: the units of one configuration × magnification × repeat are its
  folds. Each fold unit's last-epoch validation predictions (``val_predictions.csv``: the
  patients of its fold, which it never trained on) are pooled, and the score is the AUC of the
  pooled out-of-fold predictions of every development patient with tiles (a patient's slides
  are averaged first); the loss is the mean of the pooled per-slide losses. A fold without a
  validation patient with tiles is skipped and the others are pooled; when one fold cannot
  train (too few patients of an outcome), every fold of the repeat is skipped, so that no
  score rests on part of the patients.

:func:`criterion_table` gives the same columns under both protocols, so the summary, the
selection rule and the stability report read one table (``sweep/criterion.csv``); with k-fold,
``sweep/oof_predictions.csv`` keeps every pooled prediction.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lncr.errors import WorkFailed
from lncr.training.metrics import auc

#: A configuration × magnification × repeat: one score of the criterion.
SCORE_KEYS = ["stain", "magnification", "architecture", "bag_size", "repeat"]
CRITERION_COLUMNS = [*SCORE_KEYS, "status", "epochs_trained", "val_auc", "val_loss",
                     "patients", "folds", "error"]
OOF_COLUMNS = [*SCORE_KEYS, "fold", "patient_id", "label", "probability", "loss"]


def val_predictions(folder: str | Path, epoch: int | None = None) -> pd.DataFrame:
    """A run's validation predictions at ``epoch`` (0-based; None: its last epoch), or an
    empty table."""
    from lncr.layout import read_table
    from lncr.training.trainer import VAL_COLUMNS, VAL_PREDICTIONS

    path = Path(folder) / VAL_PREDICTIONS
    if not path.exists():
        return pd.DataFrame(columns=VAL_COLUMNS)
    try:
        table = read_table(path)
        if not set(VAL_COLUMNS) <= set(table.columns):
            raise ValueError(f"columns {sorted(set(VAL_COLUMNS) - set(table.columns))} missing")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            ValueError) as exc:
        raise WorkFailed(f"{path} is damaged ({exc}): delete the run folder {Path(folder)} and "
                         "run `lncr sweep` again to retrain that unit") from exc
    if table.empty:
        return table
    return table[table.epoch == (table.epoch.max() if epoch is None else epoch)]


def pooled_score(predictions: pd.DataFrame) -> tuple[float, float, int]:
    """(AUC over patients, mean slide loss, patients) of pooled out-of-fold predictions."""
    if predictions.empty:
        return math.nan, math.nan, 0
    per_patient = predictions.groupby("patient_id").agg(label=("label", "first"),
                                                        probability=("probability", "mean"))
    return (auc(per_patient.label.to_numpy(int), per_patient.probability.to_numpy(float)),
            float(predictions.loss.mean()), len(per_patient))


def pooled_at(folders: list[str | Path], epoch: int | None = None) -> tuple[float, float]:
    """(AUC, loss) of the folds in ``folders`` pooled at ``epoch`` (successive halving)."""
    parts = [val_predictions(f, epoch) for f in folders]
    parts = [p for p in parts if not p.empty]
    score = pooled_score(pd.concat(parts, ignore_index=True)) if parts else (math.nan,) * 3
    return score[0], score[1]


def criterion_table(units: pd.DataFrame, validation: str
                    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The scores the selection compares (:data:`CRITERION_COLUMNS`) from ``units.csv``'s rows
    (``folder`` absolute), and with k-fold the pooled out-of-fold predictions."""
    if validation != "kfold":
        table = units.assign(patients=math.nan, folds=math.nan)
        return table[CRITERION_COLUMNS].reset_index(drop=True), None
    rows, pooled = [], []
    for key, part in units.groupby(SCORE_KEYS, sort=False):
        row = dict(zip(SCORE_KEYS, key))
        status, error = _group_status(part)
        done = part[part.status == "done"]
        row.update(status=status, epochs_trained=int(part.epochs_trained.sum()),
                   val_auc=math.nan, val_loss=math.nan, patients=0, folds=len(done),
                   error=error)
        if status == "done":
            oof = [val_predictions(u.folder).assign(fold=int(u.split[4:]))
                   for u in done.itertuples()]
            oof = pd.concat(oof, ignore_index=True).assign(**row)[OOF_COLUMNS]
            row["val_auc"], row["val_loss"], row["patients"] = pooled_score(oof)
            pooled.append(oof)
        rows.append(row)
    oof_table = (pd.concat(pooled, ignore_index=True) if pooled
                 else pd.DataFrame(columns=OOF_COLUMNS))
    return pd.DataFrame(rows, columns=CRITERION_COLUMNS), oof_table


def _group_status(folds: pd.DataFrame) -> tuple[str, str]:
    """A configuration-repeat's status from its folds' (skipped folds aside) and the first
    error or reason."""
    active = folds[folds.status != "skipped"]
    errors = [e for e in folds.error if isinstance(e, str) and e]
    first = errors[0] if errors else ""
    if active.empty:
        return "skipped", first
    for status in ("failed", "stopped", "pending", "paused"):
        if (active.status == status).any():
            return status, first
    return "done", ""


def left_out(units: pd.DataFrame, criterion: pd.DataFrame) -> dict[str, dict]:
    """Per stain × magnification of the grid that the selection could not use (no finished
    score with an AUC): why, and how many units were skipped or failed."""
    out = {}
    for (stain, mag), part in units.groupby(["stain", "magnification"], sort=False):
        scores = criterion[(criterion.stain == stain) & (criterion.magnification == mag)
                           & (criterion.status == "done")]
        if scores.val_auc.notna().any():
            continue
        reasons = [e for e in part[part.status == "skipped"].error if isinstance(e, str) and e]
        if reasons:
            why = pd.Series(reasons).value_counts().index[0]
        elif (part.status == "failed").all():
            why = "every unit failed (see sweep/failures/)"
        elif len(scores):
            why = "no validation AUC (the validation predictions hold one outcome)"
        else:
            why = "no unit finished"
        out[f"{stain} {mag}"] = {"stain": stain, "magnification": mag, "reason": why,
                                 "units": len(part),
                                 "skipped": int((part.status == "skipped").sum()),
                                 "failed": int((part.status == "failed").sum())}
    return out


def fold_aucs(oof: pd.DataFrame | None) -> pd.DataFrame:
    """Each fold's own AUC (NaN for a fold of one outcome) per configuration × repeat."""
    if oof is None or oof.empty:
        return pd.DataFrame(columns=[*SCORE_KEYS, "fold", "auc"])
    rows = [{**dict(zip([*SCORE_KEYS, "fold"], key)), "auc": pooled_score(part)[0]}
            for key, part in oof.groupby([*SCORE_KEYS, "fold"])]
    return pd.DataFrame(rows)


def stability(criterion: pd.DataFrame, choose, oof: pd.DataFrame | None = None) -> list[dict]:
    """Per stain × architecture × bag size: the criterion's mean, s.d., range and count over
    its finished scores (every magnification and repeat), the s.d. of the folds' own AUCs
    (k-fold), and in how many repeats the selection rule (``choose(scores) -> selection``),
    applied to that repeat's scores alone, would have chosen it."""
    folds = fold_aucs(oof)
    done = criterion[(criterion.status == "done") & criterion.val_auc.notna()]
    wins: dict[tuple, int] = {}
    repeats = sorted(done.repeat.unique())
    for r in repeats:
        picked = choose(done[done.repeat == r])
        for stain, arch in picked["architectures"].items():
            key = (stain, arch, int(picked["bag_size"]))
            wins[key] = wins.get(key, 0) + 1
    rows = []
    for (stain, arch, bag), part in done.groupby(["stain", "architecture", "bag_size"]):
        values = part.val_auc.to_numpy(float)
        rows.append({"stain": stain, "architecture": arch, "bag_size": int(bag),
                     "mean": float(values.mean()),
                     "sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                     "min": float(values.min()), "max": float(np.max(values)),
                     "scores": len(values), "wins": wins.get((stain, arch, int(bag)), 0),
                     "repeats": len(repeats), **_fold_spread(folds, stain, arch, bag)})
    return rows


def _fold_spread(folds: pd.DataFrame, stain: str, arch: str, bag: int) -> dict:
    mine = folds[(folds.stain == stain) & (folds.architecture == arch)
                 & (folds.bag_size == bag)].auc.dropna() if len(folds) else pd.Series([])
    return {"fold_mean": float(mine.mean()) if len(mine) else math.nan,
            "fold_sd": float(mine.std(ddof=1)) if len(mine) > 1 else math.nan,
            "folds_with_auc": len(mine)}
