"""Slide readers, by registry: which library opens which file, and what to install when the
library for a format is missing.

Each :class:`Backend` opens a file into a handle with OpenSlide's interface
(``dimensions``, ``level_dimensions``, ``level_downsamples``, ``properties`` with
``<name>.mpp-x``/``-y``, ``read_region((x0, y0), level, (w, h))`` in level-0 coordinates,
``associated_images``, ``close()``). :func:`lncr.slides.reader.probe_slide` tries them in
:data:`BACKENDS` order, and :func:`lncr.slides.reader.open_slide` reopens a slide with the
one that recognised it:

- ``openslide`` (openslide-python + openslide-bin): Aperio, Hamamatsu, Leica, MIRAX, Philips
  TIFF, Sakura, Ventana, generic tiled TIFF and — OpenSlide 4 — DICOM WSI;
- ``tiff-raw`` (tifffile for the layout): an uncompressed single-level TIFF, read row by row,
  so that a region costs its own pixels, not the whole image (tiffslide would read the single
  strip, 1.2 GB for a 20000 × 20000 slide, for every region);
- ``tiffslide``: OME-TIFF and other TIFFs OpenSlide does not open;
- ``kfb`` (``pip install 'lncr[kfb]'``: kfbslide): KFBIO ``.kfb``, the published study's
  scanner;
- ``isyntax`` (``pip install 'lncr[isyntax]'``: pyisyntax): Philips ``.isyntax``;
- ``pillow``: plain images (PNG, JPEG, …) last.

A file whose suffix belongs to an optional backend that is not installed is refused with the
``pip install`` line (:func:`missing_extra`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Backend:
    """One reader: its name (the ``backend`` lncr records), how it opens a file (a handle,
    or None when the file is not its format) and where it comes from."""

    name: str
    open: Callable[[Path], Any]
    module: str  # what must be importable
    extra: str = ""  # the lncr extra that installs it ("" for the built-in readers)
    suffixes: tuple[str, ...] = ()  # () : tried on every file
    formats: str = ""  # what it reads, for docs and messages
    prefix: str = ""  # of its µm/px properties (``<prefix>.mpp-x``); "" : its name
    #: Whether one handle may read regions from several threads at once (OpenSlide is
    #: documented thread-safe; ``RawTiff`` only calls ``os.pread``). Other handles are read
    #: one region at a time.
    thread_safe: bool = False

    @property
    def properties_prefix(self) -> str:
        return self.prefix or self.name

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def claims(self, path: Path) -> bool:
        return not self.suffixes or path.suffix.lower() in self.suffixes


def _openslide(path: Path):
    import openslide

    if openslide.OpenSlide.detect_format(str(path)) is None:
        return None
    return openslide.OpenSlide(str(path))


def _tiffslide(path: Path):
    import tiffslide

    try:
        return tiffslide.TiffSlide(str(path))
    except Exception:  # tiffslide raises many types for non-TIFF input
        return None


def _kfb(path: Path):
    import kfbslide

    return kfbslide.KfbSlide(str(path))


def _isyntax(path: Path):
    from isyntax import ISyntax

    return ISyntaxHandle(ISyntax.open(path))


def _raw_tiff(path: Path):
    """An uncompressed, contiguous single-level TIFF read row by row, or None."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # not a TIFF at all
        return None
    page = tif.pages.first
    ok = (len(tif.series) == 1 and len(tif.series[0].levels) == 1 and page.compression == 1
          and page.is_contiguous and page.planarconfig == 1 and page.dtype == np.uint8
          and page.photometric == 2 and page.samplesperpixel in (3, 4))
    offset = page.dataoffsets[0] if ok else None  # is_contiguous: one run of bytes
    width, height, samples, mpp = (page.imagewidth, page.imagelength, page.samplesperpixel,
                                   _tiff_mpp(page))
    tif.close()
    return RawTiff(path, offset, width, height, samples, mpp) if ok else None


class RawTiff:
    """OpenSlide's interface over an uncompressed TIFF image, reading only the rows and
    columns a region needs (``os.pread``): memory follows the region, not the slide, and no
    page of the file stays mapped. Written here because tifffile and tiffslide read such an
    image as one chunk."""

    def __init__(self, path: Path, offset: int, width: int, height: int, samples: int,
                 mpp: tuple[float | None, float | None]):
        self._fd = os.open(path, os.O_RDONLY)
        self._offset, self._samples = int(offset), int(samples)
        self.dimensions = (int(width), int(height))
        self.level_dimensions = (self.dimensions,)
        self.level_downsamples = (1.0,)
        self.associated_images: dict = {}
        self.properties = {f"tiff-raw.mpp-{axis}": str(v) for axis, v in zip("xy", mpp)
                           if v is not None}

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]
                    ) -> np.ndarray:
        (x, y), (w, h) = location, size
        width, height = self.dimensions
        out = np.full((h, w, 4), 255, np.uint8)
        x0, x1 = max(0, x), min(width, x + w)
        s = self._samples
        for row in range(max(0, y), min(height, y + h)):
            if x0 >= x1:
                break
            start = self._offset + (row * width + x0) * s
            data = os.pread(self._fd, (x1 - x0) * s, start)
            out[row - y, x0 - x:x1 - x, :s] = np.frombuffer(data, np.uint8).reshape(-1, s)
        return out

    def close(self) -> None:
        os.close(self._fd)


def _tiff_mpp(page) -> tuple[float | None, float | None]:
    """µm/px from a TIFF page's resolution tags (centimetre or inch units)."""
    unit = page.tags.get("ResolutionUnit")
    per = {2: 25400.0, 3: 10000.0}.get(int(unit.value) if unit else 2)
    out = []
    for tag in ("XResolution", "YResolution"):
        value = page.tags.get(tag)
        try:
            num, den = value.value
            out.append(per * den / num if per and num else None)
        except (AttributeError, TypeError, ValueError, ZeroDivisionError):
            out.append(None)
    return out[0], out[1]


class ISyntaxHandle:
    """OpenSlide's interface over pyisyntax (which reads regions in level coordinates)."""

    def __init__(self, slide):
        self._slide = slide
        self.dimensions = tuple(int(v) for v in slide.dimensions)
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in slide.level_downsamples)
        self.associated_images: dict = {}
        self.properties = {"isyntax.mpp-x": str(slide.mpp_x), "isyntax.mpp-y": str(slide.mpp_y),
                           "isyntax.vendor": "philips"}

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]
                    ) -> np.ndarray:
        ds = self.level_downsamples[level]
        x, y = (int(round(v / ds)) for v in location)
        return self._slide.read_region(x, y, int(size[0]), int(size[1]), level)

    def close(self) -> None:
        self._slide.close()


#: The readers, in the order they are tried.
BACKENDS: tuple[Backend, ...] = (
    Backend("openslide", _openslide, "openslide",
            formats="Aperio .svs/.tif, Hamamatsu .ndpi/.vms, Leica .scn, MIRAX .mrxs, Philips "
                    "TIFF, Sakura .svslide, Ventana .bif, generic tiled TIFF, DICOM WSI .dcm",
            thread_safe=True),
    Backend("tiff-raw", _raw_tiff, "tifffile", suffixes=(".tif", ".tiff"),
            formats="uncompressed single-level TIFF", thread_safe=True),
    Backend("tiffslide", _tiffslide, "tiffslide", formats="OME-TIFF, other TIFF"),
    Backend("kfb", _kfb, "kfbslide", "kfb", (".kfb",), "KFBIO .kfb", prefix="openslide"),
    Backend("isyntax", _isyntax, "isyntax", "isyntax", (".isyntax",), "Philips .isyntax"),
)


def missing_extra(path: Path) -> Backend | None:
    """The optional backend that would read ``path`` (by its suffix) but is not installed."""
    return next((b for b in BACKENDS if b.extra and b.suffixes and b.claims(path)
                 and not b.available()), None)


def backend(name: str) -> Backend:
    """The registered backend called ``name``."""
    return next(b for b in BACKENDS if b.name == name)


def thread_safe(name: str) -> bool:
    """Whether a handle of backend ``name`` may be read from several threads at once
    (False for Pillow, which is not a registered backend)."""
    return any(b.thread_safe for b in BACKENDS if b.name == name)
