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
from lncr.cli_explain import explain_app
from lncr.cli_sweep import evaluate, sweep
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


#: Settings the demo overrides for a quick CPU run: small JPEG tiles, a reduced sweep of two
#: backbones (EfficientNet-Lite0 with the packaged ImageNet weights, frozen; ResNet-18 from
#: scratch) × two bag sizes × two repeats at 10x, short sweep units, final models at 10x and
#: 20x (128-px tiles at 40x hold 32 µm: too little context, and most of the tiling time), and
#: predictions over every tile. ``training.input_size`` is given for 512-px tiles and scaled
#: with the tile size (384 → 96 px on 128-px tiles).
DEMO_TILING = ["tiling.encoding=jpeg", "tiling.tile_size=128", "magnification.powers=[10, 20]",
               "split.val_fraction=0.25"]
DEMO_TRAINING = ["training.pretrained=false", "training.backbone_lr_factor=0",
                 "training.channel_stats=imagenet", "training.epochs=8",
                 "training.warmup_epochs=1", "training.optimiser=adam",
                 "training.learning_rate=0.001", "training.input_size=384",
                 "training.embedding_dim=32", "training.transformer_heads=4",
                 "training.feedforward_dim=64", "training.eval_tiles=32",
                 "training.loader_workers=0"]
DEMO_SWEEP = ["sweep.architectures=[timm:tf_efficientnet_lite0, resnet18]",
              "sweep.bag_sizes=[4, 8]", "sweep.repeats=2", "sweep.magnifications=[10x]",
              "sweep.epochs=3", "evaluation.tiles=all"]
# DCCS on the CPU: small tiles and a short schedule (the defaults are for a GPU).
DEMO_EXPLAIN = ["explain.cluster_tile_size=48", "explain.cluster_epochs=60"]
DEMO_CLUSTER = ("HE", "20x")  # the one final model the demo clusters


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
app.command()(sweep)
app.command()(evaluate)
app.add_typer(explain_app, name="explain")


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
    patients: Annotated[int, typer.Option(help="Development patients of the phantom.")] = 32,
    external: Annotated[int, typer.Option(help="External patients of the phantom.")] = 16,
    size: Annotated[str, typer.Option(help="Phantom slide size (see lncr synth).")] = "small",
    signal: Annotated[float, typer.Option(help="Strength of the phantom's lesion–outcome link (0–1.9).")] = 1.9,
    epochs: Annotated[int, typer.Option(help="Training epochs of the final models.")] = 8,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override one of the demo's settings, e.g. sweep.repeats=1.")] = None,
) -> None:
    """Run the method end to end on the built-in phantom: synth → validate → tile → sweep
    (reduced grid) → final models → predict (ensembles) → evaluate → explain (heatmaps)."""
    from lncr.synth.cohort import SynthError, SynthSettings
    from lncr.study.validate import load_study, save_study_record

    workers = workers or _default_workers()
    timings: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    try:
        settings = SynthSettings(patients=patients, external=external, seed=0, size=size,
                                 signal=signal)
        result = _run_synth(out / "study", settings, workers, force=False)
    except SynthError as exc:
        err_console.print(f"[red]ERROR {exc}[/red]")
        raise typer.Exit(2) from exc
    timings.append(("synth", time.perf_counter() - t0))
    t0 = time.perf_counter()
    tiling = DEMO_TILING + list(set_ or [])
    study = load_study(result.study, tiling, workers=workers)
    _print_study(study)
    if not study.ok:
        err_console.print("[red]The phantom study failed validation; this is a bug.[/red]")
        raise typer.Exit(1)
    save_study_record(study)
    timings.append(("validate", time.perf_counter() - t0))
    t0 = time.perf_counter()
    from lncr.tiling.run import summarise, tile_study

    # Small JPEG tiles keep the CPU demo quick; PNG (lossless) is the default for real studies.
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
    _demo_models(result.study, workers, epochs, list(set_ or []), timings)
    console.print(_table("Demo stages", ["stage", "seconds"],
                         [(name, f"{sec:.1f}") for name, sec in timings]))
    console.print(f"Phantom study: {result.study}")
    console.print("Not implemented yet: the HTML report (`lncr report`).")


def _demo_models(study_yaml: Path, workers: int, epochs: int, extra: list[str],
                 timings: list[tuple[str, float]]) -> None:
    """The demo's sweep, final models, ensemble predictions and evaluation."""
    from lncr.evaluation.evaluate import evaluate_study
    from lncr.evaluation.final_predictions import predict_final
    from lncr.explain.cluster_run import explain_clusters
    from lncr.explain.gradcam_run import explain_gradcam
    from lncr.explain.run import explain_heatmaps
    from lncr.models.weights import ARCHITECTURE, lite0_weights
    from lncr.sweep.run import run_sweep

    t0 = time.perf_counter()
    # Absolute: study.yaml resolves relative paths against its own folder.
    weights = lite0_weights((study_yaml.parent / "weights" / "tf_efficientnet_lite0.pth")
                            .resolve())
    overrides = (DEMO_TILING + DEMO_TRAINING + DEMO_SWEEP + DEMO_EXPLAIN
                 + [f"training.epochs={epochs}",
                    f"sweep.weights={{'{ARCHITECTURE}': '{weights}'}}"] + extra)

    def progress(row: dict) -> None:
        if row["status"] == "failed":
            err_console.print(f"[red]unit failed[/red] {row['stain']} {row['magnification']} "
                              f"{row['architecture']}: {row['error']}")

    try:
        sweep = run_sweep(study_yaml, overrides, executor="local", workers=workers,
                          device="auto", progress=progress)
        timings.append(("sweep + final models", time.perf_counter() - t0))
        t0 = time.perf_counter()
        predictions = predict_final(study_yaml, overrides, device="auto")
        timings.append(("predict (ensembles)", time.perf_counter() - t0))
        t0 = time.perf_counter()
        result = evaluate_study(study_yaml, overrides)
        timings.append(("evaluate", time.perf_counter() - t0))
        t0 = time.perf_counter()
        # Heatmaps for the external patients the multi-stain ensemble is surest about.
        ext = predictions.multi[predictions.multi.cohort == "external"].dropna(
            subset=["probability"]).sort_values("probability")
        chosen = sorted({ext.patient_id.iloc[0], ext.patient_id.iloc[-1]})
        explained = explain_heatmaps(study_yaml, overrides, "external", chosen, device="auto")
        timings.append(("explain (heatmaps)", time.perf_counter() - t0))
        t0 = time.perf_counter()
        cams = explain_gradcam(study_yaml, overrides, device="auto")
        timings.append(("explain (Grad-CAM)", time.perf_counter() - t0))
        t0 = time.perf_counter()
        clusters = explain_clusters(study_yaml, overrides, [DEMO_CLUSTER[0]],
                                    [DEMO_CLUSTER[1]], device="auto")[0]
        timings.append(("explain (DCCS clusters)", time.perf_counter() - t0))
    except ValueError as exc:
        err_console.print(f"[red]ERROR the demo's models failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    sel = sweep.selection
    console.print(f"Sweep: {len(sweep.units)} units; selected "
                  + ", ".join(f"{s} {a}" for s, a in sel["architectures"].items())
                  + f"; bag size {sel['bag_size']} ({sweep.folder / 'selection.json'})")
    m = result.metrics
    rows = [(r.cohort, r.model, str(r.patients), f"{r.auc:.2f}",
             f"{r.delong_ci_low:.2f}–{r.delong_ci_high:.2f}")
            for r in m[m.kind != "single model"].itertuples()]
    console.print(_table("Ensemble AUCs (95% CI, DeLong)", ["cohort", "model", "patients", "AUC",
                                                           "CI"], rows))
    ext = m[(m.cohort == "external") & (m.model == "multi-stain")].iloc[0]
    console.print(f"Heatmaps and influential tiles of {', '.join(chosen)}: "
                  f"{explained.attrs['folder']}")
    console.print(f"Grad-CAM galleries of {', '.join(sorted(cams.patient_id.unique()))} "
                  "(most confident correct and incorrect per cohort): "
                  f"{cams.attrs['folder']}")
    assoc = clusters.get("chi_square_p", float("nan"))
    console.print(f"DCCS clusters of the development cohort's influential tiles "
                  f"({' '.join(DEMO_CLUSTER)}, {clusters['tiles']} tiles; clusters × outcome "
                  f"chi-square p {assoc:.2g}): {clusters['folder']}")
    console.print(f"External cohort, multi-stain ensemble: AUC {ext.auc:.2f} "
                  f"({ext.delong_ci_low:.2f}–{ext.delong_ci_high:.2f}); evaluation in "
                  f"{result.folder}")


if __name__ == "__main__":  # pragma: no cover
    app()
