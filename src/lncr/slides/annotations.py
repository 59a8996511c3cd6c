"""A pathologist's regions from QuPath: GeoJSON annotations as the area of a slide to tile.

QuPath writes a slide's objects as GeoJSON (File → Export objects as GeoJSON, or
``exportAllObjectsToGeoJson`` in a script): a ``FeatureCollection`` — or, before QuPath 0.4, a
plain list of features — in the image's pixel coordinates. Here:

- Polygon and MultiPolygon *annotations* are regions. Detections, cells, tiles, points and
  lines are not (they are counted in ``skipped``).
- A region whose class matches one of ``exclude_classes`` (shell wildcards, case ignored:
  ``Ignore*``, ``Artefact``, ``Pen``…) is an **exclusion**: pen marks, folds, bubbles. Every
  other region is an **inclusion** (or only those matching ``include_classes`` when given).
- The area to tile is the union of the inclusions — or the whole slide when there are none —
  minus the union of the exclusions. Holes in a polygon are honoured.

QuPath opens MIRAX slides (and any format whose OpenSlide properties carry
``openslide.bounds-x/y``) cropped to the scanned area, so its pixel (0, 0) is OpenSlide's
(bounds-x, bounds-y). :func:`bounds_offset` gives that shift; regions are read in QuPath's
frame and :meth:`Regions.shifted` moves them into OpenSlide's level 0.

Rasterising is done with OpenCV's polygon filling (fast and exact enough at pixel scale);
no geometry library is needed for union and difference of masks.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lncr.errors import BadInput

#: Classes that mark an area to leave out, unless the study says otherwise.
DEFAULT_EXCLUDE = ("Ignore*", "Exclude*", "Artefact*", "Artifact*", "Pen*", "Fold*",
                   "Bubble*", "Blur*", "Out of focus")
#: Sub-pixel precision of the rasteriser (OpenCV's ``shift``): coordinates × 2**4.
_SHIFT = 4

Polygon = tuple[np.ndarray, ...]  # exterior ring, then holes; each (n, 2) float level-0 x, y


class AnnotationError(BadInput):
    """An annotation file cannot be used as tiling regions."""


@dataclass(frozen=True)
class RegionRules:
    """How annotation classes become regions, and whether QuPath's frame is shifted."""

    exclude_classes: tuple[str, ...] = DEFAULT_EXCLUDE
    include_classes: tuple[str, ...] | None = None  # None: every class not excluded
    crop_to_bounds: bool = True  # QuPath crops to openslide.bounds-x/y (MIRAX)

    def kind(self, name: str | None) -> str | None:
        """``exclude``, ``include`` or None (a class this study does not use)."""
        label = (name or "").casefold()
        if any(fnmatch.fnmatchcase(label, p.casefold()) for p in self.exclude_classes):
            return "exclude"
        if self.include_classes is None or any(
                fnmatch.fnmatchcase(label, p.casefold()) for p in self.include_classes):
            return "include"
        return None


@dataclass(frozen=True)
class Regions:
    """Include and exclude polygons of one slide, in level-0 pixels."""

    source: str
    sha256: str
    include: tuple[Polygon, ...]
    exclude: tuple[Polygon, ...]
    skipped: dict[str, int] = field(default_factory=dict)
    offset: tuple[float, float] = (0.0, 0.0)

    def shifted(self, dx: float, dy: float) -> Regions:
        """The same regions moved by (dx, dy) level-0 pixels."""
        d = np.array([dx, dy])
        move = lambda polys: tuple(tuple(r + d for r in p) for p in polys)  # noqa: E731
        return replace(self, include=move(self.include), exclude=move(self.exclude),
                       offset=(self.offset[0] + dx, self.offset[1] + dy))

    def mask(self, x0: float, y0: float, width: int, height: int, scale: float) -> np.ndarray:
        """Boolean ``height × width`` map of the area to tile, for pixels of ``scale`` level-0
        pixels whose grid starts at level-0 (x0, y0). A pixel belongs to a polygon when its
        centre does, or when the polygon's edge crosses it (OpenCV fills edge pixels): regions
        are exact to a pixel of the map."""
        import cv2

        out = np.zeros((height, width), np.uint8) if self.include else np.ones(
            (height, width), np.uint8)
        window = np.array([x0, y0, x0 + width * scale, y0 + height * scale])
        for polys, boxes, value in ((self.include, self._boxes[0], 1),
                                    (self.exclude, self._boxes[1], 0)):
            near = ~((boxes[:, 2] < window[0]) | (boxes[:, 0] > window[2])
                     | (boxes[:, 3] < window[1]) | (boxes[:, 1] > window[3]))
            for poly in (polys[k] for k in np.flatnonzero(near)):
                # Ring by ring (exterior 1, holes 0): filling them in one call would count
                # the holes' edge pixels as inside.
                inside = np.zeros_like(out)
                for k, ring in enumerate(poly):
                    local = clip_ring((ring - (x0, y0)) / scale - 0.5, width, height)
                    if len(local) < 3:
                        continue
                    pts = np.round(local * (1 << _SHIFT))
                    cv2.fillPoly(inside, [pts.astype(np.int32)], 0 if k else 1,
                                 lineType=cv2.LINE_8, shift=_SHIFT)
                out[inside.astype(bool)] = value
        return out.astype(bool)

    @functools.cached_property
    def _boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """The bounding boxes of the include and exclude polygons (one row each): a tile's
        mask rasterises only the polygons whose box meets it."""
        return tuple(np.array([_box(p) for p in polys], float).reshape(-1, 4)
                     for polys in (self.include, self.exclude))  # type: ignore[return-value]

    def bbox(self) -> tuple[float, float, float, float] | None:
        """(x0, y0, x1, y1) of every region, or None when there are none."""
        boxes = np.concatenate(self._boxes)
        if not len(boxes):
            return None
        return (*boxes[:, :2].min(0).tolist(), *boxes[:, 2:].max(0).tolist())

    def summary(self) -> dict:
        return {"file": self.source, "sha256": self.sha256, "include": len(self.include),
                "exclude": len(self.exclude), "skipped": dict(self.skipped),
                "offset": list(self.offset)}


def clip_ring(ring: np.ndarray, width: int, height: int, pad: float = 4.0) -> np.ndarray:
    """A ring in map pixels clipped to the map plus ``pad`` pixels (Sutherland–Hodgman
    against that box): what lies on the map is unchanged, and no coordinate is large enough
    to overflow OpenCV's fixed-point integers (a polygon drawn at ±3e9 px covers the map
    instead of vanishing). Written here because no dependency clips polygons; a ring already
    inside the box is returned as it is."""
    lo, hi = np.array([-pad, -pad]), np.array([width + pad, height + pad])
    if len(ring) == 0 or ((ring >= lo).all() and (ring <= hi).all()):
        return ring
    points = ring
    for axis, bound, keep_above in ((0, lo[0], True), (0, hi[0], False),
                                    (1, lo[1], True), (1, hi[1], False)):
        if len(points) == 0:
            break
        inside = points[:, axis] >= bound if keep_above else points[:, axis] <= bound
        out = []
        for i in range(len(points)):
            p, q = points[i - 1], points[i]
            p_in, q_in = inside[i - 1], inside[i]
            if p_in != q_in:  # the edge crosses the bound: add the crossing
                t = (bound - p[axis]) / (q[axis] - p[axis])
                out.append(p + t * (q - p))
            if q_in:
                out.append(q)
        points = np.array(out, float).reshape(-1, 2)
    return points


def _box(poly: Polygon) -> list[float]:
    """(x0, y0, x1, y1) of a polygon's exterior ring."""
    return [*poly[0].min(0).tolist(), *poly[0].max(0).tolist()]


def _features(data: object, path: Path) -> list[dict]:
    if isinstance(data, list):  # QuPath before 0.4: a list of features
        return [f for f in data if isinstance(f, dict)]
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return [f for f in data.get("features") or [] if isinstance(f, dict)]
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise AnnotationError(f"{path}: not a GeoJSON FeatureCollection or list of features; "
                          "export the annotations from QuPath with File → Export objects "
                          "as GeoJSON")


def _polygons(geometry: dict) -> list[Polygon]:
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        parts = [coords]
    elif kind == "MultiPolygon":
        parts = coords
    elif kind == "GeometryCollection":
        return [p for g in geometry.get("geometries") or [] for p in _polygons(g)]
    else:
        return []
    out = []
    for part in parts or []:
        rings = tuple(_ring(r) for r in part if len(r) >= 3)
        if rings:
            out.append(rings)
    return out


def _ring(points) -> np.ndarray:
    """A ring's (n, 2) x, y; ValueError for anything that is not finite points."""
    ring = np.asarray(points, float)
    if ring.ndim != 2 or ring.shape[1] < 2 or not np.isfinite(ring[:, :2]).all():
        raise ValueError("a ring is not a list of finite [x, y] points")
    return ring[:, :2]


def _class_name(props: dict) -> str | None:
    c = props.get("classification")
    if isinstance(c, dict):
        return c.get("name")
    return c if isinstance(c, str) else None


def read_regions(path: str | Path, rules: RegionRules = RegionRules()) -> Regions:
    """The regions of a QuPath GeoJSON export, in QuPath's pixel frame.

    Raises :class:`AnnotationError` naming the file when it cannot be read or holds no
    polygon annotation this study uses."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot be read as GeoJSON ({exc})") from exc
    include: list[Polygon] = []
    exclude: list[Polygon] = []
    skipped: dict[str, int] = {}
    for k, feature in enumerate(_features(data, path), 1):
        try:
            props = feature.get("properties") or {}
            kind_of_object = props.get("objectType", "annotation")
            polys = _polygons(feature.get("geometry") or {})
            kind = rules.kind(_class_name(props))
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            raise AnnotationError(f"{path}: feature {k} is malformed ({exc}); re-export the "
                                  "annotations from QuPath") from exc
        why = ("not an annotation" if kind_of_object != "annotation" else
               "no area" if not polys else "class not used" if kind is None else None)
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        (exclude if kind == "exclude" else include).extend(polys)
    if not include and not exclude:
        raise AnnotationError(f"{path}: no polygon annotation to use ({skipped or 'empty'}); "
                              "draw areas (not points or lines) in QuPath and export them")
    return Regions(str(path), hashlib.sha256(raw).hexdigest(), tuple(include), tuple(exclude),
                   skipped)


def bounds_offset(properties: dict, prefix: str = "openslide") -> tuple[float, float]:
    """Where QuPath's pixel (0, 0) lies in OpenSlide's level 0: ``openslide.bounds-x/y``
    (MIRAX and other formats with a scanned-area bounding box), else (0, 0)."""
    def value(key: str) -> float:
        try:
            out = float(properties.get(f"{prefix}.{key}") or 0)
        except (TypeError, ValueError):
            return 0.0
        return out if np.isfinite(out) else 0.0

    return value("bounds-x"), value("bounds-y")


def slide_regions(path: str | Path, bounds: tuple[float, float], rules: RegionRules) -> Regions:
    """The regions of annotation file ``path`` in OpenSlide's level-0 frame of a slide whose
    :func:`bounds_offset` is ``bounds``."""
    regions = read_regions(path, rules)
    dx, dy = bounds if rules.crop_to_bounds else (0.0, 0.0)
    return regions.shifted(dx, dy) if (dx or dy) else regions


def candidates(slide: Path) -> list[Path]:
    """Where a slide's annotations are looked for beside it, in this order:
    ``<name without extension>.geojson`` (QuPath's image name; ``.ome.tif`` counts as one
    extension), then ``<file name>.geojson``."""
    name = slide.name
    lower = name.lower()
    for ext in (".ome.tiff", ".ome.tif"):
        if lower.endswith(ext):
            stem = name[: -len(ext)]
            break
    else:
        stem = slide.stem
    return list(dict.fromkeys([slide.with_name(stem + ".geojson"),
                               slide.with_name(name + ".geojson")]))


def found_beside(slide: Path) -> list[Path]:
    """The annotation files that exist beside ``slide`` (see :func:`candidates`)."""
    return [p for p in candidates(slide) if p.is_file()]
