"""Ground truth of a phantom study (``lncr synth``) at tile level, to check explanations.

The phantom writes a lesion label map per slide (``masks/<patient>_<stain>.png``, one pixel per
``mask_downsample`` level-0 pixels, codes in ``truth.json``). This module answers, for tiles
given by their level-0 box: which fraction of each tile is lesion, which planted tissue class
dominates it, and whether a level-0 point falls on a lesion. Codes ≥ 2 are lesions
(fibrosis with inflammation, crescent, sclerosis, wire loop); 1 is normal tissue.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LESION_MIN_CODE = 2


class PhantomTruth:
    """The masks and codes of one phantom study folder (the folder holding ``truth.json``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        truth = json.loads((self.folder / "truth.json").read_text())
        generator = truth["generator"]
        self.codes: dict[str, int] = generator["mask_codes"]
        self.names = {v: k for k, v in self.codes.items()}
        self.downsample = int(generator["mask_downsample"])
        self.patients = truth["patients"]
        self._masks: dict[tuple[str, str], np.ndarray] = {}
        self._near: dict[tuple[str, str, int], np.ndarray] = {}

    @classmethod
    def for_slide(cls, slide: str | Path) -> "PhantomTruth | None":
        """The phantom a slide file belongs to (``<study>/slides/x.tiff``), or None."""
        folder = Path(slide).resolve().parent.parent
        return cls(folder) if (folder / "truth.json").exists() else None

    def mask(self, patient_id: str, stain: str) -> np.ndarray:
        key = (patient_id, stain)
        if key not in self._masks:
            from PIL import Image

            rel = self.patients[patient_id]["slides"][stain]["mask"]
            self._masks[key] = np.asarray(Image.open(self.folder / rel))
        return self._masks[key]

    def _box(self, mask: np.ndarray, x: float, y: float, size0: float) -> np.ndarray:
        d = self.downsample
        x0, y0 = int(np.floor(x / d)), int(np.floor(y / d))
        x1, y1 = int(np.ceil((x + size0) / d)), int(np.ceil((y + size0) / d))
        return mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]

    def tile_fractions(self, patient_id: str, stain: str, x, y, size0) -> np.ndarray:
        """(n, max code + 1): the fraction of each tile's mask pixels with each code."""
        mask = self.mask(patient_id, stain)
        n_codes = max(self.codes.values()) + 1
        out = np.zeros((len(x), n_codes))
        for i, (a, b, s) in enumerate(zip(x, y, size0)):
            box = self._box(mask, float(a), float(b), float(s))
            if box.size:
                out[i] = np.bincount(box.ravel(), minlength=n_codes)[:n_codes] / box.size
        return out

    def lesion_fraction(self, patient_id: str, stain: str, x, y, size0,
                        tolerance: float = 0.0) -> np.ndarray:
        """Fraction of each tile covered by lesions; with ``tolerance`` (level-0 px), the
        fraction of its points within that distance of a lesion (the chance that a random
        point of the tile scores a hit under :meth:`on_lesion` with the same tolerance)."""
        if not tolerance:
            return self.tile_fractions(patient_id, stain, x, y, size0)[:, LESION_MIN_CODE:].sum(1)
        near = self.near_lesion(patient_id, stain, tolerance)
        out = np.zeros(len(x))
        for i, (a, b, s) in enumerate(zip(x, y, size0)):
            box = self._box(near, float(a), float(b), float(s))
            out[i] = box.mean() if box.size else 0.0
        return out

    def tile_classes(self, patient_id: str, stain: str, x, y, size0,
                     min_fraction: float = 0.05) -> list[str]:
        """Each tile's planted class: its most extensive lesion when lesions cover at least
        ``min_fraction`` of it, else ``tissue``."""
        fractions = self.tile_fractions(patient_id, stain, x, y, size0)
        lesions = fractions[:, LESION_MIN_CODE:]
        return [self.names[LESION_MIN_CODE + int(row.argmax())] if row.max() >= min_fraction
                else "tissue" for row in lesions]

    def lesion_outcome(self) -> int:
        """The outcome the phantom's lesions are evidence for: the label whose patients carry
        the larger mean lesion burden (non-CR, 0, unless the labels were planted the other way
        round). Raises when the two groups' burdens are equal (e.g. no lesions at all)."""
        burdens: dict[int, list[float]] = {0: [], 1: []}
        for p in self.patients.values():
            burdens[int(p["label"])].append(float(p["burden"]))
        means = {k: float(np.mean(v)) if v else float("nan") for k, v in burdens.items()}
        if not means[0] != means[1]:
            raise ValueError(f"{self.folder / 'truth.json'}: lesion burden does not differ "
                             f"between outcomes ({means}); the pointing game needs lesions that "
                             "are evidence for one outcome")
        return 0 if means[0] > means[1] else 1

    def near_lesion(self, patient_id: str, stain: str, tolerance: float = 0.0) -> np.ndarray:
        """The mask's lesion pixels, grown by ``tolerance`` level-0 px (cached)."""
        r = int(np.ceil(tolerance / self.downsample))
        key = (patient_id, stain, r)
        if key not in self._near:
            from scipy.ndimage import maximum_filter

            lesion = self.mask(patient_id, stain) >= LESION_MIN_CODE
            self._near[key] = maximum_filter(lesion, size=2 * r + 1) if r else lesion
        return self._near[key]

    def lesion_grid(self, patient_id: str, stain: str, x0: float, y0: float, side: float,
                    shape: tuple[int, int], tolerance: float = 0.0) -> np.ndarray:
        """(h, w) booleans for a map of ``shape`` covering the level-0 square at (x0, y0) of
        ``side`` px: whether each map pixel's centre lies on a lesion (within ``tolerance``
        level-0 px). A random point of the square hits with probability ``grid.mean()``."""
        h, w = shape
        cx = x0 + (np.arange(w) + 0.5) * side / w
        cy = y0 + (np.arange(h) + 0.5) * side / h
        mask = self.near_lesion(patient_id, stain, tolerance)
        d = self.downsample
        i = np.clip((cy // d).astype(int), 0, mask.shape[0] - 1)
        j = np.clip((cx // d).astype(int), 0, mask.shape[1] - 1)
        inside = ((cy >= 0) & (cy < mask.shape[0] * d))[:, None] & (
            (cx >= 0) & (cx < mask.shape[1] * d))[None, :]
        return mask[np.ix_(i, j)] & inside

    def on_lesion(self, patient_id: str, stain: str, px, py, tolerance: float = 0.0
                  ) -> np.ndarray:
        """Whether each level-0 point lies on a lesion (within ``tolerance`` level-0 px)."""
        mask = self.mask(patient_id, stain)
        d = self.downsample
        r = int(np.ceil(tolerance / d))
        hits = []
        for a, b in zip(px, py):
            i, j = int(b // d), int(a // d)
            box = mask[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1]
            hits.append(bool(box.size and (box >= LESION_MIN_CODE).any()))
        return np.array(hits, dtype=bool)
