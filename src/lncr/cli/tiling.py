"""``lncr tile`` and ``lncr tiles export``: thin commands over :mod:`lncr.tiling`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from lncr.cli.common import console, err_console, table
from lncr.study.validate import Study


def tile(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a setting, e.g. --set tiling.tile_size=256 (repeatable).")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Processes (0 = tiling.workers, or all cores).")] = 0,
    force: Annotated[bool, typer.Option(help="Re-tile even finished slides.")] = False,
) -> None:
    """Cut every slide into normalised tiles at every magnification (the tile stores)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lncr.tiling.run import summarise, tile_study

    study = Study.load(study_yaml, set_)
    tiles = {"n": 0}
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("Tiling slide × magnification units", total=None, rate="")

        def advance(result) -> None:
            tiles["n"] += result.kept if result.status != "reused" else 0
            elapsed = max(time.perf_counter() - t0, 1e-6)
            bar.update(task, advance=1, rate=f"{tiles['n'] / elapsed:.1f} new tiles/s")

        report = tile_study(study, workers=workers or None, force=force, progress=advance)
    index = report.index()
    console.print(table("Tiles per stain and magnification",
                         ["stain", "magnification", "cohort", "slides", "tiles", "tiles_per_slide"],
                         summarise(index).itertuples(index=False)))
    counts = index.status.value_counts().to_dict()
    console.print("Units: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                  + f"; {report.seconds:.1f} s. Index: {report.folder / 'index.csv'}")
    for r in report.results:
        if r.status in ("failed", "skipped-resolution"):
            style = "red" if r.status == "failed" else "yellow"
            console.print(f"[{style}]{r.status.upper()} {r.unit.patient_id} {r.unit.stain} "
                          f"{r.unit.magnification} ({r.unit.slide}): {r.error}[/{style}]")
    for r in report.results:
        if "damaged_store" in r.extra:
            console.print(f"[yellow]re-tiled {r.unit.patient_id} {r.unit.stain} "
                          f"{r.unit.magnification}: its store was damaged "
                          f"({r.extra['damaged_store']})[/yellow]")
    if report.failed:
        err_console.print(f"[red]{len(report.failed)} unit(s) failed; the others are done. Fix "
                          "the slides and re-run: finished units are skipped.[/red]")
        raise typer.Exit(1)


tiles_app = typer.Typer(help="Work with tile stores.", no_args_is_help=True)


@tiles_app.command("export")
def tiles_export(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    out: Annotated[Path, typer.Argument(help="Folder for <patient>/<stain>/<mag>/<x>_<y>.png.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting.")] = None,
) -> None:
    """Write every kept tile as PNG files in the original scripts' folder layout."""
    from lncr.tiling.run import export_tiles

    n = export_tiles(Study.load(study_yaml, set_), out)
    console.print(f"{n} tiles written under {out}")
