"""``lncr evaluate``: the statistics of every final model and ensemble, per cohort.

Cohorts: ``validation`` (the development patients held out of the final models' training)
and ``external``. Models: each single model (``HE 10x``), each single-stain ensemble (``HE``)
and the multi-stain ensemble (``multi-stain``).

For each model the classification threshold is fixed on the **validation** patients
(``evaluation.threshold``: Youden by default) and applied unchanged to the external cohort; no
external information reaches it. (Metrics at that threshold on the validation patients are
therefore in-sample for the threshold, and optimistic; the external ones are the test.)

Written to ``<output_dir>/evaluation/``:

- ``metrics.csv`` — per cohort × model: patients, CR patients, patients without a prediction,
  AUC, DeLong variance and CI, bootstrap CI, Brier score, threshold;
- ``threshold_metrics.csv`` — per cohort × model × metric (accuracy, sensitivity,
  specificity, PPV, NPV with Wilson CIs; F1 with a bootstrap CI);
- ``calibration.csv`` — per cohort × model × probability bin;
- ``comparisons.csv`` — DeLong's paired test of the multi-stain ensemble against each
  single-stain ensemble, per cohort, on the patients both have;
- ``evaluation.json`` — all of the above with the settings and package versions;
- ``roc-<cohort>.png|svg`` and ``calibration-<cohort>.png|svg``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lncr.evaluation.cohort_metrics import (
    COHORTS,
    ESTIMATES,
    cohort_rows,
    evaluate_predictions,
    long_predictions,
    nothing_to_evaluate,
    site_tables,
    unlabelled_patients,
)
from lncr.fileio import atomic_write_json
from lncr.layout import Layout, read_table, write_table
from lncr.locks import locks_output
from lncr.study.validate import Study


@dataclass
class Evaluation:
    folder: Path
    metrics: pd.DataFrame
    thresholds: pd.DataFrame
    calibration: pd.DataFrame
    comparisons: pd.DataFrame
    figures: list[Path]
    baseline: pd.DataFrame | None = None  # the colour-statistics control's metrics
    left_out: int = 0  # patients without an outcome (cohort prospective): never evaluated
    sites: dict[str, pd.DataFrame] | None = None  # per external site: metrics, thresholds, …
    nothing: str = ""  # why nothing was evaluated (every patient prospective), else ""


@locks_output
def evaluate_study(study: Study, figures: bool = True, baseline: bool = False,
                   progress: Callable[[str], None] | None = None) -> Evaluation:
    """Evaluate the predictions of ``lncr predict STUDY.yaml`` and write every output; with
    ``baseline``, also the colour-statistics control (:mod:`lncr.evaluation.baseline`).
    ``progress(step)`` as each step begins."""
    from lncr.provenance import package_versions

    say = progress or (lambda step: None)
    cfg = study.config
    rows = long_predictions(cfg.output_dir / "predictions")
    left_out = unlabelled_patients(rows)
    nothing = nothing_to_evaluate(rows)
    if nothing:
        rows = rows.iloc[:0]  # the tables below are written empty: no stale metric survives
        figures = baseline = False
    say(f"metrics of {rows.model.nunique()} models and ensembles "
        f"({cfg.evaluation.bootstrap_resamples} bootstrap resamples each)")
    metrics, thresholds, calibration, comparisons = evaluate_predictions(rows, cfg.evaluation)
    folder = cfg.output_dir / "evaluation"
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in (("metrics", metrics), ("threshold_metrics", thresholds),
                        ("calibration", calibration), ("comparisons", comparisons)):
        write_table(Layout(cfg.output_dir).evaluation_table(name), table)
    site_of = dict(zip(study.patients.patient_id, study.patients.site))
    if any(site_of.values()):
        say("metrics per external site")
    sites = site_tables(rows, site_of, cfg.evaluation)
    for name, table in (sites or {}).items():
        write_table(Layout(cfg.output_dir).site_table(name), table)

    def records(table: pd.DataFrame) -> list[dict]:
        return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                 for k, v in r.items()} for r in table.to_dict("records")]

    atomic_write_json(Layout(cfg.output_dir).evaluation_record, {
        "metrics": records(metrics), "threshold_metrics": records(thresholds),
        "calibration": records(calibration), "comparisons": records(comparisons),
        "estimates": {c: {"estimate": e, "why": w} for c, (e, w) in ESTIMATES.items()},
        "sites": {name: records(table) for name, table in (sites or {}).items()},
        "left_out": {"patients": left_out, "why": "no outcome (cohort prospective): scored "
                     "by `lncr predict`, never evaluated"},
        "nothing_to_evaluate": nothing or None,
        "settings": cfg.evaluation.model_dump(mode="json"),
        "ensemble": cfg.ensemble.model_dump(mode="json"),
        **study.source, "versions": package_versions("numpy", "pandas", "scipy", "matplotlib")})
    paths: list[Path] = []
    if figures:
        from lncr.evaluation.plots import calibration_figure, roc_figure

        say("ROC and calibration figures")
        for cohort in COHORTS:
            ensembles = rows[(rows.kind != "single model")]
            paths += roc_figure(cohort_rows(ensembles, cohort), metrics[metrics.cohort == cohort],
                                folder / f"roc-{cohort}", f"ROC, {cohort} cohort")
            paths += calibration_figure(cohort_rows(ensembles, cohort), cfg.evaluation.calibration_bins,
                                        folder / f"calibration-{cohort}",
                                        f"Calibration, {cohort} cohort")
    control = None
    if baseline:
        from lncr.evaluation.baseline import run_baseline

        say("colour-statistics control")
        control = read_table(run_baseline(study) / "metrics.csv")
    return Evaluation(folder, metrics, thresholds, calibration, comparisons, paths, control,
                      left_out, sites, nothing)
