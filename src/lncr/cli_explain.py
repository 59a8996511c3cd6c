"""``lncr explain …``: thin commands over :mod:`lncr.explain`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lncr.cli_common import console, err_console

explain_app = typer.Typer(help="Explain the final models' predictions (tile scores, heatmaps).",
                          no_args_is_help=True)


@explain_app.command("heatmap")
def heatmap(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    cohort: Annotated[str, typer.Option(help="development, external or all.")] = "all",
    patient: Annotated[Optional[list[str]], typer.Option(help="Only these patients (repeatable).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting, e.g. explain.top_k=4.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Score every tile of every slide with each final model (attention and leave-one-out
    effect), paint the scores on the slide, export them as GeoJSON, list influential tiles."""
    from lncr.explain.run import explain_heatmaps

    try:
        table = explain_heatmaps(study_yaml, set_, cohort, patient, device)
    except ValueError as exc:
        err_console.print(f"[red]ERROR {exc}[/red]")
        raise typer.Exit(1) from exc
    slides = table.groupby(["stain", "magnification", "patient_id"]).ngroups
    console.print(f"Explained {slides} slide × magnification units; influential tiles in "
                  f"{table.attrs['folder']}/influential.csv; heatmaps/, geojson/ and scores/ "
                  "beside it")
