"""Peak memory of `lncr tile` on large slides, pyramidal or not (docs/tiling.md, "Memory").

Writes two slides on disk and tiles each (10x, 20x, 40x; 512-px tiles; the defaults) in one
process (`--workers 1`), reporting the peak resident memory of that process and its tiles:

- a 20000 × 20000 single-level RGB TIFF (no pyramid, uncompressed, one contiguous image),
- a 100000 × 50000 pyramidal tiled TIFF (512-px JPEG tiles, levels down by 4), mostly glass
  with bands of tissue-like texture, as a large real scan would be.

    python bench/memory.py [--only single|pyramid] [--keep FOLDER]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

TILE = 512


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Pink, grainy 'tissue' (H&E-like colours, never glass by the > 225 rule)."""
    base = np.array([200, 120, 170], np.int16)
    noise = rng.integers(-40, 40, (h, w, 1), dtype=np.int16)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def tissue_rows(width: int, height: int, y: int, rows: int, seed: int = 0) -> np.ndarray:
    """Rows [y, y + rows) of a slide: glass with tissue in a band across the middle third."""
    rng = np.random.default_rng([seed, y])
    out = np.full((rows, width, 3), 245, np.uint8)
    top, bottom = height // 3, 2 * height // 3
    a, b = max(y, top), min(y + rows, bottom)
    if a < b:
        left, right = width // 4, 3 * width // 4
        out[a - y:b - y, left:right] = texture(rng, b - a, right - left)
    return out


def single_level(path: Path, side: int = 20000) -> Path:
    """An uncompressed single-level TIFF (one contiguous image, as converters often write),
    filled through a memory map: never held in memory whole."""
    image = tifffile.memmap(path, shape=(side, side, 3), dtype=np.uint8, photometric="rgb",
                            resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    for y in range(0, side, 1024):
        image[y:y + 1024] = tissue_rows(side, side, y, min(1024, side - y))
    image.flush()
    del image
    return path


def pyramid(path: Path, width: int = 100000, height: int = 50000) -> Path:
    """A tiled pyramidal TIFF (levels 1, 4, 16, 64), tile by tile."""
    levels = [(width // d, height // d) for d in (1, 4, 16, 64)]

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, (w, h) in enumerate(levels):
            d = width // w
            tif.write(_level_tiles(w, h, d, width, height), shape=(h, w, 3), dtype=np.uint8,
                      tile=(TILE, TILE), photometric="rgb", compression="jpeg",
                      subfiletype=1 if i else 0,
                      resolution=(1e4 / (0.25 * d), 1e4 / (0.25 * d)),
                      resolutionunit="CENTIMETER")
    return path


def _level_tiles(w: int, h: int, d: int, width: int, height: int):
    """The level's tiles, row by row: glass, or tissue texture inside the band."""
    rng = np.random.default_rng(1)
    tissue = texture(rng, TILE, TILE)
    glass = np.full((TILE, TILE, 3), 245, np.uint8)
    top, bottom, left, right = height // 3, 2 * height // 3, width // 4, 3 * width // 4
    for ty in range(0, h, TILE):
        for tx in range(0, w, TILE):
            y0, x0 = ty * d, tx * d
            inside = top <= y0 < bottom and left <= x0 < right
            yield tissue if inside else glass


def peak_of(command: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in MB, last output line) of one process."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{text[-3000:]}")
    return seconds, usage.ru_maxrss // 1024, text.strip().splitlines()[-1]


def study(folder: Path, slide: Path) -> Path:
    """A two-patient study on ``slide`` (the second patient's slide a hard link to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    twin = folder / f"twin{slide.suffix}"
    if not twin.exists():
        os.link(slide, twin)
    (folder / "patients.csv").write_text("patient_id,cohort,label\nP1,development,1\n"
                                         "P2,development,0\n")
    (folder / "slides.csv").write_text(f"patient_id,stain,path\nP1,HE,{slide}\n"
                                       f"P2,HE,{twin}\n")
    (folder / "study.yaml").write_text("patients: patients.csv\nslides: slides.csv\n"
                                       "stains: [HE]\ntiling: {normalisation: {HE: none}}\n")
    return folder / "study.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["single", "pyramid"])
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="lncr-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    makers = {"single": ("20000 x 20000 single-level TIFF", single_level),
              "pyramid": ("100000 x 50000 pyramidal TIFF", pyramid)}
    for key, (label, make) in makers.items():
        if args.only and key != args.only:
            continue
        slide = root / f"{key}.tiff"
        if not slide.exists():
            t = time.perf_counter()
            # Written by a child process: a child forked from this one while it held the
            # slide's pixels would count them in its own peak.
            with concurrent.futures.ProcessPoolExecutor(1) as pool:
                pool.submit(make, slide).result()
            print(f"wrote {label}: {slide.stat().st_size / 1e6:.0f} MB in "
                  f"{time.perf_counter() - t:.0f} s")
        yaml = study(root / f"study-{key}", slide)
        seconds, peak, last = peak_of([sys.executable, "-m", "lncr", "tile", str(yaml),
                                       "--workers", "1", "--force"])
        print(f"{label}: lncr tile peak {peak} MB, {seconds:.0f} s; {last}")


if __name__ == "__main__":
    main()
