"""Benchmark tiling inside QuPath annotations against tiling the whole slide, in one run.

``CMU-1-Small-Region.svs`` at 20x with 256-px tiles, without luminosity step or colour
normalisation (so that reading and the tissue rule dominate), tiled by ``tile_unit`` in this
process:

(a) the whole slide;
(b) inside the hand-drawn regions of ``tests/test_annotations.py`` (one polygon with a hole,
    one excluded artefact);
(c) inside a brush-like annotation: 400 small 64-vertex polygons over the slide.

Reports the median seconds per unit over the repeats, the grid cells read (outside the regions
they are not), the kept tiles, and the seconds per cell read with the ratio of (b) and (c) to
(a): what rasterising the regions for every cell costs.

    python bench/annotations.py [--real-data tests/data/slides] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lncr.tiling.unit import TileParams, TileUnit, tile_unit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_annotations import cmu_annotations  # noqa: E402  (the test's hand-drawn regions)


def brush(width: int, height: int, n: int = 20, vertices: int = 64) -> dict:
    """``n × n`` small circles over the slide, each a polygon of ``vertices`` points."""
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = 0.45 * min(width, height) / n
    features = []
    for cx in np.linspace(r, width - r, n):
        for cy in np.linspace(r, height - r, n):
            ring = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).tolist()
            features.append({"type": "Feature", "properties": {"objectType": "annotation"},
                             "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]}})
    return {"type": "FeatureCollection", "features": features}


def run(slide: Path, annotations: str, folder: Path, repeats: int) -> dict:
    params = TileParams(tile_size=256, luminosity_standardise=False)
    seconds, result = [], None
    for k in range(repeats):
        unit = TileUnit("P", "development", "HE", str(slide), None, "20x", 0.5,
                        str(folder / f"{Path(annotations).stem or 'whole'}-{k}.tiles.zip"),
                        annotations)
        t0 = time.perf_counter()
        result = tile_unit(unit, params, None, force=True)
        seconds.append(time.perf_counter() - t0)
        assert result.status == "ok", result.error
    read = result.grid_cells - result.outside - result.prefiltered
    return {"seconds": statistics.median(seconds), "read": read, "kept": result.kept,
            "outside": result.outside}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-data", type=Path, default=REPO / "tests" / "data" / "slides")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    slide = args.real_data / "CMU-1-Small-Region.svs"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "drawn.geojson").write_text(json.dumps(cmu_annotations()))
        (folder / "brush.geojson").write_text(json.dumps(brush(2220, 2967)))
        rows = {"whole slide": run(slide, "", folder, args.repeats),
                "hand-drawn regions": run(slide, str(folder / "drawn.geojson"), folder,
                                          args.repeats),
                "400-polygon brush": run(slide, str(folder / "brush.geojson"), folder,
                                         args.repeats)}
    base = rows["whole slide"]["seconds"] / rows["whole slide"]["read"]
    print(f"CMU-1-Small-Region.svs, 20x, 256-px tiles, median of {args.repeats}")
    print(f"{'':20} {'s/unit':>8} {'read':>6} {'kept':>6} {'outside':>8} {'per cell read':>13} "
          f"{'ratio':>6}")
    for name, r in rows.items():
        per = r["seconds"] / r["read"]
        print(f"{name:20} {r['seconds']:8.3f} {r['read']:6d} {r['kept']:6d} {r['outside']:8d} "
              f"{per * 1000:11.2f}ms {per / base:6.2f}")


if __name__ == "__main__":
    main()
