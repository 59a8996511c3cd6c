"""Patient-level k-fold partitions of the development cohort (``sweep.validation: kfold``).

Every development patient is in exactly one fold; external and prospective patients are in
none. Folds are stratified by outcome: within each label, patients are sorted by identifier,
shuffled with ``numpy.random.default_rng(seed)`` and dealt round-robin to the folds, the deal
continuing from one label to the next so that fold sizes differ by at most one. With
``by_site``, whole development sites are dealt instead (the largest site first, each to the
fold with the fewest patients so far, ties in the seeded order), so that no site straddles
training and validation — the multi-centre variant of the protocol.

One partition serves every stain and magnification: a patient is validated by the same fold
in every stain, so the out-of-fold predictions of the stains can be ensembled like the
external cohort's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lncr.errors import BadInput

FOLD_COLUMNS = ["patient_id", "label", "site", "fold"]


def development(patients: pd.DataFrame) -> pd.DataFrame:
    """The development patients (``patient_id, label, site``), sorted by identifier."""
    dev = patients[patients.cohort == "development"].copy()
    if "site" not in dev.columns:
        dev["site"] = ""
    dev = dev[["patient_id", "label", "site"]].sort_values("patient_id", kind="stable")
    dev["label"] = dev["label"].astype(int)
    return dev.reset_index(drop=True)


def stratified_folds(patients: pd.DataFrame, folds: int, seed: int,
                     by_site: bool = False) -> pd.DataFrame:
    """Each development patient's fold (0 … ``folds`` − 1): ``patient_id, label, site,
    fold``, sorted by patient."""
    dev = development(patients)
    if len(dev) < folds:
        raise BadInput(f"sweep.folds={folds} folds need at least {folds} development patients; "
                       f"the study has {len(dev)}: lower sweep.folds")
    rng = np.random.default_rng(seed)
    fold = np.full(len(dev), -1)
    if by_site:
        fold = _site_folds(dev, folds, rng)
    else:
        turn = 0
        for label in sorted(dev.label.unique()):
            idx = dev.index[dev.label == label].to_numpy()
            idx = idx[rng.permutation(len(idx))]
            fold[idx] = (np.arange(len(idx)) + turn) % folds
            turn = (turn + len(idx)) % folds
    dev["fold"] = fold
    return dev[FOLD_COLUMNS]


def _site_folds(dev: pd.DataFrame, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Whole sites dealt to the folds, largest first, each to the emptiest fold."""
    unsited = dev[dev.site == ""].patient_id.tolist()
    if unsited:
        shown = ", ".join(unsited[:5]) + (" …" if len(unsited) > 5 else "")
        raise BadInput(f"sweep.fold_by_site keeps each development site in one fold, but "
                       f"{len(unsited)} development patient(s) have no site ({shown}): fill the "
                       "site column of patients.csv, or set sweep.fold_by_site=false")
    sites = sorted(dev.site.unique())
    if len(sites) < folds:
        raise BadInput(f"sweep.fold_by_site keeps each development site in one fold: "
                       f"{len(sites)} site(s) cannot fill sweep.folds={folds} folds; set "
                       f"sweep.folds={len(sites)} or lower")
    order = [sites[i] for i in rng.permutation(len(sites))]
    sizes = dev.site.value_counts()
    order.sort(key=lambda s: -int(sizes[s]))  # stable: ties keep the seeded order
    filled, fold_of = np.zeros(folds, int), {}
    for site in order:
        k = int(np.argmin(filled))
        fold_of[site] = k
        filled[k] += int(sizes[site])
    return dev.site.map(fold_of).to_numpy()


def study_folds(patients: pd.DataFrame, config, repeat: int = 0) -> pd.DataFrame:
    """Repeat ``repeat``'s folds of a study (``sweep.folds``, ``sweep.fold_by_site``, seed
    ``split.seed + repeat``)."""
    sw = config.sweep
    return stratified_folds(patients, sw.folds, config.split.seed + repeat, sw.fold_by_site)


def fold_sides(table: pd.DataFrame, fold: int) -> dict[str, str]:
    """Development patient → ``val`` (in ``fold``) or ``train`` (in another fold)."""
    return {p: ("val" if f == fold else "train") for p, f in zip(table.patient_id, table.fold)}
