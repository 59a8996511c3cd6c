"""Shared parts of the stain normalisers: optical density, the fit/transform interface and
the fallback rule for tiles with too little tissue."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import cv2
import numpy as np

from lncr.errors import BadInput

#: Pixels with optical density below this in any channel are background (Macenko's β).
OD_THRESHOLD = 0.15
#: A tile needs at least this many tissue pixels (and 0.5 % of its pixels) to be normalised;
#: otherwise it is returned unchanged and counted as a fallback.
MIN_TISSUE_PIXELS = 64
#: Pixels used to estimate a stain matrix (a fixed-stride subsample: deterministic).
MAX_ESTIMATION_PIXELS = 20000


#: Optical density of each 8-bit intensity, ``-ln((I + 1) / 256)``: a lookup table, so the
#: conversion is one OpenCV LUT pass instead of a logarithm per pixel.
OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)
#: Intensities at or below this are tissue in every channel (OD ≥ OD_THRESHOLD).
TISSUE_MAX_INTENSITY = int(np.floor(256.0 * np.exp(-OD_THRESHOLD) - 1.0))


def to_od(image: np.ndarray) -> np.ndarray:
    """Optical density ``-ln((I + 1) / 256)`` of an RGB uint8 image, float32, same shape."""
    return cv2.LUT(np.ascontiguousarray(image), OD_LUT)


def from_od(od: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_od`: (H, W, 3) optical density back to RGB uint8."""
    rgb = cv2.exp(-od)
    rgb *= 256.0
    rgb -= 0.5  # (-1 for the +1 of to_od) + (0.5 to round)
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8)


def tissue_pixels(image: np.ndarray, max_pixels: int = MAX_ESTIMATION_PIXELS
                  ) -> tuple[np.ndarray, int]:
    """Optical densities (N, 3) of tissue pixels (no channel lighter than OD_THRESHOLD),
    from a fixed-stride subsample of at most ~``max_pixels`` pixels, and the estimated number
    of tissue pixels in the whole image."""
    n = image.shape[0] * image.shape[1]
    step = max(1, int(np.sqrt(n / max_pixels)))
    sub = np.ascontiguousarray(image[::step, ::step]).reshape(-1, 3)
    mask = sub.max(axis=1) <= TISSUE_MAX_INTENSITY
    od = OD_LUT[sub[mask]]
    return od, int(mask.sum()) * step * step


def enough_tissue(n_tissue: int, n_pixels: int) -> bool:
    return n_tissue >= max(MIN_TISSUE_PIXELS, 0.005 * n_pixels)


class NotEnoughTissue(BadInput):
    """An image has too little tissue (or too little colour variation) to estimate stains."""


class StainNormaliser(ABC):
    """``fit`` on a reference, optionally ``fit_source`` once per slide, ``transform`` tiles.

    ``transform`` never raises on degenerate input (blank, near-white, one colour, tiny): it
    returns the tile unchanged and increments ``fallbacks``.
    """

    name: str = ""

    def __init__(self) -> None:
        self.fallbacks = 0
        self.source: dict[str, Any] | None = None

    @abstractmethod
    def fit(self, target: np.ndarray) -> "StainNormaliser":
        """Learn the reference appearance from an RGB uint8 image (or mosaic of tiles)."""

    @abstractmethod
    def _estimate(self, image: np.ndarray) -> dict[str, Any]:
        """Source statistics of an image; raise :class:`NotEnoughTissue` when impossible."""

    @abstractmethod
    def _apply(self, image: np.ndarray, source: dict[str, Any]) -> np.ndarray:
        """Map ``image`` with the given source statistics onto the reference."""

    def fit_source(self, image: np.ndarray) -> bool:
        """Estimate the source statistics once (e.g. per slide, on a mosaic of its tiles) and
        use them for every later ``transform``. Returns False (per-tile estimation stays on)
        when the image has too little tissue."""
        try:
            self.source = self._estimate(image)
        except NotEnoughTissue:
            self.source = None
        return self.source is not None

    def transform(self, image: np.ndarray) -> np.ndarray:
        out, fell_back = self.apply(image)
        self.fallbacks += fell_back
        return out

    def apply(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """``transform`` without touching the normaliser: (the tile, whether it fell back to
        the unchanged tile). Safe to call from several threads at once."""
        try:
            source = self.source if self.source is not None else self._estimate(image)
            return self._apply(image, source), False
        except (NotEnoughTissue, np.linalg.LinAlgError, FloatingPointError):
            return image, True

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The fitted reference, JSON-serialisable."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> "StainNormaliser":
        """Restore a fitted normaliser written by :meth:`to_dict`."""


class Identity(StainNormaliser):
    """No colour normalisation (``normalisation: none``)."""

    name = "none"

    def fit(self, target: np.ndarray) -> "Identity":
        return self

    def _estimate(self, image: np.ndarray) -> dict[str, Any]:
        return {}

    def _apply(self, image: np.ndarray, source: dict[str, Any]) -> np.ndarray:
        return image

    def to_dict(self) -> dict[str, Any]:
        return {"method": "none"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Identity":
        return cls()
