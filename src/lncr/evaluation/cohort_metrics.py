"""The statistics of one table of predictions, per cohort × model (what ``lncr evaluate`` and
the colour-statistics control both compute): AUC with DeLong and bootstrap intervals, the
threshold fixed on the validation cohort, threshold metrics, calibration and paired tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lncr.evaluation.classification import (
    brier_score,
    calibration_table,
    development_threshold,
    threshold_metrics,
)
from lncr.evaluation.stats import bootstrap_auc_ci, delong_auc, delong_test
from lncr.layout import read_table

COHORTS = ("validation", "external")

#: What each cohort's estimates are worth: the validation patients chose the architecture and
#: bag size in ``lncr sweep`` (and the threshold), so their results are optimistic; the
#: external cohort never reached a choice and is the unbiased estimate.
ESTIMATES = {
    "validation": ("optimistic", "these development patients selected the architecture, the "
                   "bag size and the threshold (selection bias)"),
    "external": ("unbiased", "independent cohort: no choice was made on it"),
}
MULTI = "multi-stain"


def nothing_to_evaluate(rows: pd.DataFrame) -> str:
    """Why no metric can be computed from the predictions ("" when some can): a scoring
    study (``lncr apply``) holds prospective patients only."""
    if rows.label.notna().any():
        return ""
    return (f"every one of the {rows.patient_id.nunique()} patients predicted is prospective "
            "(no outcome): there is nothing to evaluate; their predictions are in "
            "predictions/multi_stain.csv (and scores.csv for `lncr apply`)")


def site_tables(rows: pd.DataFrame, sites: dict[str, str], settings
                ) -> dict[str, pd.DataFrame] | None:
    """The external cohort's metrics, threshold metrics and paired tests per site (``site``
    column first), each site evaluated as the pooled cohort is: the threshold fixed on the
    validation patients. None when no external patient has a site."""
    external = rows[rows.cohort == "external"]
    names = sorted({sites[p] for p in external.patient_id if sites.get(p)})
    if not names:
        return None
    parts: dict[str, list] = {"metrics": [], "threshold_metrics": [], "comparisons": []}
    for site in names:
        keep = (rows.cohort != "external") | (rows.patient_id.map(sites) == site)
        metrics, thresholds, _, comparisons = evaluate_predictions(rows[keep], settings,
                                                                   ("external",))
        for name, table in (("metrics", metrics), ("threshold_metrics", thresholds),
                            ("comparisons", comparisons)):
            table.insert(0, "site", site)
            parts[name].append(table)
    return {name: pd.concat(tables, ignore_index=True) for name, tables in parts.items()}


def unlabelled_patients(rows: pd.DataFrame) -> int:
    """Patients in the predictions without an outcome (cohort ``prospective``): predicted,
    never part of a metric."""
    return int(rows[rows.label.isna()].patient_id.nunique())


def long_predictions(folder: Path) -> pd.DataFrame:
    """The three prediction tables as one: ``model, kind, stain, patient_id, cohort, split,
    label, probability``."""
    paths = {n: folder / f"{n}.csv" for n in ("single_models", "stain_ensembles", "multi_stain")}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise ValueError(f"missing prediction table(s) {missing}: run `lncr predict STUDY.yaml`")
    read = {n: read_table(p) for n, p in paths.items()}
    single = read["single_models"].assign(
        model=lambda t: t.stain + " " + t.magnification, kind="single model")
    stains = read["stain_ensembles"].assign(model=lambda t: t.stain, kind="stain ensemble")
    multi = read["multi_stain"].assign(model=MULTI, kind="multi-stain ensemble", stain="")
    cols = ["model", "kind", "stain", "patient_id", "cohort", "split", "label", "probability"]
    return pd.concat([single[cols], stains[cols], multi[cols]], ignore_index=True)


def cohort_rows(rows: pd.DataFrame, cohort: str) -> pd.DataFrame:
    return rows[rows.split == "val"] if cohort == "validation" else rows[rows.cohort == cohort]


def model_threshold(rows: pd.DataFrame, cohort: str, rule: str) -> tuple[float, str]:
    """(threshold, where it came from) for one model's rows: set on the validation patients
    (``youden``, ``0.5``), or on ``cohort``'s own predictions (``cohort_youden``, the authors'
    test script; optimistic)."""
    source_cohort = cohort if rule == "cohort_youden" else "validation"
    fit = cohort_rows(rows, source_cohort).dropna(subset=["probability"])
    if fit.label.nunique() != 2:
        return 0.5, f"0.5 ({source_cohort} patients lack one outcome)"
    if rule == "cohort_youden":
        return (development_threshold(fit.label, fit.probability, "youden"),
                f"youden on the {cohort} patients' own predictions (optimistic)")
    return (development_threshold(fit.label, fit.probability, rule),
            f"{rule} on validation patients")


def auc_note(labels: np.ndarray) -> str:
    """Why the AUC of these patients is undefined ("" when it is not)."""
    if len(labels) == 0:
        return "no patient with a prediction"
    if len(set(labels)) == 1:
        only = "CR" if labels[0] == 1 else "non-CR"
        return f"only {only} patients ({len(labels)}): the AUC needs both outcomes"
    return ""


def evaluate_predictions(rows: pd.DataFrame, settings, cohorts: tuple[str, ...] = COHORTS
                         ) -> tuple[pd.DataFrame, ...]:
    """Metrics, threshold metrics, calibration and comparisons from :func:`long_predictions`
    rows for ``cohorts``; ``settings`` is the study's ``evaluation`` section. Thresholds are
    fitted on the validation rows whichever cohorts are evaluated."""
    metrics, thresholds, calibration, comparisons = [], [], [], []
    order = list(dict.fromkeys(rows.model))
    for model in order:
        mine = rows[rows.model == model]
        for cohort in cohorts:
            part = cohort_rows(mine, cohort)
            have = part.dropna(subset=["probability"])
            y, p = have.label.to_numpy().astype(int), have.probability.to_numpy(float)
            threshold, source = model_threshold(mine, cohort, settings.threshold)
            estimate, why = ESTIMATES[cohort]
            if settings.threshold == "cohort_youden":
                estimate, why = "optimistic", why + "; threshold set on this cohort's labels"
            row = {"cohort": cohort, "estimate": estimate, "estimate_note": why,
                   "model": model, "kind": mine.kind.iloc[0],
                   "patients": len(part), "cr_patients": int(y.sum()),
                   "without_prediction": int(len(part) - len(have)), "auc": math.nan,
                   "auc_variance": math.nan, "delong_ci_low": math.nan,
                   "delong_ci_high": math.nan, "bootstrap_ci_low": math.nan,
                   "bootstrap_ci_high": math.nan, "brier": math.nan,
                   "threshold": threshold, "threshold_source": source,
                   "auc_note": auc_note(y)}
            if len(have):
                row["brier"] = brier_score(y, p)
                t = threshold_metrics(y, p, threshold, settings.confidence,
                                      settings.bootstrap_resamples, settings.seed)
                thresholds.append(t.assign(cohort=cohort, model=model, estimate=estimate))
                calibration.append(calibration_table(y, p, settings.calibration_bins)
                                   .assign(cohort=cohort, model=model))
            if len(set(y)) == 2:
                d = delong_auc(y, p, settings.confidence)
                low, high = bootstrap_auc_ci(y, p, settings.bootstrap_resamples,
                                             settings.confidence, settings.seed)
                row.update(auc=d.auc, auc_variance=d.variance, delong_ci_low=d.ci_low,
                           delong_ci_high=d.ci_high, bootstrap_ci_low=low,
                           bootstrap_ci_high=high)
            metrics.append(row)
    for cohort in cohorts:
        multi = cohort_rows(rows[rows.model == MULTI], cohort).set_index("patient_id")
        for model in [m for m in order if (rows[rows.model == m].kind == "stain ensemble").all()]:
            other = cohort_rows(rows[rows.model == model], cohort).set_index("patient_id")
            both = multi[["label", "probability"]].merge(
                other[["probability"]], left_index=True, right_index=True,
                suffixes=("", "_b")).dropna()
            row = {"cohort": cohort, "model_a": MULTI, "model_b": model, "patients": len(both),
                   "auc_a": math.nan, "auc_b": math.nan, "z": math.nan, "p": math.nan}
            if both.label.nunique() == 2:
                t = delong_test(both.label.to_numpy(int), both.probability.to_numpy(float),
                                both.probability_b.to_numpy(float))
                row.update(auc_a=t.auc_a, auc_b=t.auc_b, z=t.z, p=t.p)
            comparisons.append(row)

    def frame(parts: list, first: list[str]) -> pd.DataFrame:
        if not parts:
            return pd.DataFrame(columns=first)
        table = pd.concat(parts, ignore_index=True) if isinstance(parts[0], pd.DataFrame) \
            else pd.DataFrame(parts)
        return table[first + [c for c in table.columns if c not in first]]

    return (frame(metrics, ["cohort", "model"]), frame(thresholds, ["cohort", "model"]),
            frame(calibration, ["cohort", "model"]),
            frame(comparisons, ["cohort", "model_a", "model_b"]))
