"""Macenko et al. (2009) stain normalisation, vectorised with numpy.

Stain vectors are the extreme angles (1st and 99th percentiles) of tissue optical densities
projected on the plane of their two principal directions; concentrations are least-squares
solutions; the 99th percentile of each stain's concentration is matched to the reference.
Written here rather than taken from torchstain or StainTools because it must also work with a
source stain matrix estimated once per slide, estimate on a fixed subsample of pixels, and
never fail on blank tiles (see :class:`~lncr.tiling.normalisers.base.StainNormaliser`).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from lncr.tiling.normalisers.base import (
    NotEnoughTissue,
    StainNormaliser,
    enough_tissue,
    from_od,
    tissue_pixels,
    to_od,
)

ALPHA = 1.0  # percentile of the extreme angles


def macenko_stains(od_tissue: np.ndarray) -> np.ndarray:
    """(2, 3) unit stain vectors, haematoxylin-like (larger red absorbance) first."""
    if len(od_tissue) < 3:
        raise NotEnoughTissue("too few tissue pixels")
    cov = np.cov(od_tissue.T.astype(np.float64))
    if not np.isfinite(cov).all():
        raise NotEnoughTissue("non-finite covariance")
    vals, vecs = np.linalg.eigh(cov)
    plane = vecs[:, [2, 1]]  # two largest eigenvalues
    if vals[1] <= 1e-10:
        raise NotEnoughTissue("a single colour: no second stain direction")
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive OD
    proj = od_tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [ALPHA, 100 - ALPHA])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2]) if v1[0] > v2[0] else np.stack([v2, v1])
    stains = np.abs(stains)  # numerical noise can leave tiny negative components
    norms = np.linalg.norm(stains, axis=1, keepdims=True)
    if (norms < 1e-8).any() or np.allclose(stains[0], stains[1], atol=1e-6):
        raise NotEnoughTissue("degenerate stain vectors")
    return (stains / norms).astype(np.float32)


def concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """(N, k) least-squares stain concentrations of (N, 3) optical densities."""
    return od @ np.linalg.pinv(stains).astype(np.float32)


class MatrixNormaliser(StainNormaliser):
    """Shared reference logic of stain-matrix methods (Macenko, Vahadane)."""

    #: Clip negative concentrations before re-composing (non-negative unmixing).
    clip_negative = False

    def __init__(self) -> None:
        super().__init__()
        self.stains: np.ndarray | None = None
        self.max_conc: np.ndarray | None = None

    def _stains(self, od_tissue: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _estimate(self, image: np.ndarray) -> dict[str, Any]:
        tissue, n_tissue = tissue_pixels(image)
        if not enough_tissue(n_tissue, image.shape[0] * image.shape[1]):
            raise NotEnoughTissue(f"{n_tissue} tissue pixels")
        stains = self._stains(tissue)
        conc = concentrations(tissue, stains)
        max_conc = np.percentile(conc, 99, axis=0).astype(np.float32)
        if not np.isfinite(max_conc).all() or (max_conc <= 1e-6).any():
            raise NotEnoughTissue("a stain is absent")
        return {"stains": stains, "max_conc": max_conc}

    def fit(self, target: np.ndarray) -> "MatrixNormaliser":
        ref = self._estimate(target)
        self.stains, self.max_conc = ref["stains"], ref["max_conc"]
        return self

    def _apply(self, image: np.ndarray, source: dict[str, Any]) -> np.ndarray:
        if self.stains is None:
            raise RuntimeError(f"{self.name}: fit() a reference first")
        od = to_od(image)
        unmix = np.linalg.pinv(source["stains"]).astype(np.float32)  # OD → concentrations
        remix = (self.max_conc / source["max_conc"])[:, None] * self.stains  # → reference OD
        if not (np.isfinite(unmix).all() and np.isfinite(remix).all()):
            raise FloatingPointError("non-finite stain matrix")
        if self.clip_negative:
            conc = cv2.transform(od, unmix.T)
            np.maximum(conc, 0, out=conc)
            out = cv2.transform(conc, remix.T.astype(np.float32))
        else:  # linear: one 3 × 3 matrix per pixel
            out = cv2.transform(od, (unmix @ remix).T.astype(np.float32))
        return from_od(out)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, "stains": np.asarray(self.stains).tolist(),
                "max_conc": np.asarray(self.max_conc).tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MatrixNormaliser":
        out = cls()
        out.stains = np.asarray(data["stains"], np.float32)
        out.max_conc = np.asarray(data["max_conc"], np.float32)
        return out


class Macenko(MatrixNormaliser):
    """Macenko normalisation.

    >>> import numpy as np
    >>> from lncr.tiling.normalisers import Macenko
    >>> tile = np.full((64, 64, 3), 255, np.uint8)
    >>> norm = Macenko.from_dict({"stains": [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]],
    ...                           "max_conc": [1.9, 1.0]})
    >>> bool((norm.transform(tile) == tile).all()), norm.fallbacks   # blank: unchanged
    (True, 1)
    """

    name = "macenko"

    def _stains(self, od_tissue: np.ndarray) -> np.ndarray:
        return macenko_stains(od_tissue)
