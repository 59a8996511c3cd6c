"""Benchmark ``lncr tile`` against the bare floor, in one run.

The floor: OpenSlide ``read_region`` of every grid cell at the matching pyramid level plus the
> 225 grey rule — no prefilter, no resampling, no luminosity, normalisation or encoding. lncr is
measured per slide × magnification unit (``tile_unit``, single process) with (a) no luminosity
and no normalisation and (b) luminosity + Macenko (source stains per slide), for each store
encoding; grid tiles per second count every grid cell, so skipping empty cells before reading
them counts in lncr's favour. Slides: one phantom ``demo`` slide at 40x, 20x and 10x, and
``CMU-1-Small-Region.svs`` at 20x. Also: peak memory of tiling the demo slide at 40x in a fresh
process, and the speed-up of 2 worker processes over 1 on a phantom cohort.

    python bench/tiling.py [--real-data tests/data/slides]
"""

from __future__ import annotations

import argparse
import math
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import openslide

from lncr.synth.cohort import SynthSettings, synthesize
from lncr.tiling.normalisers import make_normaliser
from lncr.tiling.tissue import grey
from lncr.tiling.unit import TileParams, TileUnit, tile_unit

REPO = Path(__file__).resolve().parents[1]
TILE = 512


def floor_rate(path: Path, mpp: float, target_mpp: float) -> tuple[float, int]:
    """Grid tiles/s of read_region at the matching level + the rule (no resampling)."""
    with openslide.OpenSlide(str(path)) as s:
        ds = target_mpp / mpp
        level = s.get_best_level_for_downsample(ds + 1e-6)
        lds = s.level_downsamples[level]
        cell0 = TILE * ds
        size = int(round(cell0 / lds))
        w, h = s.dimensions
        cells = [(int(i * cell0), int(j * cell0)) for j in range(math.ceil(h / cell0))
                 for i in range(math.ceil(w / cell0))]
        t0 = time.perf_counter()
        kept = 0
        for x, y in cells:
            tile = np.asarray(s.read_region((x, y), level, (size, size)))[..., :3]
            kept += (grey(np.ascontiguousarray(tile)) > 225).mean() <= 0.5
        return len(cells) / (time.perf_counter() - t0), len(cells)


def lncr_rate(path: Path, target_mpp: float, mag: str, params: TileParams, reference,
              folder: Path) -> tuple[float, int]:
    unit = TileUnit("P", "development", "HE", str(path), None, mag, target_mpp,
                    str(folder / f"{path.stem}-{mag}-{params.encoding}-{reference is not None}.zip"))
    t0 = time.perf_counter()
    r = tile_unit(unit, params, reference, force=True)
    if r.status not in ("ok", "skipped-no-tissue"):
        raise RuntimeError(r.error)
    return r.grid_cells / (time.perf_counter() - t0), r.kept


def peak_memory(path: str, params: TileParams, folder: str) -> float:
    unit = TileUnit("P", "development", "HE", path, None, "40x", 0.25, f"{folder}/mem.zip")
    tile_unit(unit, params, None, force=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scaling(slides: list[Path], folder: Path) -> float:
    params = TileParams(tile_size=TILE, encoding="jpeg")
    units = [TileUnit("P", "development", "HE", str(p), None, mag, mpp,
                      str(folder / f"scale-{p.stem}-{mag}.zip"))
             for p in slides for mag, mpp in (("20x", 0.5), ("40x", 0.25))]
    t0 = time.perf_counter()
    for u in units:
        tile_unit(u, params, None, force=True)
    one = time.perf_counter() - t0
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        list(pool.map(_warm, range(2)))  # start both workers before timing
        t0 = time.perf_counter()
        list(pool.map(tile_unit, units, [params] * len(units), [None] * len(units),
                      [True] * len(units)))
        two = time.perf_counter() - t0
    return one / two


def _warm(_: int) -> None:
    time.sleep(0.5)  # keeps both workers busy at once so that both are started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-data", type=Path, default=REPO / "tests" / "data" / "slides")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "demo", SynthSettings(patients=2, external=0, seed=3, size="demo",
                                               stains=("HE",)), workers=2)
        demo = tmp / "demo" / "slides" / "DEV-001_HE.tiff"
        cmu = args.real_data / "CMU-1-Small-Region.svs"
        with openslide.OpenSlide(str(cmu)) as s:
            ref_tile = np.asarray(s.read_region((512, 1024), 0, (512, 512)))[..., :3].copy()
        macenko = make_normaliser("macenko").fit(ref_tile).to_dict()
        cases = [(demo, 0.25, 0.25, "40x"), (demo, 0.25, 0.5, "20x"), (demo, 0.25, 1.0, "10x"),
                 (cmu, 0.499, 0.5, "20x")]
        print(f"{'slide':22} {'mag':4} {'cells':>6} {'floor/s':>8} {'variant':34} {'tiles/s':>8} {'ratio':>6}")
        for path, mpp, target, mag in cases:
            floor, n = floor_rate(path, mpp, target)
            for encoding in ("jpeg", "png"):
                for label, params, ref in (
                        ("(a) no normalisation", TileParams(tile_size=TILE, encoding=encoding,
                                                            luminosity_standardise=False), None),
                        ("(b) luminosity + Macenko", TileParams(tile_size=TILE, encoding=encoding),
                         macenko)):
                    r, kept = lncr_rate(path, target, mag, params, ref, tmp)
                    print(f"{path.name[:22]:22} {mag:4} {n:6d} {floor:8.1f} "
                          f"{label + ', ' + encoding:34} {r:8.1f} {r / floor:5.2f}x")
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            mb = pool.submit(peak_memory, str(demo), TileParams(tile_size=TILE), str(tmp)).result()
        with openslide.OpenSlide(str(demo)) as s:
            full = s.dimensions[0] * s.dimensions[1] * 3 / 2 ** 20
        print(f"\npeak RSS tiling the demo slide at 40x in a fresh process: {mb:.0f} MB "
              f"(the slide's level 0 alone would be {full:.0f} MB)")
        synthesize(tmp / "cohort", SynthSettings(patients=4, external=0, seed=4, size="demo",
                                                 stains=("HE",)), workers=2)
        slides = sorted((tmp / "cohort" / "slides").glob("*.tiff"))
        print(f"speed-up of 2 workers over 1 ({len(slides)} demo slides at 20x and 40x, "
              f"workers started): {scaling(slides, tmp):.2f}x")


if __name__ == "__main__":
    main()
