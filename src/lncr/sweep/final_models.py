"""The final models of a sweep: which units they are, and their rows in
``final/models.csv`` and ``final/folds.csv``.

One final model per swept stain with a selection × every magnification: the selected
configuration on the study's split, or with k-fold on every development patient (split tag
``dev``) plus the configuration's fold models of repeat 0, whose out-of-fold predictions
validate it — or, with ``sweep.final_ensemble: folds``, the mean of those fold models instead
of a refitted model.
"""

from __future__ import annotations

import math

import pandas as pd

from lncr.study.config import StudyConfig, sweep_stains
from lncr.sweep.criterion import pooled_at
from lncr.sweep.grid import ALL_DEVELOPMENT, Unit


def fold_table(results: dict[str, dict]) -> pd.DataFrame | None:
    """With k-fold, the final configurations' fold models (``final/folds.csv``) from the
    final units' result rows; None without k-fold."""
    rows = [{**final_row(Unit.from_row(r), r), "fold": Unit.from_row(r).fold}
            for r in results.values() if Unit.from_row(r).fold is not None]
    return pd.DataFrame(rows) if rows else None


def final_row(u: Unit, result: dict) -> dict:
    """A final model's row of ``final/models.csv`` (or ``folds.csv``)."""
    return {"stain": u.stain, "magnification": u.magnification,
            "architecture": u.architecture, "bag_size": u.bag_size, "seed": u.seed,
            "status": result["status"], "val_auc": result.get("val_auc", math.nan),
            "folder": result.get("folder", ""), "error": result.get("error", "")}


def ensemble_rows(folds: pd.DataFrame) -> list[dict]:
    """``sweep.final_ensemble: folds``: one row per stain × magnification for the mean of its
    fold models (``folder`` empty: the members are in ``final/folds.csv``); ``done`` when
    every fold that was not skipped finished, and at least one did."""
    rows = []
    for (stain, mag), part in folds.groupby(["stain", "magnification"], sort=False):
        active = part[part.status != "skipped"]
        done = not active.empty and (active.status == "done").all()
        errors = [e for e in part.error if isinstance(e, str) and e]
        status = "done" if done else ("skipped" if active.empty else
                                      active[active.status != "done"].status.iloc[0])
        rows.append({**part.iloc[0][["stain", "magnification", "architecture", "bag_size",
                                     "seed"]].to_dict(),
                     "status": status, "val_auc": math.nan, "folder": "",
                     "error": "" if done else (errors[0] if errors else ""),
                     "ensemble": f"mean of {int((part.status == 'done').sum())} fold models"})
    return rows


def unselected_rows(cfg: StudyConfig, selection: dict) -> list[dict]:
    """A ``skipped`` row per magnification of each swept stain without an architecture."""
    return [{"stain": stain, "magnification": mag, "architecture": "", "bag_size": math.nan,
             "seed": cfg.training.seed, "status": "skipped", "val_auc": math.nan,
             "folder": "", "error": why}
            for stain, why in selection.get("unselected_stains", {}).items()
            for mag in cfg.magnification_labels()]


def with_oof_auc(models: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """The final models' ``val_auc`` as the AUC of their fold models' pooled out-of-fold
    predictions (a model trained on every development patient has no validation of its
    own)."""
    out = models.copy()
    for i, m in out.iterrows():
        mine = folds[(folds.stain == m.stain) & (folds.magnification == m.magnification)
                     & (folds.status == "done")]
        out.loc[i, "val_auc"] = pooled_at(list(mine.folder))[0] if len(mine) else math.nan
    return out


def configurations(cfg: StudyConfig, selection: dict) -> list[tuple[str, str, str, int]]:
    """(stain, magnification, architecture, bag size) of every final model: each swept stain
    with an architecture × every magnification of the study."""
    return [(stain, mag, selection["architectures"][stain], selection["bag_size"])
            for stain in sweep_stains(cfg) if stain in selection["architectures"]
            for mag in cfg.magnification_labels()]


def final_units(cfg: StudyConfig, selection: dict) -> list[Unit]:
    """The final models: on the study's split, or with k-fold on every development patient
    (none with ``sweep.final_ensemble: folds``: the fold models are the final model)."""
    if cfg.sweep.validation == "kfold" and cfg.sweep.final_ensemble == "folds":
        return []
    tag = ALL_DEVELOPMENT if cfg.sweep.validation == "kfold" else ""
    return [Unit.of(stain, mag, arch, bag, 0, cfg.training.seed, tag)
            for stain, mag, arch, bag in configurations(cfg, selection)]


def fold_units(cfg: StudyConfig, selection: dict) -> list[Unit]:
    """With k-fold, every final model's configuration once per fold of repeat 0 (its
    development patients' out-of-fold predictions); else none."""
    if cfg.sweep.validation != "kfold":
        return []
    return [Unit.of(stain, mag, arch, bag, 0, cfg.training.seed, f"fold{f}")
            for stain, mag, arch, bag in configurations(cfg, selection)
            for f in range(cfg.sweep.folds)]
