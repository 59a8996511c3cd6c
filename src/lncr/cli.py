"""The ``lncr`` command line: a thin layer over the Python API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from lncr import __version__
from lncr.cli_common import ErrorBoundary, console, err_console
from lncr.cli_common import default_workers as _default_workers
from lncr.cli_common import print_study as _print_study
from lncr.cli_common import run_synth as _run_synth
from lncr.cli_common import table as _table
from lncr.cli_demo import demo
from lncr.cli_explain import explain_app
from lncr.cli_report import report
from lncr.cli_sweep import evaluate, sweep
from lncr.cli_training import predict, train
from lncr.errors import BadInput

app = typer.Typer(
    cls=ErrorBoundary,
    name="lncr",
    help="Predict complete response in lupus nephritis from multi-stain renal biopsy slides.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lncr {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error "
                                        "instead of its one-line explanation.")] = False,
) -> None:
    """lncr: the published multi-stain, multi-magnification attention-MIL method, as software.

    Exit codes: 0 done, 2 bad input (the message names the file, row or setting and the fix),
    1 the work failed."""
    ctx.ensure_object(dict)["debug"] = debug




@app.command()
def validate(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a setting, e.g. --set split.seed=3 (repeatable).")] = None,
    files: Annotated[bool, typer.Option(help="Open every slide file (--no-files skips it).")] = True,
    record: Annotated[bool, typer.Option(
        help="Write the split and effective settings to <output_dir>/study/.")] = True,
    workers: Annotated[int, typer.Option(help="Threads that open slides.")] = 4,
) -> None:
    """Check a study (settings, tables, slide files) and print a summary and every problem."""
    from lncr.study.validate import load_study, save_study_record

    study = load_study(study_yaml, set_, check_files=files, workers=workers)
    _print_study(study)
    n_err, n_warn = len(study.problems.errors), len(study.problems.warnings)
    if n_err:
        err_console.print(f"[red]{n_err} error(s), {n_warn} warning(s): the study is not usable "
                          "until the errors are fixed.[/red]")
        raise typer.Exit(2)
    if record:
        folder = save_study_record(study)  # SplitMismatchError: the boundary explains it
        console.print(f"Split and effective settings written to {folder}")
    console.print(f"[green]OK[/green]: {n_warn} warning(s), no errors.")


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the phantom study into.")],
    patients: Annotated[int, typer.Option(help="Development patients.")] = 8,
    external: Annotated[int, typer.Option(help="External-cohort patients.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, byte-identical files.")] = 0,
    size: Annotated[str, typer.Option(
        help="small (tests), demo, or WIDTHxHEIGHT in level-0 pixels.")] = "small",
    signal: Annotated[float, typer.Option(
        help="Strength of the lesion-outcome link (0 = none, 1 = default).")] = 1.0,
    permute_labels: Annotated[bool, typer.Option(
        "--permute-labels", help="Shuffle labels after rendering (a null cohort).")] = False,
    stains: Annotated[str, typer.Option(help="Comma-separated stains to render.")] = "HE,PAS,PASM,MASSON",
    workers: Annotated[int, typer.Option(help="Processes rendering patients in parallel.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite a folder holding other content.")] = False,
) -> None:
    """Write a synthetic multi-stain phantom cohort whose ground truth is known."""
    from lncr.synth.cohort import SynthSettings

    settings = SynthSettings(patients=patients, external=external, seed=seed, size=size,
                             signal=signal, permute_labels=permute_labels,
                             stains=tuple(s.strip() for s in stains.split(",") if s.strip()))
    result = _run_synth(out, settings, workers or _default_workers(), force)
    console.print(f"Phantom study written to {result.study} ({result.rendered} slides rendered, "
                  f"{result.reused} reused)")


@app.command()
def tile(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a setting, e.g. --set tiling.tile_size=256 (repeatable).")] = None,
    workers: Annotated[int, typer.Option(help="Processes (0 = tiling.workers, or all cores).")] = 0,
    force: Annotated[bool, typer.Option(help="Re-tile even finished slides.")] = False,
) -> None:
    """Cut every slide into normalised tiles at every magnification (the tile stores)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lncr.tiling.run import summarise, tile_study

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

        report = tile_study(study_yaml, set_, workers=workers or None, force=force,
                            progress=advance)
    index = report.index()
    console.print(_table("Tiles per stain and magnification",
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
    if report.failed:
        err_console.print(f"[red]{len(report.failed)} unit(s) failed; the others are done. Fix "
                          "the slides and re-run: finished units are skipped.[/red]")
        raise typer.Exit(1)


app.command()(train)
app.command()(predict)
app.command()(sweep)
app.command()(evaluate)
app.add_typer(explain_app, name="explain")
app.command()(report)


tiles_app = typer.Typer(help="Work with tile stores.", no_args_is_help=True)
app.add_typer(tiles_app, name="tiles")


@tiles_app.command("export")
def tiles_export(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    out: Annotated[Path, typer.Argument(help="Folder for <patient>/<stain>/<mag>/<x>_<y>.png.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting.")] = None,
) -> None:
    """Write every kept tile as PNG files in the original scripts' folder layout."""
    from lncr.study.config import load_config
    from lncr.tiling.run import export_tiles

    cfg = load_config(study_yaml, set_)
    folder = cfg.output_dir / "tiles"
    if not (folder / "index.csv").exists():
        raise BadInput(f"no tiles in {folder}: run `lncr tile {study_yaml}` first")
    n = export_tiles(folder, out)
    console.print(f"{n} tiles written under {out}")


app.command()(demo)


if __name__ == "__main__":  # pragma: no cover
    app()
