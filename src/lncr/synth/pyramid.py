"""Write an RGB image as a pyramidal, tiled, JPEG-compressed TIFF that OpenSlide opens.

Layout (OpenSlide's "generic TIFF"): one tiled page per level, levels at downsample 1, 2, 4, …,
256-px tiles, JPEG (YCbCr 4:2:0) compression, resolution tags in pixels per centimetre so that
OpenSlide reports ``openslide.mpp-x``. Output is byte-identical for identical input.

:func:`write_pyramid` takes the whole image; :func:`write_pyramid_strips` takes it as strips of
rows, as they are rendered, and never holds level 0 whole (a full-size biopsy's level 0 is
several gigabytes): its tiles go to the file as each strip arrives, and only the levels below
(a third of its size) are kept until they are written. Both give the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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


def _page(tif: tifffile.TiffWriter, data, level: int, mpp: float, quality: int, workers: int,
          **shape) -> None:
    px_per_cm = 1e4 / (mpp * 2 ** level)
    tif.write(data, photometric="rgb", tile=(TILE, TILE), compression="jpeg",
              compressionargs={"level": int(quality)}, resolution=(px_per_cm, px_per_cm),
              resolutionunit="CENTIMETER", subfiletype=1 if level else 0,
              software="lncr synth", maxworkers=workers, **shape)


def write_pyramid_strips(path: str | Path, strips: Iterator[np.ndarray],
                         shape: tuple[int, int], mpp: float, quality: int
                         ) -> list[np.ndarray | None]:
    """Write the pyramid of an image given as ``strips`` (consecutive rows, every strip but
    the last a multiple of two tiles high) of ``shape`` (height, width) to ``path``
    atomically. Returns the levels, level 0 as None (it was never held whole)."""
    path = Path(path)
    height, width = shape
    lower: list[np.ndarray] = []

    def tiles() -> Iterator[np.ndarray]:
        done = 0
        for strip in strips:
            if strip.shape[0] % (2 * TILE) and done + strip.shape[0] != height:
                raise ValueError("strips must be multiples of two tiles high, but the last")
            done += strip.shape[0]
            lower.append(downsample2(strip))
            for y in range(0, strip.shape[0], TILE):
                for x in range(0, width, TILE):
                    tile = np.zeros((TILE, TILE, 3), np.uint8)  # edges padded as tifffile does
                    part = strip[y:y + TILE, x:x + TILE]
                    tile[:part.shape[0], :part.shape[1]] = part
                    yield tile

    tmp = partial_path(path)
    with tifffile.TiffWriter(tmp, bigtiff=height * width * 3 > 2 ** 31) as tif:
        _page(tif, tiles(), 0, mpp, quality, 1, shape=(height, width, 3), dtype=np.uint8)
        levels: list[np.ndarray | None] = [None]
        if max(height, width) > TILE and min(height, width) >= 2:
            levels += pyramid_levels(np.concatenate(lower))
        for i, level in enumerate(levels[1:], start=1):
            _page(tif, level, i, mpp, quality, 1)
    os.replace(tmp, path)
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
            _page(tif, level, i, mpp, quality, workers)
    os.replace(tmp, path)
    return levels


def thumbnail(levels: list[np.ndarray | None], downsample: int) -> np.ndarray:
    """The image at ``downsample`` (a power of two) from its pyramid ``levels`` (level 0 may
    be None), halving the smallest level further when the pyramid stops short."""
    want = int(np.log2(downsample))
    k = min(want, len(levels) - 1)
    if levels[k] is None:
        raise ValueError("a thumbnail at downsample 1 needs level 0")
    thumb = levels[k]
    for _ in range(want - k):
        thumb = downsample2(thumb)
    return thumb
