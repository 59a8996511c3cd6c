"""Vahadane et al. (2016) structure-preserving normalisation: stains by sparse non-negative
matrix factorisation of tissue optical densities.

The original (and StainTools) solve the sparse NMF with SPAMS dictionary learning, at about
one tile per second. lncr solves the same problem — OD ≈ C·W with C ≥ 0 sparse (L1 weight
λ = 0.1) and W ≥ 0 with unit rows — with multiplicative updates started from the Macenko
vectors on a fixed subsample of tissue pixels, which converges in a few dozen cheap
iterations. Concentrations of all pixels are then non-negative least-squares solutions
(two stains: unconstrained solution, negatives clipped), and the stain maxima are matched to the
reference as in Macenko.
"""

from __future__ import annotations

import numpy as np

from lncr.tiling.normalisers.base import NotEnoughTissue
from lncr.tiling.normalisers.macenko import MatrixNormaliser, macenko_stains

LAMBDA = 0.1
ITERATIONS = 40


def sparse_nmf_stains(od_tissue: np.ndarray, lam: float = LAMBDA,
                      iterations: int = ITERATIONS) -> np.ndarray:
    """(2, 3) unit stain vectors by L1-sparse NMF, haematoxylin-like first."""
    v = od_tissue.astype(np.float32)
    w = macenko_stains(v) + 1e-3  # strictly positive start
    c = np.maximum(v @ np.linalg.pinv(w), 1e-3).astype(np.float32)
    eps = np.float32(1e-9)
    for _ in range(iterations):
        c *= (v @ w.T) / (c @ (w @ w.T) + lam + eps)
        w *= (c.T @ v) / ((c.T @ c) @ w + eps)
        norm = np.linalg.norm(w, axis=1, keepdims=True) + eps
        w /= norm
        c *= norm.T
    if not np.isfinite(w).all() or np.allclose(w[0], w[1], atol=1e-4):
        raise NotEnoughTissue("sparse NMF did not separate two stains")
    order = np.argsort(-w[:, 0])  # larger red absorbance first
    return w[order].astype(np.float32)


#: Tissue pixels used by the factorisation (a fixed-stride subsample).
NMF_PIXELS = 4000


class Vahadane(MatrixNormaliser):
    """Vahadane normalisation (sparse NMF stain separation, non-negative concentrations)."""

    name = "vahadane"
    clip_negative = True

    def _stains(self, od_tissue: np.ndarray) -> np.ndarray:
        stride = max(1, len(od_tissue) // NMF_PIXELS)
        return sparse_nmf_stains(od_tissue[::stride])
