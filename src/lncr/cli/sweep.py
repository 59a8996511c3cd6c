"""``lncr sweep``: a thin command over :mod:`lncr.sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from lncr.cli.common import console, err_console, fmt, table, unit_line, warn_unusable
from lncr.study.validate import Study


def sweep(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    executor: Annotated[Optional[str], typer.Option(help="local or ray (default: sweep.executor).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster to join, e.g. ray://head:10001 or auto (default: start a local Ray).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Units at a time (default: sweep.workers; 0 = one per GPU or per unit_cpus cores).")] = None,
    final: Annotated[bool, typer.Option(help="Train the final models after selecting (--no-final: stop after selection.json).")] = True,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting, e.g. sweep.repeats=3.")] = None,
    device: Annotated[str, typer.Option(help="auto (GPUs if present), cpu or cuda.")] = "auto",
) -> None:
    """Train the architecture × bag-size grid with repeats, select, train the final models.

    Resumes: finished units are kept, interrupted ones continue, failed ones are retried.
    """
    from lncr.sweep.run import remedy, run_sweep

    report = run_sweep(Study.load(study_yaml, set_), executor, workers, address, device, final,
                       unit_line)
    for where, excluded in report.unusable.items():
        warn_unusable(excluded, where)
    sel = report.selection
    print_selection(sel)
    print_stability(sel)
    if report.final is not None:
        console.print(table("Final models (final/models.csv)",
                            ["stain", "magnification", "status", "val AUC", "why not trained"],
                            [(r.stain, r.magnification, r.status, fmt(r.val_auc),
                              r.error if r.status != "done" and isinstance(r.error, str)
                              else "") for r in report.final.itertuples()]))
    for where, d in sel.get("left_out", {}).items():
        err_console.print(f"[yellow]WARNING {escape(where)} was left out of the selection: "
                          f"{escape(d['reason'])} ({d['skipped']} of {d['units']} units "
                          "skipped)[/yellow]")
    failed = int((report.units.status == "failed").sum())
    if failed:
        err_console.print(f"[yellow]{failed} unit(s) failed; see {report.folder / 'failures'}"
                          " (re-run to retry them)[/yellow]")
    for line in report.failures:
        err_console.print(f"[red]ERROR {line}[/red]")
    missing = report.stains_without_model()
    for stain, why in missing.items():
        err_console.print(f"[red]ERROR {escape(stain)} has no usable model: {escape(why)}. "
                          f"{remedy(sel['validation']['method'])}, or drop {escape(stain)} "
                          "from sweep.stains[/red]")
    if report.failures:
        err_console.print(f"[red]The sweep is incomplete (selection.json: status "
                          f"'incomplete'); fix the cause in {report.folder / 'failures'} and "
                          "re-run to retry the failed units.[/red]")
    if report.failures or missing:
        raise typer.Exit(1)


def print_selection(sel: dict) -> None:
    """The chosen architecture per stain with its evidence, and the bag size."""
    decided = sel.get("decided_by", {})
    evidence = sel["evidence"]["architecture"]
    console.print(table("Selection (sweep/selection.json)", ["stain", "architecture",
                                                             "mean val AUC", "scores",
                                                             "decided by"],
                        [(s, a, fmt(evidence[s][0]["mean_val_auc"]) if s in evidence else "—",
                          str(evidence[s][0]["units"]) if s in evidence else "0",
                          decided.get("architecture", {}).get(s, ""))
                         for s, a in sel["architectures"].items()]))
    es = sel["early_stopping"]
    console.print(f"Bag size {sel['bag_size']} ({decided.get('bag_size', '')}); validation "
                  f"{sel['validation']['method']}; units {sel['units']}; epochs trained "
                  f"{es['epochs_trained']} of {es['epochs_full_grid']} "
                  f"({100 * es['compute_saved']:.0f}% saved)")


def print_stability(sel: dict, top: int = 3) -> None:
    """Per stain, the ``top`` configurations by mean criterion: spread and wins."""
    rows = sorted(sel.get("stability", []), key=lambda r: (r["stain"], -r["mean"]))
    shown, count = [], {}
    for r in rows:
        count[r["stain"]] = count.get(r["stain"], 0) + 1
        if count[r["stain"]] <= top:
            shown.append((r["stain"], r["architecture"], str(r["bag_size"]), fmt(r["mean"]),
                          fmt(r["sd"]), f"{fmt(r['min'], 2)}–{fmt(r['max'], 2)}",
                          str(r["scores"]), f"{r['wins']} of {r['repeats']}"))
    if shown:
        console.print(table("Selection stability: the criterion per configuration over "
                            "magnifications and repeats (sweep/selection.json)",
                            ["stain", "architecture", "bag", "mean", "s.d.", "range", "scores",
                             "chosen in repeats"], shown))
