"""Write an RGB image as a pyramidal, tiled, JPEG-compressed TIFF that OpenSlide opens.

Layout (OpenSlide's "generic TIFF"): one tiled page per level, levels at downsample 1, 2, 4, …,
256-px tiles, JPEG (YCbCr 4:2:0) compression, resolution tags in pixels per centimetre so that
OpenSlide reports ``openslide.mpp-x``. Output is byte-identical for identical input.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from lncr.fileio import partial_path

TILE = 256


def downsample2(image: np.ndarray) -> np.ndarray:
    """Halve an (H, W, 3) uint8 image by averaging 2×2 blocks (odd edges dropped).

    Pillow's box ``reduce`` is several times faster than the equivalent numpy slicing."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return np.asarray(Image.fromarray(image[:h, :w]).reduce(2))


def pyramid_levels(image: np.ndarray, tile: int = TILE) -> list[np.ndarray]:
    """Levels at downsample 1, 2, 4, … until the whole level fits in one tile."""
    levels = [image]
    while max(levels[-1].shape[:2]) > tile and min(levels[-1].shape[:2]) >= 2:
        levels.append(downsample2(levels[-1]))
    return levels


def write_pyramid(path: str | Path, image: np.ndarray, mpp: float, quality: int,
                  workers: int = 1) -> list[np.ndarray]:
    """Write ``image`` (level 0, ``mpp`` µm/px) and its pyramid to ``path`` atomically.

    The file appears under its final name only once complete. Returns the levels written.
    """
    path = Path(path)
    levels = pyramid_levels(image)
    tmp = partial_path(path)
    with tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2 ** 31) as tif:
        for i, level in enumerate(levels):
            px_per_cm = 1e4 / (mpp * 2 ** i)
            tif.write(level, photometric="rgb", tile=(TILE, TILE), compression="jpeg",
                      compressionargs={"level": int(quality)}, resolution=(px_per_cm, px_per_cm),
                      resolutionunit="CENTIMETER", subfiletype=1 if i else 0,
                      software="lncr synth", maxworkers=workers)
    os.replace(tmp, path)
    return levels
