"""``lncr tile``: tile every slide of a study at every magnification.

Writes, under ``<output_dir>/tiles/``::

    <stain>/<mag>/<patient>.tiles.zip   one store per slide × magnification (see store.py)
    norm/<stain>.json                   fitted colour reference (+ <stain>-reference.png)
    index.csv                           every slide × magnification: status, counts
                                        (cells outside annotated regions too), error
    summary.csv                         tiles per stain × magnification × cohort
    qc/<patient>_<stain>.png            thumbnail with kept tiles outlined per magnification
                                        and the annotated regions (qc.py)
    run.json                            settings, versions, totals and timing of the last run

Units run in a process pool; a failing slide is recorded (``status=failed`` with the error)
and the others go on. Finished stores whose settings digest matches are reused, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lncr.errors import BadInput
from lncr.fileio import atomic_save_image, atomic_write_bytes
from lncr.identifiers import file_name
from lncr.layout import Layout
from lncr.locks import locks_output, output_lock
from lncr.sharding import Shard
from lncr.study.validate import Study
from lncr.tiling.index import INDEX_COLUMNS, plan_units, tile_params, write_index
from lncr.tiling.qc import qc_thumbnails
from lncr.tiling.reference import NormalisationReferenceError, fit_reference
from lncr.tiling.shards import clear_parts, try_merge, write_part
from lncr.tiling.store import TileStore
from lncr.tiling.unit import TileParams, TileUnit, UnitResult, tile_unit
from lncr.workers import process_pool


class TilingError(BadInput):
    """The study cannot be tiled (its tables have errors)."""


@dataclass
class TilingReport:
    folder: Path
    results: list[UnitResult] = field(default_factory=list)
    seconds: float = 0.0
    workers: int | None = None
    reference_errors: dict[str, str] = field(default_factory=dict)
    # A shard's run: "" when it merged every shard's part into index.csv, else why not.
    merge_note: str | None = None

    @property
    def failed(self) -> list[UnitResult]:
        return [r for r in self.results if r.status == "failed"]

    def index(self) -> pd.DataFrame:
        rows = []
        for r in self.results:
            status = r.extra.get("stored_status", r.status) if r.status == "reused" else r.status
            rows.append({"patient_id": r.unit.patient_id, "cohort": r.unit.cohort,
                         "stain": r.unit.stain, "magnification": r.unit.magnification,
                         "target_mpp": r.unit.target_mpp, "slide_mpp": r.slide_mpp,
                         "status": status, "grid_cells": r.grid_cells,
                         "outside_regions": r.outside, "prefiltered": r.prefiltered, "rejected": r.rejected, "kept": r.kept,
                         "normaliser_fallbacks": r.normaliser_fallbacks, "seconds": r.seconds,
                         "slide": r.unit.slide, "store": r.unit.store,
                         "annotations": r.unit.annotations, "error": r.error})
        return pd.DataFrame(rows, columns=INDEX_COLUMNS)


def _references(study: Study, layout: Layout, params: TileParams
                ) -> tuple[dict[str, dict | None], dict[str, str]]:
    """Fit (or reuse) each stain's reference on development slides; errors per stain."""
    cfg = study.config
    powers = cfg.magnification.powers
    ref_mpp = cfg.magnification.mpp(powers[len(powers) // 2])
    dev = set(study.patients[study.patients.cohort == "development"].patient_id)
    refs: dict[str, dict | None] = {}
    errors: dict[str, str] = {}
    ok = study.slides[study.slides.ok]
    for stain in cfg.stains:
        rows = ok[(ok.stain == stain) & ok.patient_id.isin(dev)]
        slides = [(r.patient_id, r.path, None if pd.isna(r.mpp) else float(r.mpp),
                   r.annotations) for r in rows.itertuples()]
        try:
            refs[stain] = fit_reference(stain, cfg.tiling.method_for(stain), slides, ref_mpp,
                                        params, cfg.split.seed, layout,
                                        cfg.tiling.reference_images.get(stain),
                                        cfg.annotations.rules())
        except NormalisationReferenceError as exc:
            errors[stain] = str(exc)
    return refs, errors


def tile_study(study: Study, workers: int | None = None, force: bool = False,
               progress: Callable[[UnitResult, int, int], None] | None = None,
               shard: Shard | None = None,
               qc_progress: Callable[[str, int, int], None] | None = None) -> TilingReport:
    """Tile every slide × magnification of a study (the Python API of ``lncr tile``);
    ``progress(result, done, total)`` after each unit, ``qc_progress(slide, done, total)``
    after each QC thumbnail.

    With ``shard`` (``Shard(i, n)``: ``lncr tile --shard i/n``, 0 ≤ i < n) only every n-th
    slide is tiled, under a lock of that shard alone, so that n machines sharing the output
    folder tile a study together; each writes its part of the index, and the last to finish
    merges them into ``index.csv`` (:func:`lncr.tiling.shards.merge_shards`)."""
    layout = Layout(study.config.output_dir)
    units = plan_units(study, layout)
    if shard is None:
        with output_lock(study.config.output_dir, "lncr tile"):
            report = _run_units(study, layout, units, workers, force, progress)
            index = report.index()
            write_index(study, layout, index, report.seconds, report.workers,
                        report.reference_errors)
            qc_thumbnails(layout, index, list(study.config.magnification_labels()),
                          study.config.annotations.rules(), report.workers, qc_progress)
            clear_parts(layout)
        return report
    with output_lock(layout.tiles_dir / "shards" / shard.name, f"lncr tile --shard {shard}"):
        mine = shard.select(units, key=lambda u: (u.patient_id, u.stain))
        report = _run_units(study, layout, mine, workers, force, progress)
        index = report.index()
        qc_thumbnails(layout, index, list(study.config.magnification_labels()),
                      study.config.annotations.rules(), report.workers, qc_progress)
        write_part(layout, shard, index, report.seconds, report.workers,
                   report.reference_errors)
    report.merge_note = try_merge(study, units)
    return report


def _run_units(study: Study, layout: Layout, units: list[TileUnit], workers: int | None,
               force: bool, progress: Callable[[UnitResult, int, int], None] | None
               ) -> TilingReport:
    """Fit the references, then tile ``units`` in a process pool; results in plan order."""
    t0 = time.perf_counter()
    cfg = study.config
    layout.tiles_dir.mkdir(parents=True, exist_ok=True)
    params = tile_params(cfg)
    refs, ref_errors = _references(study, layout, params)
    n = workers if workers else (cfg.tiling.workers or os.cpu_count() or 1)
    report = TilingReport(layout.tiles_dir, workers=n, reference_errors=ref_errors)

    def done(result: UnitResult) -> None:
        report.results.append(result)
        if progress:
            progress(result, len(report.results), len(units))

    runnable = []
    for unit in units:
        if unit.stain in ref_errors:
            done(UnitResult(unit, "failed", error=ref_errors[unit.stain]))
        else:
            runnable.append(unit)
    if n <= 1 or len(runnable) <= 1:
        for unit in runnable:
            done(tile_unit(unit, params, refs.get(unit.stain), force))
    else:
        with process_pool(min(n, len(runnable))) as pool:
            futures = [pool.submit(tile_unit, u, params, refs.get(u.stain), force) for u in runnable]
            for fut in as_completed(futures):
                done(fut.result())
    order = {(u.patient_id, u.stain, u.magnification): i for i, u in enumerate(units)}
    report.results.sort(key=lambda r: order[(r.unit.patient_id, r.unit.stain, r.unit.magnification)])
    report.seconds = time.perf_counter() - t0
    return report


@locks_output
def export_tiles(study: Study, out: Path) -> int:
    """Write every kept tile as ``<patient>/<stain>/<mag>/<x>_<y>.png`` (the original scripts'
    layout). Returns the number of files written."""
    index = Layout(study.config.output_dir).read_tiles_index()
    written = 0
    for row in index[index.status == "ok"].itertuples():
        target = out / file_name(row.patient_id) / file_name(row.stain) / row.magnification
        target.mkdir(parents=True, exist_ok=True)
        with TileStore(row.store) as store:
            for i, c in enumerate(store.coords.itertuples()):
                path = target / f"{c.x}_{c.y}.png"
                if store.meta.get("encoding") == "png":
                    atomic_write_bytes(path, store.raw(i))
                else:
                    atomic_save_image(store[i], path)
                written += 1
    return written
