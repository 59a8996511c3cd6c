"""Needle-biopsy anatomy at true scale: 1–3 cores of renal cortex on a slide of glass.

A percutaneous renal biopsy is taken with a 14–18 G needle: each core is about 0.8–1.2 mm wide
and 5–15 mm long, and a slide carries one section of each core of the block, side by side. At
0.25 µm/px a 10 mm core is 40,000 px long; a 512-px tile at 10x covers 512 µm, half a core's
width, so most 10x tiles straddle the core's edge and fail the glass rule — the sparse data
real cohorts give. (The ``band`` anatomy of :mod:`lncr.synth.geometry` fills most of a small
canvas with one core instead: cheaper, and enough for tests of everything else.)

:func:`draw_cores` draws a patient's cores and the canvas around them; every section (stain)
of the patient shows the same cores. The cores lie along x, one above the other, each with
its own length, width, offset, waviness and ragged edges (:class:`lncr.synth.geometry.Core`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lncr.synth.geometry import Core, CoreProfile, fourier_terms

#: Glass around the cores (µm): room for the serial sections' small rotation and shift.
MARGIN_UM = 600.0
#: Glass between two cores (µm).
GAP_UM = (300.0, 900.0)


@dataclass(frozen=True)
class BiopsyAnatomy:
    """How many cores a slide has and how large they are (uniform ranges; mm)."""

    cores: tuple[int, int] = (1, 3)
    length_mm: tuple[float, float] = (5.0, 15.0)
    width_mm: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        for name, (lo, hi), floor in (("cores", self.cores, 1),
                                      ("core length", self.length_mm, 0.3),
                                      ("core width", self.width_mm, 0.2)):
            if not floor <= lo <= hi:
                raise ValueError(f"{name} range {lo}–{hi} must satisfy {floor} ≤ min ≤ max")
        if self.cores[1] > 6 or self.length_mm[1] > 25 or self.width_mm[1] > 3:
            raise ValueError("a biopsy slide holds at most 6 cores of at most 25 × 3 mm")


@dataclass(frozen=True)
class CoreSet:
    """Several cores on one slide: tissue is where any core is (the largest signed
    distance)."""

    cores: tuple[Core, ...]
    boxes: tuple[tuple[float, float, float, float], ...]  # per core: x0, x1, y0, y1 (µm)

    @property
    def x0(self) -> float:
        return min(b[0] for b in self.boxes)

    @property
    def x1(self) -> float:
        return max(b[1] for b in self.boxes)

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.maximum.reduce([c.signed_distance(x, y) for c in self.cores])

    def profile(self, step: float, length: float) -> CoreSetProfile:
        return CoreSetProfile(tuple(c.profile(step, length) for c in self.cores))

    def random_point(self, rng: np.random.Generator, height: float) -> tuple[float, float]:
        """A point in one core's bounding box, the core chosen in proportion to its area."""
        areas = np.array([(b[1] - b[0]) * (b[3] - b[2]) for b in self.boxes])
        x0, x1, y0, y1 = self.boxes[int(rng.choice(len(areas), p=areas / areas.sum()))]
        return float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))


@dataclass(frozen=True)
class CoreSetProfile:
    """The cores' outlines tabulated along x (:class:`CoreProfile` each)."""

    profiles: tuple[CoreProfile, ...]

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.maximum.reduce([p.signed_distance(x, y) for p in self.profiles])


def draw_cores(rng: np.random.Generator, anatomy: BiopsyAnatomy
               ) -> tuple[CoreSet, float, float]:
    """A patient's cores and the canvas (width, height in µm) that holds them with glass
    around: cores stacked along y, each shifted along x by a random part of the slack."""
    n = int(rng.integers(anatomy.cores[0], anatomy.cores[1] + 1))
    lengths = rng.uniform(*anatomy.length_mm, n) * 1000.0
    widths = rng.uniform(*anatomy.width_mm, n) * 1000.0
    gaps = rng.uniform(*GAP_UM, max(n - 1, 0))
    width = float(lengths.max()) + 2 * MARGIN_UM
    cores, boxes, y = [], [], MARGIN_UM
    for k in range(n):
        half = widths[k] / 2
        amplitude = float(rng.uniform(0.02, 0.08)) * widths[k]
        x0 = MARGIN_UM + float(rng.uniform(0, lengths.max() - lengths[k]))
        x1 = x0 + float(lengths[k])
        y_mid = y + amplitude + half
        cores.append(Core(
            x0=x0, x1=x1, y_mid=y_mid, amplitude=amplitude,
            period=float(rng.uniform(1.5, 3.0)) * float(lengths[k]),
            phase=float(rng.uniform(0, 2 * np.pi)), half_width=half,
            upper_edge=fourier_terms(rng, 4, 0.012 * widths[k], 2 * np.pi / 600,
                                     2 * np.pi / 90),
            lower_edge=fourier_terms(rng, 4, 0.012 * widths[k], 2 * np.pi / 600,
                                     2 * np.pi / 90),
            end_slant=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25)))))
        reach = half + amplitude + 0.05 * widths[k]  # waviness and raggedness
        boxes.append((x0, x1, y_mid - reach, y_mid + reach))
        y = y_mid + half + amplitude + (gaps[k] if k < n - 1 else 0.0)
    return CoreSet(tuple(cores), tuple(boxes)), width, y + MARGIN_UM
