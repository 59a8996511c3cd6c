"""The published ensembles: per stain, the mean over magnifications; across stains, the max.

Input is a long table of single-model predictions, one row per patient × stain ×
magnification (``patient_id, stain, magnification, probability`` and optionally ``label``,
``cohort``). Missing inputs follow one documented rule — **an ensemble is taken over what
exists**, and says what that was:

- a single-stain ensemble averages the magnifications the patient has for that stain;
  ``magnifications_used`` lists them and ``complete`` says whether all expected ones were there;
- the multi-stain ensemble takes the maximum over the single-stain ensembles the patient has;
  ``stains_used`` and ``stains_missing`` list them.

A patient with no prediction for a stain has no row for that stain's ensemble; a patient with
no prediction at all keeps a multi-stain row with an empty ``stains_used`` and a missing
probability, so nobody disappears silently.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REQUIRED = ("patient_id", "stain", "magnification", "probability")
CARRIED = ("label", "cohort")  # per-patient columns carried into the ensembles when present


def _check(predictions: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack column(s) {missing}; expected {list(REQUIRED)}")
    dup = predictions.duplicated(["patient_id", "stain", "magnification"])
    if dup.any():
        row = predictions[dup].iloc[0]
        raise ValueError(f"two predictions for patient {row.patient_id}, {row.stain} "
                         f"{row.magnification}: keep one model per stain × magnification")


def _patient_columns(predictions: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in CARRIED if c in predictions.columns]
    return predictions.groupby("patient_id", sort=True)[cols].first() if cols else None


def _combine(values: pd.Series, how: str) -> float:
    if how not in ("mean", "max"):
        raise ValueError(f"ensemble rule {how!r}: use mean or max")
    return float(values.mean() if how == "mean" else values.max())


def stain_ensembles(predictions: pd.DataFrame, magnifications: tuple[str, ...] | None = None,
                    how: str = "mean") -> pd.DataFrame:
    """One row per patient × stain: the mean (``how``) probability over the magnifications
    present."""
    _check(predictions)
    expected = tuple(magnifications) if magnifications else tuple(
        sorted(predictions.magnification.unique(), key=lambda m: float(str(m).rstrip("x"))))
    rows = []
    for (pid, stain), part in predictions.groupby(["patient_id", "stain"], sort=True):
        present = [m for m in expected if m in set(part.magnification)]
        extra = sorted(set(part.magnification) - set(expected))
        if extra:
            raise ValueError(f"patient {pid}, {stain}: magnification(s) {extra} are not among "
                             f"the expected {list(expected)}")
        rows.append({"patient_id": pid, "stain": stain,
                     "probability": _combine(part.probability, how),
                     "magnifications_used": "+".join(present),
                     "complete": len(present) == len(expected)})
    table = pd.DataFrame(rows, columns=["patient_id", "stain", "probability",
                                        "magnifications_used", "complete"])
    info = _patient_columns(predictions)
    return table.join(info, on="patient_id") if info is not None else table


def multi_stain_ensemble(stain_table: pd.DataFrame, stains: tuple[str, ...],
                         patients: list[str] | None = None, how: str = "max") -> pd.DataFrame:
    """One row per patient: the maximum (``how``) over its single-stain ensembles.
    ``patients`` (e.g. every patient of the cohort) adds rows for patients without any
    prediction."""
    ids = sorted(set(stain_table.patient_id) | set(patients or []))
    by_patient = {pid: part for pid, part in stain_table.groupby("patient_id")}
    rows = []
    for pid in ids:
        part = by_patient.get(pid)
        used = [s for s in stains if part is not None and s in set(part.stain)]
        rows.append({"patient_id": pid,
                     "probability": _combine(part.probability, how) if used else np.nan,
                     "stains_used": "+".join(used),
                     "stains_missing": "+".join(s for s in stains if s not in used)})
    table = pd.DataFrame(rows, columns=["patient_id", "probability", "stains_used",
                                        "stains_missing"])
    cols = [c for c in CARRIED if c in stain_table.columns]
    if cols:
        table = table.join(stain_table.groupby("patient_id")[cols].first(), on="patient_id")
    return table
