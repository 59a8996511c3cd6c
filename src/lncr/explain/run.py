"""``lncr explain heatmap``: tile scores, influential tiles, heatmaps and GeoJSON for the
study's final models.

For every finished final model (``final/models.csv``) and every slide of the chosen patients,
writes under ``<output_dir>/explain/``:

- ``scores/<stain>/<mag>/<patient>.csv`` — every tile: index, level-0 x, y and size, chunk,
  attention, relative attention, leave-one-out effect, chunk probability
  (:mod:`lncr.explain.scores`);
- ``heatmaps/<stain>/<mag>/<patient>.png`` — relative attention painted on the thumbnail;
- ``geojson/<stain>/<mag>/<patient>.geojson`` — the tiles as QuPath detections;
- ``influential.csv`` — the ``explain.top_k`` influential tiles of every slide, ranked, with
  the slide's probability, cohort, split and label;
- ``explain.json`` — the models, checkpoint, chunk size, top-k and package versions.

Files are written atomically; a slide whose three files exist is skipped on a re-run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from lncr.fileio import atomic_write_json, atomic_write_text


def _slide_paths(output_dir: Path) -> dict[tuple[str, str], str]:
    index = pd.read_csv(output_dir / "tiles" / "index.csv", dtype={"patient_id": str})
    return {(r.patient_id, r.stain): r.slide for r in index.itertuples()}


def explain_heatmaps(study_yaml: str | Path, overrides: list[str] | None = None,
                     cohort: str = "all", patients: list[str] | None = None,
                     device: str = "auto",
                     progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Score, map and export every selected slide of every final model; return the
    influential tiles."""
    from lncr.evaluation.final_predictions import final_models
    from lncr.explain.heatmap import geojson, heatmap_figure
    from lncr.explain.scores import influential, slide_scores
    from lncr.provenance import package_versions
    from lncr.training.loop import study_entries
    from lncr.training.predict import load_run, select

    overrides = list(overrides or [])
    models = final_models(_output_dir(study_yaml, overrides))
    models = models[models.status == "done"]
    rows, used = [], []
    for m in models.itertuples():
        cfg, entries = study_entries(study_yaml, m.stain, m.magnification, overrides)
        model, config, inputs, epoch = load_run(m.folder, cfg.evaluation.checkpoint, device)
        chunk = config["settings"]["eval_tiles"]
        crop = config["geometry"]["crop"]
        chosen = [e for e in select(entries, cohort)
                  if patients is None or e.patient_id in set(patients)]
        slides = _slide_paths(cfg.output_dir)
        out = cfg.output_dir / "explain"
        used.append({"stain": m.stain, "magnification": m.magnification, "run": m.folder,
                     "epoch": epoch, "slides": len(chosen)})
        for e in chosen:
            rel = Path(m.stain) / m.magnification / e.patient_id
            csv = out / "scores" / rel.with_suffix(".csv")
            png = out / "heatmaps" / rel.with_suffix(".png")
            geo = out / "geojson" / rel.with_suffix(".geojson")
            if csv.exists() and png.exists() and geo.exists():
                scores = pd.read_csv(csv)
                probability = float(scores.groupby("chunk").chunk_probability.first().mean())
            else:
                scores, probability = slide_scores(model, inputs, e, crop, chunk)
                for path in (csv, png, geo):
                    path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(geo, json.dumps(geojson(scores, f"{e.patient_id} "
                                                          f"{m.stain} {m.magnification}")))
                heatmap_figure(slides[(e.patient_id, m.stain)], scores, png,
                               f"{e.patient_id} {m.stain} {m.magnification}: P(CR) "
                               f"{probability:.2f}, label {e.label} ({e.split})")
                atomic_write_text(csv, scores.to_csv(index=False))  # last: marks the slide done
            top = influential(scores, cfg.explain.top_k)
            top.insert(0, "rank", range(1, len(top) + 1))
            rows.append(top.assign(patient_id=e.patient_id, stain=m.stain,
                                   magnification=m.magnification, split=e.split,
                                   label=e.label, slide_probability=probability))
            if progress:
                progress(f"{m.stain} {m.magnification} {e.patient_id}")
    if not rows:
        raise ValueError("no slides to explain: check --cohort/--patient and that `lncr sweep` "
                         "trained final models")
    table = pd.concat(rows, ignore_index=True)
    first = ["stain", "magnification", "patient_id", "split", "label", "slide_probability",
             "rank"]
    table = table[first + [c for c in table.columns if c not in first]]
    out = cfg.output_dir / "explain"
    atomic_write_text(out / "influential.csv", table.to_csv(index=False))
    atomic_write_json(out / "explain.json", {
        "models": used, "checkpoint": cfg.evaluation.checkpoint, "top_k": cfg.explain.top_k,
        "cohort": cohort, "patients": patients, "study": str(Path(study_yaml).resolve()),
        "overrides": overrides,
        "versions": package_versions("torch", "torchvision", "numpy", "matplotlib")})
    table.attrs["folder"] = str(out)
    return table


def _output_dir(study_yaml: str | Path, overrides: list[str]) -> Path:
    from lncr.study.config import load_config

    return load_config(study_yaml, overrides).output_dir
