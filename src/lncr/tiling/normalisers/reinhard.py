"""Reinhard et al. (2001) colour transfer: match the mean and standard deviation of each
channel in the LAB colour space (OpenCV's 8-bit LAB, as StainTools).

Statistics are taken over tissue pixels (grey ≤ 225) when a tile has enough of them, so that
a tile that is mostly glass is not pulled toward the reference's tissue colour; the mapping
is then applied to every pixel. Stain-agnostic, so it suits three-dye stains too.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from lncr.tiling.normalisers.base import NotEnoughTissue, StainNormaliser, enough_tissue


def lab_stats(image: np.ndarray) -> dict[str, Any]:
    """Mean and standard deviation of L, a, b over tissue pixels (grey ≤ 225)."""
    image = np.ascontiguousarray(image)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    mask = (cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) <= 225).astype(np.uint8)
    n = int(cv2.countNonZero(mask))
    if not enough_tissue(n, mask.size):
        raise NotEnoughTissue(f"{n} tissue pixels")
    mean, std = cv2.meanStdDev(lab, mask=mask)
    mean, std = mean.ravel().astype(np.float32), std.ravel().astype(np.float32)
    if (std < 0.5).any():
        raise NotEnoughTissue("a single colour")
    return {"mean": mean, "std": std}


class Reinhard(StainNormaliser):
    """Reinhard colour transfer in LAB.

    >>> import numpy as np
    >>> from lncr.tiling.normalisers import Reinhard
    >>> norm = Reinhard.from_dict({"mean": [150.0, 150.0, 120.0], "std": [30.0, 8.0, 8.0]})
    >>> norm.transform(np.full((8, 8, 3), 200, np.uint8)).shape, norm.fallbacks
    ((8, 8, 3), 1)
    """

    name = "reinhard"

    def __init__(self) -> None:
        super().__init__()
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, target: np.ndarray) -> "Reinhard":
        ref = lab_stats(target)
        self.mean, self.std = ref["mean"], ref["std"]
        return self

    def _estimate(self, image: np.ndarray) -> dict[str, Any]:
        return lab_stats(image)

    def _apply(self, image: np.ndarray, source: dict[str, Any]) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("reinhard: fit() a reference first")
        lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB)
        # Per-channel affine maps of 8-bit values: one lookup table per channel.
        levels = np.arange(256, dtype=np.float32)[:, None]
        lut = (levels - source["mean"]) * (self.std / source["std"]) + self.mean
        lut = np.clip(lut + 0.5, 0, 255).astype(np.uint8).reshape(256, 1, 3)
        return cv2.cvtColor(cv2.LUT(lab, lut), cv2.COLOR_LAB2RGB)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, "mean": np.asarray(self.mean).tolist(),
                "std": np.asarray(self.std).tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Reinhard":
        out = cls()
        out.mean = np.asarray(data["mean"], np.float32)
        out.std = np.asarray(data["std"], np.float32)
        return out
