"""The tissue rule of the published method and the low-resolution prefilter.

A pixel is non-tissue (background) when its grey value — ITU-R BT.601 luma, as Pillow's ``L``
mode — is above ``background_threshold`` (225). A tile with more than
``max_background_fraction`` (0.5) background pixels is dropped.
"""

from __future__ import annotations

import cv2
import numpy as np


def grey(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB uint8 image (0.299 R + 0.587 G + 0.114 B), uint8."""
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def background_fraction(image: np.ndarray, threshold: int = 225,
                        inside: np.ndarray | None = None) -> float:
    """Fraction of pixels whose grey value is above ``threshold`` — or, given ``inside`` (a
    boolean map of the annotated area to use), that are either that or outside it.

    >>> import numpy as np
    >>> background_fraction(np.full((4, 4, 3), 255, np.uint8))
    1.0
    """
    g = grey(image)
    background = g > threshold
    if inside is not None:
        background |= ~inside
    return float(np.count_nonzero(background)) / g.size


def keeps(image: np.ndarray, threshold: int = 225, max_background_fraction: float = 0.5) -> bool:
    """The published rule: keep a tile unless more than the allowed fraction is background."""
    return background_fraction(image, threshold) <= max_background_fraction


class LowResTissueMask:
    """Which grid cells may hold tissue, from a low-resolution view of the slide, so that empty
    cells are skipped before they are read at full resolution.

    Deliberately conservative: a cell is a candidate when any pixel of its footprint on the
    low-resolution image — after dilating the tissue map by one pixel, to allow for blur — is
    darker than the threshold. The final decision is always the full-resolution rule.
    """

    def __init__(self, thumbnail: np.ndarray, downsample: float, threshold: int = 225,
                 allowed: np.ndarray | None = None):
        tissue = grey(thumbnail) <= threshold
        if allowed is not None:  # the annotated area to use, on the same grid
            tissue &= allowed
        self.tissue = cv2.dilate(tissue.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        self.downsample = downsample
        # Summed-area table: the tissue count of any rectangle in O(1).
        self._sat = np.pad(self.tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def count(self, x: float, y: float, size: float) -> int:
        """Tissue pixels of the low-resolution map under the level-0 square (x, y, size)."""
        h, w = self.tissue.shape
        i0 = int(np.clip(np.floor(y / self.downsample), 0, h))
        j0 = int(np.clip(np.floor(x / self.downsample), 0, w))
        i1 = int(np.clip(np.ceil((y + size) / self.downsample), 0, h))
        j1 = int(np.clip(np.ceil((x + size) / self.downsample), 0, w))
        s = self._sat
        return int(s[i1, j1] - s[i0, j1] - s[i1, j0] + s[i0, j0])

    def may_hold_tissue(self, x: float, y: float, size: float) -> bool:
        return self.count(x, y, size) > 0
