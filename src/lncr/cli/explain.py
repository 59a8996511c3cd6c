"""``lncr explain …``: thin commands over :mod:`lncr.explain`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from lncr.cli.common import Meter, console, slide_lines
from lncr.study.validate import Study

explain_app = typer.Typer(help="Explain the final models' predictions: tile scores and heatmaps, Grad-CAM, DCCS clusters.",
                          no_args_is_help=True)


@explain_app.command("heatmap")
def heatmap(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    cohort: Annotated[str, typer.Option(help="development, external or all.")] = "all",
    patient: Annotated[Optional[list[str]], typer.Option(help="Only these patients (repeatable).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting, e.g. explain.top_k=4.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    shard: Annotated[Optional[str], typer.Option(help="Explain every n-th selected patient from the i-th (i/n, 0 ≤ i < n), for n machines; the last to finish writes the tables of them all.")] = None,
) -> None:
    """Score every tile of every slide with each final model (attention and leave-one-out
    effect), paint the scores on the slide, export them as GeoJSON, list influential tiles."""
    from lncr.explain.heatmap_run import explain_heatmaps, explain_heatmaps_shard

    if shard is not None:
        from lncr.sharding import Shard

        part = Shard.parse(shard)
        note = explain_heatmaps_shard(Study.load(study_yaml, set_), part, cohort, patient,
                                      device, slide_lines("scored and mapped"))
        console.print(f"Shard {part}: its slides are scored and mapped; " + (
            "every selected slide is: influential.csv and the GeoJSON index written." if not note
            else f"the tables wait for the other shards ({escape(note)})."))
        return
    table = explain_heatmaps(Study.load(study_yaml, set_), cohort, patient, device,
                             slide_lines("scored and mapped"))
    slides = table.groupby(["stain", "magnification", "patient_id"]).ngroups
    console.print(f"Explained {slides} slide × magnification units; influential tiles in "
                  f"{table.attrs['folder']}/influential.csv; heatmaps/, geojson/ and scores/ "
                  "beside it")


@explain_app.command("gradcam")
def gradcam(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    patient: Annotated[Optional[list[str]], typer.Option(help="Explain these patients (repeatable); default: the most confident correct and incorrect prediction per cohort.")] = None,
    method: Annotated[Optional[str], typer.Option(help="gradcam, gradcam++, xgradcam, hirescam, layercam, eigencam, eigengradcam or gradcamelementwise (default: explain.cam_method).")] = None,
    target: Annotated[Optional[str], typer.Option(help="Explain P(CR) (cr), P(non-CR) (noncr) or the predicted outcome (predicted); default: explain.target.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting, e.g. explain.top_k=4.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Grad-CAM of the bag's evidence (logit) for each slide's influential tiles, computed inside
    their bag: tile/overlay PNGs, a gallery per slide and the raw maps with coordinates."""
    from lncr.explain.gradcam_run import explain_gradcam

    table = explain_gradcam(Study.load(study_yaml, set_), patient, method, target, device,
                            slide_lines("Grad-CAM of"))
    slides = table.groupby(["stain", "magnification", "patient_id"]).ngroups
    patients = ", ".join(sorted(table.patient_id.unique()))
    console.print(f"Grad-CAM of {len(table)} influential tiles on {slides} slide × "
                  f"magnification units (patients {patients}); galleries in "
                  f"{table.attrs['folder']}/<stain>/<mag>/<patient>/")


@explain_app.command("cluster")
def cluster(
    study_yaml: Annotated[Path, typer.Argument(help="The study's YAML file.")],
    stain: Annotated[Optional[list[str]], typer.Option(help="Only these stains (repeatable).")] = None,
    magnification: Annotated[Optional[list[str]], typer.Option(help="Only these magnifications, e.g. 20x (repeatable).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting, e.g. explain.cluster_epochs=50.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """DCCS clustering of the development cohort's influential tiles per final model: t-SNE,
    cluster galleries and the clusters' association with the outcome."""
    from lncr.explain.cluster_run import explain_clusters

    with Meter("epochs") as meter:
        done = explain_clusters(Study.load(study_yaml, set_), stain, magnification, device,
                                log=lambda m: console.print(m), progress=meter.update)
    for d in done:
        phantom = d.get("phantom", {}).get("dccs")
        extra = (f"; against the phantom's planted classes: accuracy {phantom['accuracy']:.2f}, "
                 f"NMI {phantom['nmi']:.2f}, ARI {phantom['ari']:.2f}" if phantom else "")
        console.print(f"{d['stain']} {d['magnification']}: {d['tiles']} tiles → {d['folder']}"
                      f"{' (already done)' if d['reused'] else ''}{extra}")
