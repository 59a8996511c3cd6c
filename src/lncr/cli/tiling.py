"""``lncr tile`` and ``lncr tiles export``: thin commands over :mod:`lncr.tiling`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from lncr.cli.common import Meter, console, err_console, table
from lncr.errors import BadInput
from lncr.layout import Layout
from lncr.study.validate import Study


def tile(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a setting, e.g. --set tiling.tile_size=256 (repeatable).")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Processes (0 = tiling.workers, or all cores).")] = 0,
    force: Annotated[bool, typer.Option(help="Re-tile even finished slides.")] = False,
    shard: Annotated[Optional[str], typer.Option(
        help="Tile only shard i of n (0 ≤ i < n, e.g. 1/4): every n-th slide, for n machines "
             "sharing the output folder; the last to finish merges the index.")] = None,
    merge: Annotated[bool, typer.Option(
        help="Only merge the finished shards' parts into the index.")] = False,
) -> None:
    """Cut every slide into normalised tiles at every magnification (the tile stores)."""
    from lncr.sharding import Shard
    from lncr.tiling.run import tile_study
    from lncr.tiling.shards import merge_shards

    study = Study.load(study_yaml, set_)
    if merge:
        if shard or force:
            raise BadInput("--merge only merges the shards' parts: drop --shard and --force")
        index = merge_shards(study)
        _summary(index, 0.0, Layout(study.config.output_dir).tiles_index)
        return
    part = Shard.parse(shard) if shard else None
    tiles = {"n": 0}
    t0 = time.perf_counter()
    with Meter("slide × magnification units") as meter:
        def advance(result, done: int, total: int) -> None:
            tiles["n"] += result.kept if result.status != "reused" else 0
            rate = tiles["n"] / max(time.perf_counter() - t0, 1e-6)
            u = result.unit
            meter.update(f"{u.patient_id} {u.stain} {u.magnification} {result.status} "
                         f"({tiles['n']} new tiles, {rate:.1f} tiles/s)", done, total)

        report = tile_study(study, workers=workers or None, force=force, progress=advance,
                            shard=part, qc_progress=meter.phase("QC thumbnails"))
    _summary(report.index(), report.seconds, report.folder / "index.csv")
    _problems(report)
    if part is not None:
        console.print(f"Shard {part}: index part in {report.folder / 'shards'}; " + (
            "every shard has finished: index merged." if not report.merge_note else
            f"index not merged yet ({escape(report.merge_note)})."))
    if report.failed:
        err_console.print(f"[red]{len(report.failed)} unit(s) failed; the others are done. Fix "
                          "the slides and re-run: finished units are skipped.[/red]")
        raise typer.Exit(1)


def _summary(index, seconds: float, where: Path) -> None:
    from lncr.tiling.index import summarise

    console.print(table("Tiles per stain and magnification",
                         ["stain", "magnification", "cohort", "slides", "tiles", "tiles_per_slide"],
                         summarise(index).itertuples(index=False)))
    counts = index.status.value_counts().to_dict()
    console.print("Units: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                  + f"; {seconds:.1f} s. Index: {where}")


#: The share of a slide's tiles left unnormalised above which `lncr tile` warns.
FALLBACK_WARNING = 0.1


def _problems(report) -> None:
    for r in report.results:
        if r.status in ("failed", "skipped-resolution"):
            style = "red" if r.status == "failed" else "yellow"
            console.print(f"[{style}]{r.status.upper()} {escape(r.unit.patient_id)} "
                          f"{escape(r.unit.stain)} {r.unit.magnification} "
                          f"({escape(r.unit.slide)}): {escape(r.error)}[/{style}]")
    for r in report.results:
        share = r.normaliser_fallbacks / r.kept if r.kept else 0.0
        if r.status != "reused" and share >= FALLBACK_WARNING:
            console.print(f"[yellow]WARNING {escape(r.unit.patient_id)} {escape(r.unit.stain)} "
                          f"{r.unit.magnification}: {r.normaliser_fallbacks} of {r.kept} tiles "
                          f"({share:.0%}) kept their own colours: the stain normaliser could "
                          "not estimate their stains (nearly blank, or one dye); check the QC "
                          "thumbnail, or set tiling.normalisation for this stain[/yellow]")
        if "damaged_store" in r.extra:
            console.print(f"[yellow]re-tiled {escape(r.unit.patient_id)} {escape(r.unit.stain)} "
                          f"{r.unit.magnification}: its store was damaged "
                          f"({escape(r.extra['damaged_store'])})[/yellow]")


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
