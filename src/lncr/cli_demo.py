"""``lncr demo``: the whole method on the built-in phantom, with one stage display.

Stages: synth → validate → tile → sweep + final models → predict → evaluate → explain
(heatmaps, Grad-CAM, DCCS clusters) → report. Each stage announces itself as ``[k/N] name``
and reports its time when it ends; a table of all stage times closes the run. Every stage
resumes: finished slides, tiles, units, predictions and explanations are read from disk, so an
interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from lncr.cli_common import console, default_workers, err_console, print_study, run_synth
from lncr.cli_common import table as _table

#: Settings the demo overrides for a quick CPU run: small JPEG tiles, a reduced sweep of two
#: backbones (EfficientNet-Lite0 with the packaged ImageNet weights, frozen; ResNet-18 from
#: scratch) × two bag sizes × two repeats at 10x, short sweep units, final models at 10x and
#: 20x (128-px tiles at 40x hold 32 µm: too little context, and most of the tiling time), and
#: predictions over every tile. ``training.input_size`` is given for 512-px tiles and scaled
#: with the tile size (384 → 96 px on 128-px tiles).
DEMO_TILING = ["tiling.encoding=jpeg", "tiling.tile_size=128", "magnification.powers=[10, 20]",
               "split.val_fraction=0.25"]
DEMO_TRAINING = ["training.pretrained=false", "training.backbone_lr_factor=0",
                 "training.augment=true",
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
DEMO_EXPLAIN = ["explain.cluster_tile_size=48", "explain.cluster_epochs=120",
                "explain.cluster_lr=0.001", "explain.cluster_encoder=plain",
                "explain.cluster_augment=light", "explain.cluster_crop=512"]
DEMO_CLUSTER = ("HE", "20x")  # the one final model the demo clusters


STAGES = ["synth", "validate", "tile", "sweep + final models", "predict (ensembles)",
          "evaluate", "explain (heatmaps)", "explain (Grad-CAM)", "explain (DCCS clusters)",
          "report"]


class StageLog:
    """One display for the whole pipeline: ``[k/N] stage …`` when a stage starts, its time when
    it ends, and the table of all times at the end."""

    def __init__(self, names: list[str]):
        self.names = names
        self.timings: list[tuple[str, float]] = []
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        k = self.names.index(name) + 1
        console.rule(f"[bold][{k}/{len(self.names)}] {name}", align="left")
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        self.timings.append((name, seconds))
        console.print(f"[green]✓[/green] {name}: {seconds:.1f} s "
                      f"(total {time.perf_counter() - self.started:.0f} s)")

    def summary(self):
        rows = [(name, f"{sec:.1f}") for name, sec in self.timings]
        rows.append(("total", f"{sum(s for _, s in self.timings):.1f}"))
        return _table("Demo stages", ["stage", "seconds"], rows)



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
    (reduced grid) → final models → predict (ensembles) → evaluate → explain (heatmaps,
    Grad-CAM, DCCS clusters) → report. Re-running resumes."""
    from lncr.study.validate import load_study, save_study_record
    from lncr.synth.cohort import SynthError, SynthSettings
    from lncr.tiling.run import summarise, tile_study

    workers = workers or default_workers()
    log = StageLog(STAGES)
    try:
        with log.stage("synth"):
            settings = SynthSettings(patients=patients, external=external, seed=0, size=size,
                                     signal=signal)
            result = run_synth(out / "study", settings, workers, force=False)
    except SynthError as exc:
        err_console.print(f"[red]ERROR {exc}[/red]")
        raise typer.Exit(2) from exc
    tiling = DEMO_TILING + list(set_ or [])
    with log.stage("validate"):
        study = load_study(result.study, tiling, workers=workers)
        print_study(study)
        if not study.ok:
            err_console.print("[red]The phantom study failed validation; this is a bug.[/red]")
            raise typer.Exit(1)
        save_study_record(study)
    with log.stage("tile"):
        # Small JPEG tiles keep the CPU demo quick; PNG (lossless) is the default for studies.
        tiles = tile_study(result.study, tiling, workers=workers)
        if tiles.failed:
            err_console.print(f"[red]{len(tiles.failed)} tiling unit(s) failed on the phantom; "
                              "this is a bug.[/red]")
            raise typer.Exit(1)
        summary = summarise(tiles.index())
        console.print(f"Tiles: {int(summary.tiles.sum())} kept over "
                      f"{len(tiles.results)} slide × magnification units "
                      f"(see {tiles.folder / 'qc'} for QC thumbnails)")
    closing = _demo_models(result.study, workers, epochs, list(set_ or []), log)
    console.print(log.summary())
    console.print(f"Phantom study: {result.study}")
    for line in closing:  # the external AUC and the report's path come last
        console.print(f"[bold]{line}[/bold]")


def _demo_models(study_yaml: Path, workers: int, epochs: int, extra: list[str],
                 log: StageLog) -> list[str]:
    """The demo's sweep, final models, predictions, evaluation, explanations and report."""
    from lncr.evaluation.evaluate import evaluate_study
    from lncr.evaluation.final_predictions import predict_final
    from lncr.explain.cluster_run import explain_clusters
    from lncr.explain.gradcam_run import explain_gradcam
    from lncr.explain.run import explain_heatmaps
    from lncr.models.weights import ARCHITECTURE, lite0_weights
    from lncr.report.build import build_report
    from lncr.sweep.run import run_sweep

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
        with log.stage("sweep + final models"):
            sweep = run_sweep(study_yaml, overrides, executor="local", workers=workers,
                              device="auto", progress=progress)
        with log.stage("predict (ensembles)"):
            predictions = predict_final(study_yaml, overrides, device="auto")
        with log.stage("evaluate"):
            result = evaluate_study(study_yaml, overrides)
        with log.stage("explain (heatmaps)"):
            # Heatmaps for the external patients the multi-stain ensemble is surest about.
            ext = predictions.multi[predictions.multi.cohort == "external"].dropna(
                subset=["probability"]).sort_values("probability")
            chosen = sorted({ext.patient_id.iloc[0], ext.patient_id.iloc[-1]})
            explained = explain_heatmaps(study_yaml, overrides, "external", chosen,
                                         device="auto")
        with log.stage("explain (Grad-CAM)"):
            cams = explain_gradcam(study_yaml, overrides, device="auto")
        with log.stage("explain (DCCS clusters)"):
            clusters = explain_clusters(study_yaml, overrides, [DEMO_CLUSTER[0]],
                                        [DEMO_CLUSTER[1]], device="auto")[0]
        with log.stage("report"):
            report = build_report(study_yaml, overrides)
    except ValueError as exc:
        err_console.print(f"[red]ERROR the demo's models failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    sel = sweep.selection
    console.print(f"Sweep: {len(sweep.units)} units; selected "
                  + ", ".join(f"{s} {a}" for s, a in sel["architectures"].items())
                  + f"; bag size {sel['bag_size']} ({sweep.folder / 'selection.json'})")
    m = result.metrics
    rows = [(r.cohort, r.estimate, r.model, str(r.patients), f"{r.auc:.2f}",
             f"{r.delong_ci_low:.2f}–{r.delong_ci_high:.2f}")
            for r in m[m.kind != "single model"].itertuples()]
    console.print(_table("Ensemble AUCs (95% CI, DeLong; validation patients chose the "
                         "configuration: optimistic)",
                         ["cohort", "estimate", "model", "patients", "AUC", "CI"], rows))
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
    return [f"External cohort, multi-stain ensemble: AUC {ext.auc:.2f} "
            f"({ext.delong_ci_low:.2f}–{ext.delong_ci_high:.2f}); evaluation in {result.folder}",
            f"Report: {report}"]
