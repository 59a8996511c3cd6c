"""Brightness/contrast: a luminosity standardisation in the spirit of StainTools'
``LuminosityStandardizer``.

StainTools stretches each image so that the 95th percentile of its lightness maps to white.
Done per tile, this washes out tiles full of tissue (their 95th percentile is tissue, not
glass). lncr fits the stretch once per slide, on its low-resolution thumbnail, where the 95th
percentile is the brightness of empty glass, and applies the same per-channel gain to every
tile of the slide through a lookup table (``I' = min(255, I × 255 / p)``).
"""

from __future__ import annotations

import cv2
import numpy as np

from lncr.tiling.tissue import grey


class LuminosityStandardiser:
    """Fit on a slide overview, transform its tiles.

    >>> import numpy as np
    >>> glass = np.full((8, 8, 3), 230, np.uint8)
    >>> LuminosityStandardiser().fit(glass).transform(glass)[0, 0].tolist()
    [255, 255, 255]
    """

    def __init__(self, percentile: float = 95.0):
        self.percentile = percentile
        self.white: float | None = None
        self.lut = np.arange(256, dtype=np.uint8)

    def fit(self, overview: np.ndarray) -> "LuminosityStandardiser":
        p = float(np.percentile(grey(overview), self.percentile))
        # A slide with no glass at all (p dark) would be blown out: never stretch more than 2x.
        self.white = max(p, 128.0)
        self.lut = np.clip(np.arange(256) * (255.0 / self.white) + 0.5, 0, 255).astype(np.uint8)
        return self

    def transform(self, image: np.ndarray) -> np.ndarray:
        return cv2.LUT(image, self.lut)

    def to_dict(self) -> dict:
        return {"percentile": self.percentile, "white": self.white}
