"""``lncr explain heatmap``: tile scores, influential tiles, heatmaps and GeoJSON for the
study's final models.

For every finished final model (``final/models.csv``) and every slide of the chosen patients,
writes under ``<output_dir>/explain/``:

- ``scores/<stain>/<mag>/<patient>.csv`` — every tile: index, level-0 x, y and size, chunk,
  attention, relative attention, leave-one-out effect, chunk probability
  (:mod:`lncr.explain.scores`; shared with ``gradcam`` and ``cluster``);
- ``heatmaps/<stain>/<mag>/<patient>.png`` — relative attention painted on the thumbnail;
- ``geojson/<stain>/<mag>/<patient>.geojson`` — the tiles as QuPath detections;
- ``influential.csv`` — the ``explain.top_k`` influential tiles of every slide, ranked, with
  the slide's probability, cohort, split and label;
- ``explain.json`` — the models, checkpoint, chunk size, top-k and package versions.

Files are written atomically; a slide whose files were made by the same model, checkpoint and
tile store (their ``.key.json``) is skipped on a re-run, any other is redrawn.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from lncr.explain.models import (
    FinalModel,
    cached_scores,
    final_models_for,
    is_fresh,
    slide_paths,
    stamp,
)
from lncr.fileio import atomic_write_json, atomic_write_text
from lncr.layout import Layout, write_table
from lncr.locks import output_lock
from lncr.sharding import MERGE_WAIT, Shard
from lncr.study.validate import Study


def influential_rows(fm: FinalModel, entry, scores: pd.DataFrame, probability: float,
                     top_k: int) -> pd.DataFrame:
    """The slide's ``top_k`` influential tiles for the outcome explained (``explain.target``,
    rule ``explain.influence``), ranked, with the slide's identity."""
    from lncr.explain.scores import influential

    outcome = fm.outcome(probability)
    top = influential(scores, top_k, fm.cfg.explain.influence, outcome)
    top.insert(0, "rank", range(1, len(top) + 1))
    return top.assign(patient_id=entry.patient_id, stain=fm.stain,
                      magnification=fm.magnification, split=entry.split, label=entry.label,
                      slide_probability=probability,
                      explained="CR" if outcome == 1 else "non-CR")


def qupath_frame(slide: str, crop_to_bounds: bool) -> tuple[float, float]:
    """Where QuPath's pixel (0, 0) lies in the slide's level 0 (``openslide.bounds-x/y``:
    QuPath crops MIRAX slides to their scanned area), so that overlays land on the tissue."""
    from lncr.slides.reader import SlideReadError, probe_slide

    if not crop_to_bounds:
        return (0.0, 0.0)
    try:
        return probe_slide(slide, decode=False).bounds_offset
    except SlideReadError:  # the slide moved since tiling: its stores still hold the tiles
        return (0.0, 0.0)


def explain_slide(fm: FinalModel, e, layout: Layout, slide: str, compute: bool = True
                  ) -> pd.DataFrame:
    """Score one slide (or, without ``compute``, read its cached scores), write its GeoJSON
    (influential tiles classified for QuPath) and heatmap unless they are fresh; its
    influential tiles."""
    from lncr.explain.heatmap import geojson, heatmap_figure

    png = layout.explain_file("heatmaps", fm.stain, fm.magnification, e.patient_id, ".png")
    geo = layout.explain_file("geojson", fm.stain, fm.magnification, e.patient_id, ".geojson")
    scores, probability = cached_scores(fm, e, compute)
    top = influential_rows(fm, e, scores, probability, fm.cfg.explain.top_k)
    name = f"{e.patient_id} {fm.stain} {fm.magnification}"
    key = fm.key(e)
    ex = fm.cfg.explain
    offset = qupath_frame(slide, fm.cfg.annotations.crop_to_bounds)
    geo_key = {**key, "geojson": 3, "top_k": ex.top_k, "influence": ex.influence,
               "target": ex.target, "threshold": fm.threshold, "offset": list(offset)}
    if not is_fresh(geo, geo_key):
        geo.parent.mkdir(parents=True, exist_ok=True)
        classes = {int(i): f"lncr influential ({x})" for i, x in zip(top["index"], top.explained)}
        atomic_write_text(geo, json.dumps(geojson(scores, name, classes, offset)))
        stamp(geo, geo_key)
    if not is_fresh(png, key):
        heatmap_figure(slide, scores, png, f"{name}: P(CR) {probability:.2f}, "
                       + (f"label {e.label} ({e.split})" if e.label is not None
                          else f"outcome unknown ({e.split})"))
        stamp(png, key)
    return top


def write_geojson_index(layout: Layout, table: pd.DataFrame, slides: dict) -> None:
    """``explain/geojson/index.tsv``: slide file name, patient, stain, magnification and the
    GeoJSON file (relative to that folder) of every slide explained so far (this call's rows
    replace earlier ones of the same slide), for QuPath's import script (docs/explain.md).
    Tab-separated: identifiers cannot hold tabs."""
    rows = []
    for (stain, mag, pid), _ in table.groupby(["stain", "magnification", "patient_id"]):
        geo = layout.explain_file("geojson", stain, mag, pid, ".geojson")
        rows.append({"image": Path(slides[(pid, stain)]).name, "patient_id": pid,
                     "stain": stain, "magnification": mag,
                     "geojson": geo.relative_to(layout.explain_dir / "geojson").as_posix()})
    folder = layout.explain_dir / "geojson"
    folder.mkdir(parents=True, exist_ok=True)
    index = pd.DataFrame(rows)
    if (folder / "index.tsv").exists():
        earlier = pd.read_csv(folder / "index.tsv", sep="\t", dtype=str, keep_default_na=False)
        index = pd.concat([earlier, index]).drop_duplicates(
            ["patient_id", "stain", "magnification"], keep="last")
    atomic_write_text(folder / "index.tsv", index.to_csv(sep="\t", index=False))


INFLUENTIAL_FIRST = ["stain", "magnification", "patient_id", "split", "label",
                     "slide_probability", "rank"]


def explain_heatmaps(study: Study, cohort: str = "all", patients: list[str] | None = None,
                     device: str = "auto",
                     progress: Callable[[str], None] | None = None,
                     thresholds: dict[str, float] | None = None) -> pd.DataFrame:
    """Score, map and export every selected slide of every final model; return the
    influential tiles. ``thresholds`` (model → threshold) replaces the study's own."""
    with output_lock(study.config.output_dir, "lncr explain heatmap"):
        return _explain_heatmaps(study, cohort, patients, device, progress, thresholds)


def explain_heatmaps_shard(study: Study, shard: Shard, cohort: str = "all",
                           patients: list[str] | None = None, device: str = "auto",
                           progress: Callable[[str], None] | None = None) -> str:
    """``lncr explain heatmap --shard i/n``: score and map the slides of every n-th selected
    patient under a lock of this shard alone; then, when every selected slide has its cached
    scores, write the influential tiles and the GeoJSON index of them all. Returns "" when it
    did, else why not (another shard has not finished, or the folder stayed busy)."""
    from lncr.explain.models import NotExplainedYet
    from lncr.locks import OutputBusy

    chosen = study.patients[(cohort == "all") | (study.patients.cohort == cohort)]
    ids = sorted(p for p in chosen.patient_id if patients is None or p in set(patients))
    mine = shard.select(ids, key=lambda p: p)
    folder = Layout(study.config.output_dir).explain_dir / "shards" / shard.name
    if mine:
        with output_lock(folder, f"lncr explain heatmap --shard {shard}"):
            explain_slides(study, slide_paths(study.config.output_dir), cohort, mine, device,
                           progress)
    try:
        with output_lock(study.config.output_dir, "lncr explain heatmap (merge)", MERGE_WAIT):
            _explain_heatmaps(study, cohort, patients, device, None, None, compute=False)
    except (NotExplainedYet, OutputBusy) as exc:
        return str(exc)
    return ""


def explain_slides(study: Study, slides: dict[tuple[str, str], str], cohort: str,
                   patients: list[str] | None, device: str,
                   progress: Callable[[str], None] | None = None,
                   thresholds: dict[str, float] | None = None, compute: bool = True
                   ) -> tuple[list[pd.DataFrame], list[dict]]:
    """Score, map and export every selected slide of every final model (:func:`explain_slide`;
    ``slides``: (patient, stain) → slide file); the influential tiles of each slide, and the
    models used."""
    layout = Layout(study.config.output_dir)
    rows, used = [], []
    for fm in final_models_for(study, cohort, patients, device, thresholds=thresholds):
        used.append({"stain": fm.stain, "magnification": fm.magnification, "run": fm.folder,
                     "epoch": fm.epoch, "slides": len(fm.entries)})
        for e in fm.entries:
            rows.append(explain_slide(fm, e, layout, slides[(e.patient_id, fm.stain)],
                                      compute))
            if progress:
                progress(f"{fm.stain} {fm.magnification} {e.patient_id}")
    return rows, used


def _explain_heatmaps(study: Study, cohort: str, patients: list[str] | None, device: str,
                      progress: Callable[[str], None] | None,
                      thresholds: dict[str, float] | None, compute: bool = True
                      ) -> pd.DataFrame:
    from lncr.provenance import package_versions

    slides = slide_paths(study.config.output_dir)
    rows, used = explain_slides(study, slides, cohort, patients, device, progress, thresholds,
                                compute)
    if not rows:
        raise ValueError("no slides to explain: check --cohort/--patient and that `lncr sweep` "
                         "trained final models")
    table = pd.concat(rows, ignore_index=True)
    table = table[INFLUENTIAL_FIRST + [c for c in table.columns if c not in INFLUENTIAL_FIRST]]
    cfg, layout = study.config, Layout(study.config.output_dir)
    write_table(layout.influential, table)
    write_geojson_index(layout, table, slides)
    atomic_write_json(layout.explain_record, {
        "models": used, "checkpoint": cfg.evaluation.checkpoint, "top_k": cfg.explain.top_k,
        "influence": cfg.explain.influence, "target": cfg.explain.target,
        "cohort": cohort, "patients": patients, **study.source,
        "versions": package_versions("torch", "torchvision", "numpy", "matplotlib")})
    table.attrs["folder"] = str(layout.explain_dir)
    return table
