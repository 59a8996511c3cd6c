"""QC thumbnails of a tiled study: ``tiles/qc/<patient>_<stain>.png``, each slide's overview
with the kept tiles of every magnification outlined (one colour each) and its annotated
regions (yellow: used, magenta: left out). Drawn in worker processes, one slide each; a
thumbnail newer than all its slide's stores is kept (resume)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from lncr.fileio import atomic_save_image
from lncr.layout import Layout
from lncr.slides.annotations import RegionRules
from lncr.tiling.store import TileStore
from lncr.workers import process_pool

QC_COLOURS = [(31, 119, 180), (44, 160, 44), (214, 39, 40), (148, 103, 189), (255, 127, 14)]
#: QC outline colours of the annotated regions: included (yellow), excluded (magenta).
REGION_COLOURS = {"include": (230, 180, 0), "exclude": (200, 0, 200)}


def _fresh(out: Path, group: pd.DataFrame) -> bool:
    stores = [Path(s) for s in group[group.status == "ok"].store if Path(s).exists()]
    return out.exists() and bool(stores) and all(
        out.stat().st_mtime_ns >= s.stat().st_mtime_ns for s in stores)


def qc_thumbnails(layout: Layout, index: pd.DataFrame, magnifications: list[str],
                  rules: RegionRules, workers: int | None = 1,
                  progress: Callable[[str, int, int], None] | None = None) -> None:
    """Draw every slide's QC thumbnail that is not fresh, in ``workers`` processes."""
    layout.tiles_qc.mkdir(parents=True, exist_ok=True)
    groups = list(index.groupby(["patient_id", "stain"]))
    jobs = [(layout.qc_image(pid, stain), pid, stain, group) for (pid, stain), group in groups
            if not _fresh(layout.qc_image(pid, stain), group)]
    done = len(groups) - len(jobs)
    n = min(workers or 1, len(jobs))
    if n <= 1:
        for out, pid, stain, group in jobs:
            draw_qc(out, pid, stain, group, magnifications, rules)
            done += 1
            if progress:
                progress(f"QC thumbnail {pid} {stain}", done, len(groups))
        return
    with process_pool(n) as pool:
        futures = {pool.submit(draw_qc, *job, magnifications, rules): job for job in jobs}
        for future in as_completed(futures):
            future.result()
            done += 1
            if progress:
                _, pid, stain, _ = futures[future]
                progress(f"QC thumbnail {pid} {stain}", done, len(groups))


def _draw_regions(draw: ImageDraw.ImageDraw, annotations: str, slide, ds: float,
                  rules: RegionRules) -> None:
    """Outline a slide's annotated regions on its thumbnail (downsample ``ds``)."""
    from lncr.slides.annotations import slide_regions

    regions = slide_regions(annotations, slide.info.bounds_offset, rules)
    for kind, polys in (("include", regions.include), ("exclude", regions.exclude)):
        for poly in polys:
            for ring in poly:
                draw.line([tuple(p) for p in (ring / ds).tolist()] + [tuple(ring[0] / ds)],
                          fill=REGION_COLOURS[kind], width=3)


def draw_qc(out: Path, pid: str, stain: str, group: pd.DataFrame, magnifications: list[str],
            rules: RegionRules) -> None:
    """One slide's thumbnail with its regions and the kept tiles of each magnification
    (``group``: the slide's rows of the tile index); nothing for a slide that cannot be
    opened (the index already says why)."""
    from lncr.slides.reader import open_slide

    annotations = str(group.annotations.iloc[0] or "")
    mpp = group.slide_mpp.dropna().iloc[0] if group.slide_mpp.notna().any() else None
    try:
        with open_slide(group.slide.iloc[0], mpp) as slide:
            thumb, ds = slide.thumbnail(1200)
            image = Image.fromarray(thumb)
            draw = ImageDraw.Draw(image)
            if annotations:
                _draw_regions(draw, annotations, slide, ds, rules)
    except Exception:
        return  # the index already records why this slide failed
    _draw_tiles(draw, group, magnifications, ds)
    legend = "  ".join(f"{mag}: {int(group[group.magnification == mag].kept.sum())}"
                       for mag in magnifications)
    regions = "  regions: yellow in, magenta out" if annotations else ""
    draw.text((4, 4), f"{pid} {stain}  {legend}{regions}", fill=(0, 0, 0))
    atomic_save_image(np.asarray(image), out)


def _draw_tiles(draw: ImageDraw.ImageDraw, group: pd.DataFrame, magnifications: list[str],
                ds: float) -> None:
    """Outline the kept tiles of each magnification, one colour and inset each."""
    for k, mag in enumerate(magnifications):
        row = group[group.magnification == mag]
        if row.empty or row.status.iloc[0] != "ok":
            continue
        colour = QC_COLOURS[k % len(QC_COLOURS)]
        with TileStore(row.store.iloc[0]) as store:
            for c in store.coords.itertuples():
                x0, y0, size = c.x / ds, c.y / ds, c.size0 / ds
                draw.rectangle([x0 + k, y0 + k, x0 + size - 1 - k, y0 + size - 1 - k],
                               outline=colour, width=1)
