"""``lncr demo``: a thin command over :class:`lncr.pipeline.DemoPipeline`, with the stage
display and the closing summary."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from lncr.cli.common import (
    Meter,
    console,
    counted,
    default_workers,
    err_console,
    fmt,
    print_study,
    section_line,
    slide_lines,
    step_line,
    table,
    unit_line,
)
from lncr.cli.evaluation import print_baseline
from lncr.pipeline import DEMO_CLUSTER, PROGRESS, DemoFailed, DemoPipeline, StageLog


def demo(
    out: Annotated[Path, typer.Argument(help="Folder for everything the demo writes.")] = Path("demo-output"),
    workers: Annotated[int, typer.Option(min=0, help="Processes to use (0: up to 4).")] = 0,
    patients: Annotated[int, typer.Option(min=2, help="Development patients of the phantom.")] = 32,
    external: Annotated[int, typer.Option(min=0, help="External patients of the phantom.")] = 16,
    size: Annotated[str, typer.Option(help="Phantom slide size (see lncr synth).")] = "small",
    signal: Annotated[float, typer.Option(help="Strength of the phantom's lesion–outcome link (0–1.9).")] = 1.9,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of every model (sweep units and final models).")] = 30,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override one of the demo's settings, e.g. sweep.repeats=1.")] = None,
) -> None:
    """Run the method end to end on the built-in phantom: synth → validate → tile → embed
    (frozen encoder, once) → sweep (a published-shaped grid on cached features) → final models → predict (ensembles) → evaluate → explain (heatmaps,
    Grad-CAM, DCCS clusters) → report → export the bundle and score one external patient
    with it as a new patient. Re-running resumes."""
    pipeline = DemoPipeline(out, workers or default_workers(), patients, external, size,
                            signal, epochs, list(set_ or []))
    log = StageLog(console)

    @contextmanager
    def stage(name: str):
        with log.stage(name), stage_progress(pipeline, PROGRESS[name], patients + external):
            yield

    try:
        pipeline.run(stage, after={"validate": print_study, "tile": _tiles})
    except DemoFailed as exc:
        err_console.print(f"[red]ERROR {exc}; this is a bug.[/red]")
        raise typer.Exit(1) from exc
    console.print(table("Demo stages", ["stage", "seconds"], log.rows()))
    console.print(f"Phantom study: {pipeline.study_yaml}")
    for line in _closing(pipeline):  # the external AUC and the report's path come last
        console.print(f"[bold]{line}[/bold]")


@contextmanager
def stage_progress(pipeline: DemoPipeline, key: str, patients: int):
    """Set the progress display of one demo stage (counts, rate and ETA; plain timestamped
    lines when the output is not a terminal)."""
    from lncr.bundle.apply import Steps

    simple = {"sweep": unit_line, "evaluate": step_line, "report": section_line,
              "heatmaps": slide_lines("scored and mapped"), "gradcam": slide_lines("Grad-CAM of")}
    units = {"synth": "patients", "tile": "slide × magnification units", "embed": "tiles",
             "predict": "final models", "clusters": "epochs", "apply": "slide × magnification units"}
    if key in simple:
        pipeline.progress[key] = simple[key]
        yield
    elif key in units:
        with Meter(units[key], every=0 if key == "predict" else 10.0) as meter:
            pipeline.progress[key] = {
                "synth": counted(meter, "rendered", patients),
                "tile": lambda r, done, total: meter.update(
                    f"{r.unit.patient_id} {r.unit.stain} {r.unit.magnification} {r.status}",
                    done, total),
                "apply": Steps(stage=lambda step: console.print(f"  {step}"),
                               tiles=meter.update, slides=slide_lines("explained")),
            }.get(key, meter.update)
            if key == "tile":
                pipeline.progress["tile-qc"] = meter.phase("QC thumbnails")
            yield
    else:
        yield


def _tiles(report) -> None:
    from lncr.tiling.index import summarise

    summary = summarise(report.index())
    console.print(f"Tiles: {int(summary.tiles.sum())} kept over {len(report.results)} slide × "
                  f"magnification units (see {report.folder / 'qc'} for QC thumbnails)")


def _closing(pipeline: DemoPipeline) -> list[str]:
    """Print what the model stages found; return the two lines that close the run."""
    r = pipeline.results
    sweep, result = r["sweep"], r["evaluate"]
    sel = sweep.selection
    console.print(f"Sweep: {len(sweep.units)} units; selected "
                  + ", ".join(f"{s} {a}" for s, a in sel["architectures"].items())
                  + f"; bag size {sel['bag_size']} ({sweep.folder / 'selection.json'})")
    m = result.metrics
    rows = [(x.cohort, x.estimate, x.model, str(x.patients), fmt(x.auc, 2, x.auc_note),
             f"{fmt(x.delong_ci_low, 2)}–{fmt(x.delong_ci_high, 2)}")
            for x in m[m.kind != "single model"].itertuples()]
    console.print(table("Ensemble AUCs (95% CI, DeLong; validation patients chose the "
                        "configuration: optimistic)",
                        ["cohort", "estimate", "model", "patients", "AUC", "CI"], rows))
    ext = m[(m.cohort == "external") & (m.model == "multi-stain")].iloc[0]
    print_baseline(result)
    console.print(f"Heatmaps and influential tiles of {', '.join(pipeline.heatmap_patients())}:"
                  f" {r['heatmaps'].attrs['folder']}")
    console.print(f"Grad-CAM galleries of {', '.join(sorted(r['gradcam'].patient_id.unique()))}"
                  f" (most confident correct and incorrect per cohort): "
                  f"{r['gradcam'].attrs['folder']}")
    clusters = r["clusters"]
    assoc = clusters.get("chi_square_p", float("nan"))
    console.print(f"DCCS clusters of the development cohort's influential tiles "
                  f"({' '.join(DEMO_CLUSTER)}, {clusters['tiles']} tiles; clusters × outcome "
                  f"chi-square p {assoc:.2g}): {clusters['folder']}")
    scored = r["apply"]
    row = scored.scores.iloc[0]
    console.print(f"Bundle {pipeline.bundle_path} applied to {row.patient_id}'s slides as a new "
                  f"patient: P(CR) {row.p_cr:.2f}, predicted {row.predicted} at the development "
                  f"threshold {row.threshold:.2f}; report {scored.reports[row.patient_id]}")
    return [f"External cohort, multi-stain ensemble: AUC {fmt(ext.auc, 2, ext.auc_note)} "
            f"({fmt(ext.delong_ci_low, 2)}–{fmt(ext.delong_ci_high, 2)}); evaluation in "
            f"{result.folder}",
            f"Report: {r['report']}"]
