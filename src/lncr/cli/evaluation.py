"""``lncr evaluate``: a thin command over :mod:`lncr.evaluation`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lncr.cli.common import console, fmt, step_line, table
from lncr.study.validate import Study


def evaluate(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting, e.g. evaluation.threshold=0.5.")] = None,
    figures: Annotated[bool, typer.Option(help="Write ROC and calibration figures.")] = True,
    baseline: Annotated[bool, typer.Option("--baseline", help="Also evaluate the control: colour statistics of the same tiles and a logistic regression (evaluation/baseline/).")] = False,
) -> None:
    """AUCs with DeLong and bootstrap CIs, metrics at the development threshold, calibration and
    paired tests, for the validation and the external cohort."""
    from lncr.evaluation.evaluate import evaluate_study

    result = evaluate_study(Study.load(study_yaml, set_), figures, baseline, step_line)
    if result.nothing:
        console.print(f"Nothing to evaluate: {result.nothing}")
        console.print(f"Written: {result.folder}")
        return
    m = result.metrics[result.metrics.kind != "single model"]
    console.print(table("Ensembles (evaluation/metrics.csv)",
                        ["cohort", "estimate", "model", "patients", "AUC", "95% CI (DeLong)",
                         "95% CI (bootstrap)", "Brier"],
                        [(r.cohort, r.estimate, r.model, str(r.patients),
                          fmt(r.auc, why=r.auc_note),
                          f"{fmt(r.delong_ci_low)}–{fmt(r.delong_ci_high)}",
                          f"{fmt(r.bootstrap_ci_low)}–{fmt(r.bootstrap_ci_high)}",
                          fmt(r.brier)) for r in m.itertuples()]))
    for r in m[m.model == "multi-stain"].itertuples():
        console.print(f"Multi-stain ensemble, {r.cohort} cohort ({r.patients} patients): AUC "
                      f"{fmt(r.auc, why=r.auc_note)} (95% CI {fmt(r.delong_ci_low)}–{fmt(r.delong_ci_high)}, "
                      f"DeLong) — {r.estimate} estimate: {r.estimate_note}")
    print_sites(result)
    print_baseline(result)
    if result.left_out:
        console.print(f"Left out: {result.left_out} patient(s) without an outcome (cohort "
                      "prospective): predicted, never evaluated")
    console.print(f"Written: {result.folder}")


def print_sites(result) -> None:
    """The ensembles' external AUCs per site, with the paired tests (evaluation/sites/)."""
    if not result.sites:
        return
    m = result.sites["metrics"]
    m = m[m.kind != "single model"]
    console.print(table("External cohort per site (evaluation/sites/metrics.csv; threshold "
                        "fixed on the validation patients)",
                        ["site", "model", "patients", "AUC", "95% CI (DeLong)", "Brier"],
                        [(r.site, r.model, str(r.patients), fmt(r.auc, why=r.auc_note),
                          f"{fmt(r.delong_ci_low)}–{fmt(r.delong_ci_high)}", fmt(r.brier))
                         for r in m.itertuples()]))


def print_baseline(result) -> None:
    """The ensembles' AUCs beside the colour-statistics control's, when it ran."""
    if result.baseline is not None:
        console.print(table("lncr against the colour-statistics baseline (AUC)",
                            ["cohort", "model", "lncr", "baseline"],
                            baseline_rows(result.metrics, result.baseline)))


def baseline_rows(metrics, baseline) -> list[tuple[str, ...]]:
    """The ensembles' AUCs beside the baseline's, per cohort."""
    from lncr.evaluation.baseline import beside

    return [(r.cohort, r.model, fmt(r.auc_lncr), fmt(r.auc_baseline))
            for r in beside(metrics, baseline).itertuples()]
