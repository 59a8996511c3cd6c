"""The unit of tiling work: one slide at one magnification → one tile store.

Steps: open the slide (µm/px from the file or the ``mpp`` column); skip the magnification if
it is finer than the scan; lay a grid of non-overlapping cells of ``tile_size`` pixels at the
target µm/px over the whole slide (cells over the edge are read as white glass, never
dropped); with QuPath annotations, skip cells outside their regions and count the pixels
outside as background in the tissue rule; skip cells that the low-resolution tissue map
shows to be empty; read each remaining
cell from the coarsest pyramid level at or above the target resolution and reduce it with area
averaging (anti-aliased); standardise luminosity (fitted once per slide); apply the tissue
rule; colour-normalise; encode; store.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lncr.allocator import keep_freed_memory
from lncr.fileio import partial_path
from lncr.provenance import tiling_versions
from lncr.slides.annotations import RegionRules, Regions, slide_regions
from lncr.slides.reader import Slide, open_slide
from lncr.tiling.luminosity import LuminosityStandardiser
from lncr.tiling.normalisers import StainNormaliser, load_normaliser
from lncr.tiling.store import TileStoreWriter, read_meta
from lncr.tiling.tissue import LowResTissueMask, background_fraction

#: Bump when the tiling algorithm changes in a way that changes stores.
STORE_FORMAT = 1
#: Tissue cells read to estimate a slide's source stains (``stain_estimate: slide``).
SOURCE_SAMPLE_TILES = 4
#: Relative scale error accepted without resampling.
RESAMPLE_TOLERANCE = 0.02
#: Resolution (µm/px) of the overview used for the tissue prefilter and the luminosity fit.
OVERVIEW_MPP = 8.0


def overview(slide: Slide) -> tuple[np.ndarray, float]:
    """The slide at about :data:`OVERVIEW_MPP` µm/px (256–2048 px on its longer side)."""
    side = max(slide.dimensions) * slide.mpp / OVERVIEW_MPP
    return slide.thumbnail(int(np.clip(side, 256, 2048)))


@dataclass(frozen=True)
class TileParams:
    """The settings that shape a store (any change re-tiles)."""

    tile_size: int = 512
    background_threshold: int = 225
    max_background_fraction: float = 0.5
    luminosity_standardise: bool = True
    luminosity_percentile: float = 95.0
    encoding: str = "png"
    jpeg_quality: int = 90
    png_compression: int = 1
    stain_estimate: str = "slide"  # or "tile"
    prefilter: bool = True


@dataclass(frozen=True)
class TileUnit:
    """One slide × magnification."""

    patient_id: str
    cohort: str
    stain: str
    slide: str  # path
    mpp_override: float | None
    magnification: str  # e.g. "20x"
    target_mpp: float
    store: str  # path of the store to write
    annotations: str = ""  # a QuPath GeoJSON export: only its regions are tiled
    rules: RegionRules = RegionRules()


@dataclass
class UnitResult:
    unit: TileUnit
    status: str  # ok | skipped-no-tissue | skipped-resolution | failed | reused
    slide_mpp: float | None = None
    grid_cells: int = 0
    prefiltered: int = 0  # cells skipped by the low-resolution map
    outside: int = 0  # cells outside the annotated regions (never read)
    rejected: int = 0  # cells read and dropped by the tissue rule
    kept: int = 0
    normaliser_fallbacks: int = 0
    seconds: float = 0.0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def settings_digest(unit: TileUnit, params: TileParams, reference: dict | None,
                    slide_mpp: float, regions: Regions | None = None,
                    content: str = "") -> str:
    """Hash of everything that determines the store's content (the slide by ``content``,
    :meth:`lncr.slides.reader.Slide.content_id`; the annotations by their content, rules and
    offset, not their path)."""
    path = Path(unit.slide)
    record = {"format": STORE_FORMAT, "params": asdict(params), "reference": reference,
              "target_mpp": unit.target_mpp, "slide_mpp": slide_mpp,
              # The slide by its name and content, not its folder or date: a study moved
              # elsewhere keeps its tiles; another slide copied over the file does not.
              "slide": [path.name, content]}
    if regions is not None:
        record["regions"] = {"sha256": regions.sha256, "rules": asdict(unit.rules),
                             "offset": list(regions.offset)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def grid(width: int, height: int, cell0: float) -> list[tuple[int, int]]:
    """Top-left corners (level 0) of non-overlapping cells covering the whole slide, edge cells
    included, row by row."""
    nx, ny = int(np.ceil(width / cell0 - 1e-9)), int(np.ceil(height / cell0 - 1e-9))
    return [(int(round(i * cell0)), int(round(j * cell0))) for j in range(ny) for i in range(nx)]


class CellReader:
    """Read grid cells of a slide at a target µm/px as ``tile_size`` RGB tiles."""

    def __init__(self, slide: Slide, target_mpp: float, tile_size: int):
        self.slide, self.tile_size = slide, tile_size
        self.downsample = target_mpp / slide.mpp  # level-0 pixels per target pixel
        self.cell0 = tile_size * self.downsample
        self.level = slide.level_for(self.downsample)
        self.level_ds = slide.level_downsamples[self.level]
        self.read_size = max(1, int(round(self.cell0 / self.level_ds)))
        if abs(self.read_size - tile_size) <= RESAMPLE_TOLERANCE * tile_size:
            # Within 2 % of the target (e.g. a 0.499 µm/px scan read at 0.5): read the tile
            # directly; resampling would blur it for no real gain in scale.
            self.read_size = tile_size
            self.cell0 = tile_size * self.level_ds

    def read(self, x: int, y: int) -> np.ndarray:
        region = self.slide.read(self.level, x, y, self.read_size, self.read_size)
        if self.read_size != self.tile_size:  # area averaging: anti-aliased reduction
            region = cv2.resize(region, (self.tile_size, self.tile_size),
                                interpolation=cv2.INTER_AREA)
        return region


def richest_first(mask: LowResTissueMask, cells: list[tuple[int, int]], cell0: float
                  ) -> list[tuple[int, int]]:
    """Cells ordered by how much tissue the overview shows (ties in grid order)."""
    return sorted(cells, key=lambda c: -mask.count(c[0], c[1], cell0))


def non_tissue(tile: np.ndarray, x: int, y: int, reader: CellReader, params: TileParams,
               regions: Regions | None) -> float:
    """The tile's fraction of background — of pixels outside the annotated area too."""
    inside = None
    if regions is not None:
        inside = regions.mask(x, y, params.tile_size, params.tile_size,
                              reader.cell0 / params.tile_size)
    return background_fraction(tile, params.background_threshold, inside)


def tissue_tiles(reader: CellReader, cells: list[tuple[int, int]], lum, params: TileParams,
                 limit: int, max_reads: int | None = None, regions: Regions | None = None
                 ) -> list[tuple[tuple[int, int], np.ndarray]]:
    """The first ``limit`` cells of ``cells`` that pass the tissue rule (after the luminosity
    step, inside ``regions``), reading at most ``max_reads`` cells; (corner, tile) pairs."""
    found = []
    for x, y in cells[:max_reads]:
        tile = reader.read(x, y)
        if lum is not None:
            tile = lum.transform(tile)
        if non_tissue(tile, x, y, reader, params, regions) <= params.max_background_fraction:
            found.append(((x, y), tile))
            if len(found) == limit:
                break
    return found


def intact(store: str | Path, result: UnitResult) -> bool:
    """Whether a finished store reads back whole (every CRC checks); a damaged one is noted
    in ``result.extra`` and cut again."""
    from lncr.tiling.store import CorruptTileStore, TileStore

    try:
        with TileStore(store) as s:
            bad = s.damaged()
    except CorruptTileStore as exc:
        bad = str(exc)
    if bad:
        result.extra["damaged_store"] = bad
    return bad is None


def tile_unit(unit: TileUnit, params: TileParams, reference: dict | None,
              force: bool = False) -> UnitResult:
    """Tile one slide at one magnification into ``unit.store``. Never raises: a failure is a
    result with ``status='failed'`` and the error message."""
    t0 = time.perf_counter()
    keep_freed_memory()
    result = UnitResult(unit, "failed")
    try:
        with open_slide(unit.slide, unit.mpp_override) as slide:
            result.slide_mpp = slide.mpp
            regions = (slide_regions(unit.annotations, slide.info.bounds_offset, unit.rules)
                       if unit.annotations else None)
            digest = settings_digest(unit, params, reference, slide.mpp, regions,
                                     slide.content_id())
            meta = read_meta(unit.store)
            if (not force and meta is not None and meta.get("settings_digest") == digest
                    and intact(unit.store, result)):
                result.status = "reused"
                for k in ("grid_cells", "prefiltered", "outside", "rejected", "kept",
                          "normaliser_fallbacks"):
                    setattr(result, k, int(meta.get("counts", {}).get(k, 0)))
                result.extra["stored_status"] = meta.get("status", "ok")
                return result
            _tile(slide, unit, params, reference, digest, result, regions)
    except Exception as exc:  # one bad slide must not stop the cohort: record and go on
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}"
        partial_path(Path(unit.store)).unlink(missing_ok=True)
    finally:
        result.seconds = round(time.perf_counter() - t0, 3)
    return result


@dataclass
class Candidates:
    """The grid cells worth reading, the overview's tissue map (None without the prefilter)
    and the counts of cells left out on the way."""

    cells: list[tuple[int, int]]
    mask: LowResTissueMask | None
    grid_cells: int
    outside: int  # outside the annotated regions
    prefiltered: int  # no tissue on the overview


def candidate_cells(slide: Slide, reader: CellReader, thumb: np.ndarray, thumb_ds: float,
                    threshold: int, regions: Regions | None, prefilter: bool) -> Candidates:
    """The grid cells inside the annotated area and (``prefilter``) showing tissue on the
    overview (``thumb``, ``thumb_ds`` level-0 pixels per pixel)."""
    cells = grid(*slide.dimensions, reader.cell0)
    total, area, outside = len(cells), None, 0
    if regions is not None:
        area = regions.mask(0, 0, thumb.shape[1], thumb.shape[0], thumb_ds)
        # Every overview pixel counts as tissue (threshold 255): the area alone decides.
        inside = LowResTissueMask(thumb, thumb_ds, 255, area)
        cells = [c for c in cells if inside.may_hold_tissue(c[0], c[1], reader.cell0)]
        outside = total - len(cells)
    mask, prefiltered = None, 0
    if prefilter:
        mask = LowResTissueMask(thumb, thumb_ds, threshold, area)
        kept = [c for c in cells if mask.may_hold_tissue(c[0], c[1], reader.cell0)]
        prefiltered, cells = len(cells) - len(kept), kept
    return Candidates(cells, mask, total, outside, prefiltered)


#: Threads that read, judge, normalise and encode grid cells (OpenSlide, OpenCV, NumPy and
#: ISA-L release the GIL), and the most cells in flight at once. Tiles still enter the store
#: in grid order.
TILE_THREADS = 2
IN_FLIGHT = 8

#: What a worker thread makes of one cell: (encoded tile or None when rejected, background
#: fraction, whether the normaliser fell back).
CellOutcome = tuple[bytes | None, float, bool]


def cell_outcome(x: int, y: int, store: TileStoreWriter, reader: CellReader, lum,
                 normaliser: StainNormaliser | None, params: TileParams,
                 regions: Regions | None) -> CellOutcome:
    """Read one grid cell, apply the luminosity step and the tissue rule, and normalise and
    encode it if kept. Touches no shared state, so cells run in threads."""
    tile = reader.read(x, y)
    if lum is not None:
        tile = lum.transform(tile)
    bg = non_tissue(tile, x, y, reader, params, regions)
    if bg > params.max_background_fraction:
        return None, bg, False
    fell_back = False
    if normaliser is not None:
        tile, fell_back = normaliser.apply(tile)
    return store.encode(tile), bg, fell_back


def write_tiles(store: TileStoreWriter, reader: CellReader, candidates: list[tuple[int, int]],
                lum, normaliser: StainNormaliser | None, params: TileParams,
                regions: Regions | None, result: UnitResult) -> int:
    """Read each candidate cell, apply the tissue rule, normalise and encode the kept tiles,
    :data:`TILE_THREADS` cells at a time; tiles enter the store in grid order, so the store
    is the same whatever the threads. Returns how many tiles the normaliser left unchanged."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    fallbacks, pending = 0, deque()

    def drain(limit: int) -> None:
        nonlocal fallbacks
        while len(pending) > limit:
            future, x, y = pending.popleft()
            data, bg, fell_back = future.result()
            if data is None:
                result.rejected += 1
                continue
            fallbacks += fell_back
            store.add_encoded(data, x, y, reader.cell0, bg)

    with ThreadPoolExecutor(TILE_THREADS) as pool:
        for x, y in candidates:
            pending.append((pool.submit(cell_outcome, x, y, store, reader, lum, normaliser,
                                        params, regions), x, y))
            drain(IN_FLIGHT)
        drain(0)
    return fallbacks


def _tile(slide: Slide, unit: TileUnit, params: TileParams, reference: dict | None,
          digest: str, result: UnitResult, regions: Regions | None) -> None:
    if unit.target_mpp < slide.mpp * 0.99:
        result.status = "skipped-resolution"
        result.error = (f"{unit.magnification} needs {unit.target_mpp:g} µm/px but the scan is "
                        f"{slide.mpp:g} µm/px; never upsampled")
        return
    reader = CellReader(slide, unit.target_mpp, params.tile_size)
    thumb, thumb_ds = overview(slide)
    found = candidate_cells(slide, reader, thumb, thumb_ds, params.background_threshold,
                            regions, params.prefilter)
    candidates, mask = found.cells, found.mask
    result.grid_cells, result.outside = found.grid_cells, found.outside
    result.prefiltered = found.prefiltered
    lum = None
    if params.luminosity_standardise:
        lum = LuminosityStandardiser(params.luminosity_percentile).fit(thumb)
    normaliser: StainNormaliser | None = load_normaliser(reference) if reference else None
    source_fitted = False
    if normaliser is not None and params.stain_estimate == "slide":
        # The source sample: the cells the overview shows to be richest in tissue, so that
        # nearly every cell read passes the rule.
        richest = (richest_first(mask, candidates, reader.cell0) if mask is not None
                   else candidates)
        sample = tissue_tiles(reader, richest, lum, params, SOURCE_SAMPLE_TILES,
                              max_reads=3 * SOURCE_SAMPLE_TILES, regions=regions)
        source_fitted = bool(sample) and normaliser.fit_source(
            np.concatenate([tile for _, tile in sample], axis=0))
    with TileStoreWriter(unit.store, params.encoding, params.jpeg_quality,
                         params.png_compression) as store:
        result.normaliser_fallbacks = write_tiles(store, reader, candidates, lum, normaliser,
                                                  params, regions, result)
        result.kept = len(store.rows)
        result.status = "ok" if result.kept else "skipped-no-tissue"
        store.meta = {
            "patient_id": unit.patient_id, "cohort": unit.cohort, "stain": unit.stain,
            "magnification": unit.magnification, "target_mpp": unit.target_mpp,
            "slide": unit.slide, "slide_mpp": slide.mpp, "backend": slide.backend,
            "read_level": reader.level, "read_size": reader.read_size,
            "settings_digest": digest, "settings": asdict(params), "reference": reference,
            "source_stains_per_slide": source_fitted,
            "annotations": regions.summary() if regions else None,
            "luminosity": lum.to_dict() if lum else None, "status": result.status,
            "counts": {"grid_cells": result.grid_cells, "prefiltered": result.prefiltered,
                       "outside": result.outside, "rejected": result.rejected,
                       "kept": result.kept, "normaliser_fallbacks": result.normaliser_fallbacks},
            "versions": tiling_versions(),
        }
