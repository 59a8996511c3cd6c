"""The patient-level train/validation split of the development cohort.

A split is over patients, never slides, so a patient's slides can never straddle training and
validation. When ``patients.csv`` gives no ``split`` column, development patients are split by
label (stratified) with a seed: patient identifiers are sorted, then shuffled per label with
``numpy.random.default_rng(seed)``, and ``round(n × val_fraction)`` of each label (at least one
when the label has two or more patients) go to validation. External patients never enter the
split.

The split is written to ``<output_dir>/study/split.csv`` with ``split.json`` beside it (seed,
fraction, source, versions). Later stages and re-runs read it; if the patients or settings
change so that the split would differ, :class:`SplitMismatchError` says so instead of silently
moving patients between training and validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lncr import __version__
from lncr.errors import BadInput
from lncr.fileio import atomic_write_json, atomic_write_text

SPLIT_COLUMNS = ["patient_id", "label", "split"]


class SplitMismatchError(BadInput):
    """The split on disk was made from other patients or settings."""


def stratified_split(patients: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """Seeded, label-stratified, patient-level split of the development patients.

    ``patients`` needs ``patient_id``, ``cohort`` and ``label``; returns ``patient_id``,
    ``label``, ``split`` sorted by patient.
    """
    dev = patients[patients.cohort == "development"][["patient_id", "label"]].copy()
    dev = dev.sort_values("patient_id", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    split = pd.Series("train", index=dev.index, dtype=object)
    for label in sorted(dev.label.dropna().unique()):
        idx = dev.index[dev.label == label].to_numpy()
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        split[idx[:n_val]] = "val"
    dev["split"] = split
    dev["label"] = dev["label"].astype(int)
    return dev[SPLIT_COLUMNS]


def resolve_split(patients: pd.DataFrame, val_fraction: float, seed: int
                  ) -> tuple[pd.DataFrame, str]:
    """The split to use: the ``split`` column when given, else the seeded stratified split.
    Returns the split table and its source (``"patients.csv"`` or ``"seeded"``)."""
    dev = patients[patients.cohort == "development"]
    if len(dev) and (dev.split != "").all():
        table = dev[["patient_id", "label", "split"]].sort_values("patient_id", kind="stable")
        table = table.reset_index(drop=True)
        table["label"] = table["label"].astype(int)
        return table, "patients.csv"
    return stratified_split(patients, val_fraction, seed), "seeded"


def write_split(folder: Path, table: pd.DataFrame, source: str, val_fraction: float,
                seed: int) -> Path:
    """Persist the split (atomically). If one exists, it must match, else raise
    :class:`SplitMismatchError`. Returns the CSV path."""
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "split.csv"
    meta = {"source": source, "seed": seed if source == "seeded" else None,
            "val_fraction": val_fraction if source == "seeded" else None,
            "patients": int(len(table)),
            "val_patients": int((table.split == "val").sum()),
            "lncr_version": __version__}
    if csv.exists():
        from lncr.layout import read_table

        old = read_table(csv)
        same = (list(old.columns) == SPLIT_COLUMNS and len(old) == len(table)
                and (old.patient_id.values == table.patient_id.values).all()
                and (old.split.values == table.split.values).all()
                and (old.label.values == table.label.values).all())
        if not same:
            raise SplitMismatchError(
                f"{csv} holds a split made from other patients, labels or split settings. "
                "Models trained on it would no longer match. Delete the file (and any trained "
                "runs) to make a new split, or restore the previous patients.csv / split seed.")
        return csv
    atomic_write_json(folder / "split.json", meta)
    # The CSV last: its presence marks a complete split.
    atomic_write_text(csv, table.to_csv(index=False))
    return csv
