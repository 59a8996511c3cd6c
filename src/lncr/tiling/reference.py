"""Per-stain colour references, fitted on development-cohort tiles only.

For each stain whose ``tiling.normalisation`` is not ``none``, the reference is either

- a user-given image (``tiling.reference_images: {HE: ref.png}``), or
- chosen automatically: up to :data:`REFERENCE_SLIDES` development slides of the stain (picked
  with ``split.seed`` from the sorted list), up to :data:`TILES_PER_SLIDE` tissue tiles each at
  the reference magnification (the middle of ``magnification.powers``), luminosity-standardised
  like every tile, stacked into one mosaic, and the normaliser fitted on it.

External-cohort slides never contribute. The fitted reference is written to
``tiles/norm/<stain>.json`` with the tiles it used, and reused unchanged (for every cohort) until
a setting that shapes it changes. A record marked ``"fixed"`` (a model bundle's reference,
placed by ``lncr apply``) is always used as it is: new slides are never fitted on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from lncr import __version__
from lncr.errors import BadInput
from lncr.fileio import atomic_save_image, atomic_write_json
from lncr.layout import Layout
from lncr.slides.annotations import RegionRules, slide_regions
from lncr.slides.reader import open_slide
from lncr.tiling.luminosity import LuminosityStandardiser
from lncr.tiling.normalisers import make_normaliser
from lncr.tiling.unit import (
    CellReader,
    TileParams,
    candidate_cells,
    overview,
    richest_first,
    tissue_tiles,
)

REFERENCE_SLIDES = 8
TILES_PER_SLIDE = 4


class NormalisationReferenceError(BadInput):
    """A stain's colour reference cannot be fitted."""


def _digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sample_tiles(slide_path: str, mpp_override: float | None, target_mpp: float,
                  params: TileParams, lum_on: bool, annotations: str = "",
                  rules: RegionRules = RegionRules()
                  ) -> tuple[list[np.ndarray], list[list[int]]]:
    with open_slide(slide_path, mpp_override) as slide:
        if target_mpp < slide.mpp * 0.99:
            return [], []
        regions = (slide_regions(annotations, slide.info.bounds_offset, rules)
                   if annotations else None)
        reader = CellReader(slide, target_mpp, params.tile_size)
        thumb, ds = overview(slide)
        cand = candidate_cells(slide, reader, thumb, ds, params.background_threshold, regions,
                               prefilter=True)
        lum = LuminosityStandardiser(params.luminosity_percentile).fit(thumb) if lum_on else None
        found = tissue_tiles(reader, richest_first(cand.mask, cand.cells, reader.cell0), lum,
                             params, TILES_PER_SLIDE, regions=regions)
        return [tile for _, tile in found], [list(xy) for xy, _ in found]


def _slide_key(path: str, annotations: str) -> list:
    """What identifies one slide's part in a reference: its name and content (size, first
    and last MiB), and its annotations' content (when it has some)."""
    from lncr.fileio import file_ends_sha256

    key: list = [Path(path).name, file_ends_sha256(Path(path))]
    if annotations and Path(annotations).is_file():
        key.append(hashlib.sha256(Path(annotations).read_bytes()).hexdigest()[:16])
    return key


def fit_reference(stain: str, method: str, slides: list[tuple[str, str, float | None, str]],
                  target_mpp: float, params: TileParams, seed: int, layout: Layout,
                  reference_image: Path | None = None,
                  rules: RegionRules = RegionRules()) -> dict | None:
    """Fit (or reuse) the reference of one stain; returns its record (``None`` for ``none``).

    ``slides`` are (patient_id, path, mpp override, annotation file or "") of **development**
    patients only (tiles come from inside their annotated regions); the record and an image
    of the reference go to ``layout.norm_reference/norm_image(stain)``.
    """
    if method == "none":
        return None
    spec = {"stain": stain, "method": method, "target_mpp": target_mpp, "seed": seed,
            "params": asdict(params),
            "slides": sorted(_slide_key(s[1], s[3]) for s in slides if Path(s[1]).exists()),
            "reference_image": str(reference_image) if reference_image else None,
            "format": 1}
    if any(s[3] for s in slides):
        spec["region_rules"] = asdict(rules)
    digest = _digest(spec)
    path = layout.norm_reference(stain)
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("digest") == digest or old.get("fixed"):
            return old["reference"]
    if reference_image is not None:
        image = np.asarray(Image.open(reference_image).convert("RGB"))
        if params.luminosity_standardise:
            image = LuminosityStandardiser(params.luminosity_percentile).fit(image).transform(image)
        used = [{"image": str(reference_image)}]
    else:
        ordered = sorted(slides, key=lambda s: s[1])
        rng = np.random.default_rng(seed)
        picks = [ordered[i] for i in sorted(rng.permutation(len(ordered))[:REFERENCE_SLIDES])]
        tiles, used = [], []
        for pid, slide_path, mpp, annotations in picks:
            try:
                got, coords = _sample_tiles(slide_path, mpp, target_mpp, params,
                                            params.luminosity_standardise, annotations, rules)
            except Exception:  # an unreadable slide is reported by its own tiling unit
                continue
            tiles += got
            used += [{"patient_id": pid, "slide": slide_path, "x": x, "y": y} for x, y in coords]
        if not tiles:
            raise NormalisationReferenceError(f"no development {stain} slide gave a tissue tile at "
                                 f"{target_mpp:g} µm/px to fit the {method} reference; set "
                                 f"tiling.reference_images.{stain} or tiling.normalisation."
                                 f"{stain}: none")
        image = np.concatenate(tiles, axis=0)
    normaliser = make_normaliser(method)
    try:
        normaliser.fit(image)
    except Exception as exc:
        raise NormalisationReferenceError(f"cannot fit the {method} reference of {stain}: {exc}") from exc
    reference = normaliser.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"digest": digest, "spec": spec, "reference": reference,
                             "tiles_used": used, "lncr_version": __version__})
    atomic_save_image(np.ascontiguousarray(image[: min(len(image), 4 * params.tile_size)]),
                      layout.norm_image(stain))
    return reference
