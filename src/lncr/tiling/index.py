"""The study's tiling plan and its index: one unit per usable slide × magnification, the
settings that shape a store, and ``index.csv``/``summary.csv``/``run.json`` — what both a
whole run (:mod:`lncr.tiling.run`) and the merge of shards (:mod:`lncr.tiling.shards`)
write."""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from lncr import __version__
from lncr.fileio import atomic_write_json
from lncr.layout import Layout, write_table
from lncr.study.config import MagnificationSettings, StudyConfig
from lncr.study.validate import Study
from lncr.tiling.unit import TileParams, TileUnit

INDEX_COLUMNS = ["patient_id", "cohort", "stain", "magnification", "target_mpp", "slide_mpp",
                 "status", "grid_cells", "outside_regions", "prefiltered", "rejected", "kept",
                 "normaliser_fallbacks", "seconds", "slide", "store", "annotations", "error"]


def tile_params(config: StudyConfig) -> TileParams:
    t = config.tiling
    return TileParams(tile_size=t.tile_size, background_threshold=t.background_threshold,
                      max_background_fraction=t.max_background_fraction,
                      luminosity_standardise=t.luminosity_standardise,
                      luminosity_percentile=t.luminosity_percentile, encoding=t.encoding,
                      jpeg_quality=t.jpeg_quality, png_compression=t.png_compression,
                      stain_estimate=t.stain_estimate, prefilter=t.prefilter)


def plan_units(study: Study, layout: Layout) -> list[TileUnit]:
    """One unit per usable slide × magnification, in a stable order."""
    cfg = study.config
    cohort = dict(zip(study.patients.patient_id, study.patients.cohort))
    units = []
    for row in study.slides[study.slides.ok].sort_values(["patient_id", "stain"]).itertuples():
        if row.patient_id not in cohort:
            continue
        for power in cfg.magnification.powers:
            mag = MagnificationSettings.label(power)
            units.append(TileUnit(
                patient_id=row.patient_id, cohort=cohort[row.patient_id], stain=row.stain,
                slide=row.path, mpp_override=None if pd.isna(row.mpp) else float(row.mpp),
                magnification=mag, target_mpp=cfg.magnification.mpp(power),
                store=str(layout.tile_store(row.stain, mag, row.patient_id)),
                annotations=row.annotations, rules=cfg.annotations.rules()))
    return units


def summarise(index: pd.DataFrame) -> pd.DataFrame:
    """Slides and tiles per stain × magnification × cohort."""
    ok = index[index.status == "ok"]
    out = ok.groupby(["stain", "magnification", "cohort"]).agg(
        slides=("patient_id", "nunique"), tiles=("kept", "sum"),
        tiles_per_slide=("kept", "mean")).reset_index()
    out["tiles_per_slide"] = out["tiles_per_slide"].round(1)
    return out


def write_index(study: Study, layout: Layout, index: pd.DataFrame, seconds: float,
                workers: int | None, reference_errors: dict[str, str],
                shards: int | None = None) -> None:
    """``index.csv``, ``summary.csv`` and ``run.json`` of the whole study."""
    cfg = study.config
    layout.write_tiles_index(index)
    write_table(layout.tiles_summary, summarise(index))
    statuses = index.status.value_counts().to_dict()
    atomic_write_json(layout.tiles_record, {
        "lncr_version": __version__, "settings": asdict(tile_params(cfg)),
        "normalisation": {s: cfg.tiling.method_for(s) for s in cfg.stains},
        "magnifications": {MagnificationSettings.label(p): cfg.magnification.mpp(p)
                           for p in cfg.magnification.powers},
        "units": len(index), "statuses": {k: int(v) for k, v in statuses.items()},
        "tiles": int(index.kept.sum()), "seconds": round(seconds, 2),
        "annotated_slides": int(index[index.annotations.fillna("") != ""].groupby(
            ["patient_id", "stain"]).ngroups),
        "workers": workers, "shards": shards, "reference_errors": reference_errors})
