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
        from scipy.ndimage import maximum_filter

        r = int(np.ceil(tolerance / self.downsample))
        near = maximum_filter(self.mask(patient_id, stain) >= LESION_MIN_CODE, size=2 * r + 1)
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
