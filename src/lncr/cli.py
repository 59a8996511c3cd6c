"""The ``lncr`` command line: a thin layer over the Python API."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from lncr import __version__
from lncr.cli_common import console, err_console
from lncr.cli_common import table as _table
from lncr.cli_training import predict, train

if TYPE_CHECKING:
    from lncr.study.validate import Study

app = typer.Typer(
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
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """lncr: the published multi-stain, multi-magnification attention-MIL method, as software."""


#: Settings the demo overrides for a quick CPU run.
DEMO_TILING = ["tiling.encoding=jpeg"]
DEMO_TRAINING = ["training.architecture=resnet18", "training.pretrained=false",
                 "training.bag_size=8", "training.epochs=20", "training.warmup_epochs=2",
                 "training.optimiser=adam", "training.learning_rate=0.001",
                 "training.input_size=75", "training.embedding_dim=32",
                 "training.transformer_heads=4", "training.feedforward_dim=64",
                 "training.eval_tiles=32"]


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _print_study(study: "Study") -> None:
    summary = study.summary()
    if "patients" in summary:
        console.print(_table("Patients (label 1 = complete response at 12 months)",
                             ["cohort", "label 1", "label 0"],
                             [(c, n["1"], n["0"]) for c, n in summary["patients"].items()]))
    if "slides" in summary:
        console.print(_table("Slides per stain", ["stain", "development", "external"],
                             [(s, n["development"], n["external"])
                              for s, n in summary["slides"].items()]))
        missing = summary.get("missing_stains", {})
        if missing:
            console.print(f"{len(missing)} patient(s) lack a stain: " + "; ".join(
                f"{pid} ({', '.join(st)})" for pid, st in list(missing.items())[:20])
                + (" …" if len(missing) > 20 else ""))
        else:
            console.print("Every patient has every stain.")
    if "split" in summary:
        sp = summary["split"]
        console.print(f"Split ({sp['source']}): train {sp['train']['1']} CR / {sp['train']['0']} "
                      f"non-CR, val {sp['val']['1']} CR / {sp['val']['0']} non-CR")
    for p in study.problems.items:
        style = "red" if p.severity == "error" else "yellow"
        console.print(f"[{style}]{p}[/{style}]")


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
    from lncr.study.split import SplitMismatchError
    from lncr.study.validate import load_study, save_study_record

    study = load_study(study_yaml, set_, check_files=files, workers=workers)
    _print_study(study)
    n_err, n_warn = len(study.problems.errors), len(study.problems.warnings)
    if n_err:
        err_console.print(f"[red]{n_err} error(s), {n_warn} warning(s): the study is not usable "
                          "until the errors are fixed.[/red]")
        raise typer.Exit(1)
    if record:
        try:
            folder = save_study_record(study)
        except SplitMismatchError as exc:
            err_console.print(f"[red]ERROR {exc}[/red]")
            raise typer.Exit(1) from exc
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
    from lncr.synth.cohort import SynthError, SynthSettings

    try:
        settings = SynthSettings(patients=patients, external=external, seed=seed, size=size,
                                 signal=signal, permute_labels=permute_labels,
                                 stains=tuple(s.strip() for s in stains.split(",") if s.strip()))
        result = _run_synth(out, settings, workers or _default_workers(), force)
    except SynthError as exc:
        err_console.print(f"[red]ERROR {exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"Phantom study written to {result.study} ({result.rendered} slides rendered, "
                  f"{result.reused} reused)")


def _run_synth(out: Path, settings, workers: int, force: bool):
    from rich.progress import Progress

    from lncr.synth.cohort import synthesize

    total = settings.patients + settings.external
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"Rendering {total} patients × {len(settings.stains)} stains", total=total)
        return synthesize(out, settings, workers=workers, force=force,
                          progress=lambda _: bar.advance(task))


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

    from lncr.tiling.run import TilingError, summarise, tile_study

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

        try:
            report = tile_study(study_yaml, set_, workers=workers or None, force=force,
                                progress=advance)
        except TilingError as exc:
            err_console.print(f"[red]ERROR {exc}[/red]")
            raise typer.Exit(1) from exc
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
        err_console.print(f"[red]ERROR no tiles in {folder}: run `lncr tile {study_yaml}` "
                          "first[/red]")
        raise typer.Exit(1)
    n = export_tiles(folder, out)
    console.print(f"{n} tiles written under {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Folder for everything the demo writes.")] = Path("demo-output"),
    workers: Annotated[int, typer.Option(help="Processes to use.")] = 0,
    patients: Annotated[int, typer.Option(help="Development patients of the phantom.")] = 16,
    external: Annotated[int, typer.Option(help="External patients of the phantom.")] = 8,
    size: Annotated[str, typer.Option(help="Phantom slide size (see lncr synth).")] = "demo",
    tile_size: Annotated[int, typer.Option(help="Tile size in pixels.")] = 512,
    epochs: Annotated[int, typer.Option(help="Training epochs of the demo's model.")] = 20,
) -> None:
    """Run every implemented stage on the built-in phantom (synth → validate → tile → train)."""
    from lncr.synth.cohort import SynthError, SynthSettings
    from lncr.study.validate import load_study, save_study_record

    workers = workers or _default_workers()
    timings: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    try:
        settings = SynthSettings(patients=patients, external=external, seed=0, size=size)
        result = _run_synth(out / "study", settings, workers, force=False)
    except SynthError as exc:
        err_console.print(f"[red]ERROR {exc}[/red]")
        raise typer.Exit(2) from exc
    timings.append(("synth", time.perf_counter() - t0))
    t0 = time.perf_counter()
    study = load_study(result.study, workers=workers)
    _print_study(study)
    if not study.ok:
        err_console.print("[red]The phantom study failed validation; this is a bug.[/red]")
        raise typer.Exit(1)
    save_study_record(study)
    timings.append(("validate", time.perf_counter() - t0))
    t0 = time.perf_counter()
    from lncr.tiling.run import summarise, tile_study

    # JPEG tile stores keep the CPU demo quick; PNG (lossless) is the default for real studies.
    tiling = DEMO_TILING + [f"tiling.tile_size={tile_size}"]
    report = tile_study(result.study, tiling, workers=workers)
    timings.append(("tile", time.perf_counter() - t0))
    if report.failed:
        err_console.print(f"[red]{len(report.failed)} tiling unit(s) failed on the phantom; this "
                          "is a bug.[/red]")
        raise typer.Exit(1)
    summary = summarise(report.index())
    console.print(f"Tiles: {int(summary.tiles.sum())} kept over "
                  f"{len(report.results)} slide × magnification units "
                  f"(see {report.folder / 'qc'} for QC thumbnails)")
    t0 = time.perf_counter()
    import pandas as pd

    from lncr.training.loop import RunSpec, study_entries, train_run
    from lncr.training.metrics import auc
    from lncr.training.predict import prediction_path, predict_run

    try:
        overrides = tiling + DEMO_TRAINING + [f"training.epochs={epochs}",
                                              f"training.warmup_epochs={min(2, epochs - 1)}"]
        cfg, entries = study_entries(result.study, "HE", "10x", overrides)
        spec = RunSpec("HE", "10x", cfg.training.architecture, cfg.training.bag_size, 0)
        folder = train_run(spec, entries, cfg.training, cfg.output_dir / "runs",
                           cfg.tiling.tile_size, device="auto",
                           source={"study": str(result.study.resolve()), "overrides": overrides})
        external = predict_run(folder, "external", device="auto")
    except ValueError as exc:
        err_console.print(f"[red]ERROR training on the phantom failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    timings.append(("train + predict (HE 10x)", time.perf_counter() - t0))
    metrics = pd.read_csv(folder / "metrics.csv")
    console.print(f"Trained {folder}: validation AUC {metrics.val_auc.iloc[-1]:.2f} after "
                  f"{len(metrics)} epochs (best {metrics.val_auc.max():.2f}; "
                  f"{int((pd.read_csv(folder / 'split.csv').split == 'val').sum())} validation "
                  "patients)")
    if external.label.nunique() == 2:
        console.print(f"External cohort ({len(external)} patients, best checkpoint): AUC "
                      f"{auc(external.label, external.probability):.2f} "
                      f"({prediction_path(folder, 'external', 'best', 'eval')})")
    console.print(_table("Demo stages", ["stage", "seconds"],
                         [(name, f"{sec:.1f}") for name, sec in timings]))
    console.print(f"Phantom study: {result.study}")
    console.print("Implemented so far: synth, validate, tile, one training run and its "
                  "predictions. The sweep, "
                  "ensembles, evaluation, explanation and the report are not implemented yet; "
                  "the demo will run them as they land.")


if __name__ == "__main__":  # pragma: no cover
    app()
