"""``lncr sweep`` and ``lncr evaluate``: thin commands over :mod:`lncr.sweep` and
:mod:`lncr.evaluation`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from lncr.cli_common import console, err_console, table


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def sweep(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    executor: Annotated[Optional[str], typer.Option(help="local or ray (default: sweep.executor).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster to join, e.g. ray://head:10001 or auto (default: start a local Ray).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Units at a time (default: sweep.workers; 0 = one per GPU or per unit_cpus cores).")] = None,
    final: Annotated[bool, typer.Option(help="Train the final models after selecting (--no-final: stop after selection.json).")] = True,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting, e.g. sweep.repeats=3.")] = None,
    device: Annotated[str, typer.Option(help="auto (GPUs if present), cpu or cuda.")] = "auto",
) -> None:
    """Train the architecture × bag-size grid with repeats, select, train the final models.

    Resumes: finished units are kept, interrupted ones continue, failed ones are retried.
    """
    from lncr.sweep.run import run_sweep

    def progress(row: dict) -> None:
        what = (f"{row['stain']} {row['magnification']} {row['architecture']} "
                f"bag {row['bag_size']} repeat {row['repeat']}")
        if row["status"] == "failed":
            err_console.print(f"[red]failed[/red] {what}: {row['error'].splitlines()[0]}")
        else:
            console.print(f"{row['status']:>7} {what}: epochs {row['epochs_trained']}, "
                          f"validation AUC {_fmt(row['val_auc'], 2)} ({row['seconds']:.0f} s)")

    report = run_sweep(study_yaml, set_, executor, workers, address, device, final,
                       progress)
    sel = report.selection
    console.print(table("Selection (sweep/selection.json)", ["stain", "architecture",
                                                             "mean val AUC", "units"],
                        [(s, a, _fmt(sel["evidence"]["architecture"][s][0]["mean_val_auc"]),
                          str(sel["evidence"]["architecture"][s][0]["units"]))
                         for s, a in sel["architectures"].items()]))
    es = sel["early_stopping"]
    console.print(f"Bag size {sel['bag_size']}; units {sel['units']}; epochs trained "
                  f"{es['epochs_trained']} of {es['epochs_full_grid']} "
                  f"({100 * es['compute_saved']:.0f}% saved)")
    if report.final is not None:
        console.print(table("Final models (final/models.csv)",
                            ["stain", "magnification", "status", "val AUC"],
                            [(r.stain, r.magnification, r.status, _fmt(r.val_auc))
                             for r in report.final.itertuples()]))
    failed = int((report.units.status == "failed").sum())
    if failed:
        err_console.print(f"[yellow]{failed} unit(s) failed; see {report.folder / 'failures'}"
                          " (re-run to retry them)[/yellow]")
    for line in report.failures:
        err_console.print(f"[red]ERROR {line}[/red]")
    if report.failures:
        err_console.print(f"[red]The sweep is incomplete (selection.json: status "
                          f"'incomplete'); fix the cause in {report.folder / 'failures'} and "
                          "re-run to retry the failed units.[/red]")
        raise typer.Exit(1)


def evaluate(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting, e.g. evaluation.threshold=0.5.")] = None,
    figures: Annotated[bool, typer.Option(help="Write ROC and calibration figures.")] = True,
) -> None:
    """AUCs with DeLong and bootstrap CIs, metrics at the development threshold, calibration and
    paired tests, for the validation and the external cohort."""
    from lncr.evaluation.evaluate import evaluate_study

    result = evaluate_study(study_yaml, set_, figures)
    m = result.metrics[result.metrics.kind != "single model"]
    console.print(table("Ensembles (evaluation/metrics.csv)",
                        ["cohort", "estimate", "model", "patients", "AUC", "95% CI (DeLong)",
                         "95% CI (bootstrap)", "Brier"],
                        [(r.cohort, r.estimate, r.model, str(r.patients), _fmt(r.auc),
                          f"{_fmt(r.delong_ci_low)}–{_fmt(r.delong_ci_high)}",
                          f"{_fmt(r.bootstrap_ci_low)}–{_fmt(r.bootstrap_ci_high)}",
                          _fmt(r.brier)) for r in m.itertuples()]))
    for r in m[m.model == "multi-stain"].itertuples():
        console.print(f"Multi-stain ensemble, {r.cohort} cohort ({r.patients} patients): AUC "
                      f"{_fmt(r.auc)} (95% CI {_fmt(r.delong_ci_low)}–{_fmt(r.delong_ci_high)}, "
                      f"DeLong) — {r.estimate} estimate: {r.estimate_note}")
    console.print(f"Written: {result.folder}")
