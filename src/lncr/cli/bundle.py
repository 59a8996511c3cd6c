"""``lncr export`` and ``lncr apply``: thin commands over :mod:`lncr.bundle`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lncr.cli.common import Meter, console, err_console, table


def export(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file (final models trained, predicted and evaluated).")],
    out: Annotated[Path, typer.Argument(help="The bundle file to write, e.g. ln-cr-2026.lncr.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting of the study.")] = None,
) -> None:
    """Write the study's final ensemble to one portable, verified bundle file for `lncr apply`."""
    from lncr.bundle.archive import open_bundle
    from lncr.bundle.export import export_bundle
    from lncr.study.validate import Study

    path = export_bundle(Study.load(study_yaml, set_), out)
    bundle = open_bundle(path)  # read back: what was written verifies
    m = bundle.manifest
    console.print(table("Bundled final models", ["stain", "magnification", "architecture",
                                                 "bag", "epoch", "backbone file"],
                        [(x["stain"], x["magnification"], x["architecture"], str(x["bag_size"]),
                          str(x["epoch"]), x["backbone"] or "-") for x in m["models"]]))
    size = path.stat().st_size / 1e6
    console.print(f"Bundle: {path} ({size:.1f} MB, sha256 {bundle.sha256[:16]}…, format "
                  f"{m['format_version']}); score new patients with `lncr apply {path} …`")


def apply(
    bundle: Annotated[Path, typer.Argument(help="A bundle written by `lncr export`.")],
    slide: Annotated[Optional[list[str]], typer.Option(help="One slide of the patient as STAIN=PATH (repeat per stain).")] = None,
    patient: Annotated[str, typer.Option(help="The patient's identifier (with --slide).")] = "patient",
    slides: Annotated[Optional[Path], typer.Option(help="A CSV of slides to score: patient_id, stain, path (relative to the table), optional mpp and annotations (a QuPath GeoJSON). No labels.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the scores, the reports and the work files.")] = Path("lncr-scores"),
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[int, typer.Option(min=1, help="Tiling processes.")] = 1,
    heatmaps: Annotated[bool, typer.Option(help="Attention heatmaps and influential tiles in the reports.")] = True,
) -> None:
    """Score new patients with a bundle: tile with its settings and references, predict with
    every final model, ensemble, apply its threshold, and write one report per patient."""
    import pandas as pd

    from lncr.bundle.apply import Steps, apply_bundle, read_slide_table, slides_from_pairs

    if bool(slide) == bool(slides):
        raise typer.BadParameter("give either --slide STAIN=PATH (one patient) or --slides "
                                 "TABLE.csv (many)")
    table_ = slides_from_pairs(patient, slide) if slide else read_slide_table(slides)
    with Meter("slide × magnification units") as meter:
        steps = Steps(stage=lambda name: console.print(f"[bold]{name}[/bold]"),
                      tiles=meter.update,
                      slides=lambda what: console.print(f"  explained {what}"))
        result = apply_bundle(bundle, table_, out, device, workers, heatmaps, steps)
    for r in result.refused.itertuples():
        err_console.print(f"[red]refused[/red] {r.patient_id} {r.stain} ({r.path}): {r.reason}")
    rows = [(r.patient_id, "–" if pd.isna(r.p_cr) else f"{r.p_cr:.3f}", r.predicted or "–",
             r.stains_used or "–", r.stains_missing or "–")
            for r in result.scores.itertuples()]
    console.print(table(f"P(CR) at 12 months (threshold {result.scores.threshold.iloc[0]:.3f}, "
                        "fixed on the development validation patients)",
                        ["patient", "P(CR)", "predicted", "stains used", "missing"], rows))
    console.print(f"Scores: {out / 'scores.csv'}; reports: {out / 'reports'} (research use "
                  "only)")

