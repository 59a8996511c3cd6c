"""Dyes and stains of the phantom: how tissue compartments absorb light in each stain.

A slide is rendered in optical-density (OD) space: every pixel holds the amount of each tissue
compartment (nuclei, cytoplasm, basement membrane, ...). A stain maps compartments to dye
concentrations, each dye has an OD colour vector, and the Beer–Lambert law turns the summed OD
into RGB: ``I = I0 * 10 ** (-OD)``.

Dye vectors start from the colour-deconvolution literature (Ruifrok & Johnston, 2001) and were
adjusted by eye so that rendered slides resemble typical scans (eosin pinker, Schiff magenta);
silver and iron haematoxylin are hand-chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Tissue compartments, in the order of the last axis of a compartment array.
COMPARTMENTS: tuple[str, ...] = (
    "nucleus",  # chromatin
    "cytoplasm",  # epithelial and other cell cytoplasm
    "membrane",  # basement membranes: tubular, Bowman's capsule, glomerular capillary walls
    "mesangium",  # mesangial matrix and hyaline (sclerosis)
    "collagen",  # interstitial collagen, fibrosis
    "erythrocyte",  # red blood cells
    "brush_border",  # apical brush border of proximal tubules
)
N_COMPARTMENTS = len(COMPARTMENTS)

#: Optical-density colour of one unit of each dye (R, G, B absorbance, unit length).
DYES: dict[str, tuple[float, float, float]] = {
    "haematoxylin": (0.650, 0.704, 0.286),
    "eosin": (0.050, 0.840, 0.540),
    "schiff_magenta": (0.120, 0.960, 0.250),
    "silver": (0.570, 0.600, 0.560),
    "iron_haematoxylin": (0.560, 0.640, 0.520),
    "acid_fuchsin": (0.100, 0.737, 0.668),
    "aniline_blue": (0.799, 0.591, 0.105),
}


@dataclass(frozen=True)
class StainRecipe:
    """Which dyes a stain uses and how much of each dye binds to each compartment."""

    dyes: tuple[str, ...]
    #: ``uptake[compartment] = concentration of each dye`` (same order as ``dyes``).
    uptake: dict[str, tuple[float, ...]]

    def concentration_matrix(self) -> np.ndarray:
        """(compartments × dyes) array of dye concentration per unit of compartment."""
        return np.array([self.uptake.get(c, (0.0,) * len(self.dyes)) for c in COMPARTMENTS],
                        dtype=np.float64)


RECIPES: dict[str, StainRecipe] = {
    # Haematoxylin (blue-purple nuclei) and eosin (pink cytoplasm, membranes, collagen).
    "HE": StainRecipe(
        dyes=("haematoxylin", "eosin"),
        uptake={
            "nucleus": (0.95, 0.12),
            "cytoplasm": (0.04, 0.42),
            "membrane": (0.03, 0.50),
            "mesangium": (0.06, 0.45),
            "collagen": (0.02, 0.30),
            "erythrocyte": (0.00, 0.95),
            "brush_border": (0.02, 0.45),
        },
    ),
    # Periodic acid–Schiff: magenta basement membranes, mesangium and brush border.
    "PAS": StainRecipe(
        dyes=("haematoxylin", "schiff_magenta"),
        uptake={
            "nucleus": (0.85, 0.08),
            "cytoplasm": (0.05, 0.34),
            "membrane": (0.00, 0.90),
            "mesangium": (0.03, 0.70),
            "collagen": (0.02, 0.28),
            "erythrocyte": (0.00, 0.22),
            "brush_border": (0.00, 0.85),
        },
    ),
    # Jones PAS-methenamine silver: black membranes and matrix on a pale H&E counterstain.
    "PASM": StainRecipe(
        dyes=("haematoxylin", "eosin", "silver"),
        uptake={
            "nucleus": (0.70, 0.05, 0.10),
            "cytoplasm": (0.02, 0.26, 0.02),
            "membrane": (0.00, 0.00, 1.10),
            "mesangium": (0.00, 0.08, 0.62),
            "collagen": (0.00, 0.12, 0.30),
            "erythrocyte": (0.00, 0.70, 0.00),
            "brush_border": (0.00, 0.15, 0.20),
        },
    ),
    # Masson's trichrome: dark nuclei, red cytoplasm and erythrocytes, blue collagen.
    "MASSON": StainRecipe(
        dyes=("iron_haematoxylin", "acid_fuchsin", "aniline_blue"),
        uptake={
            "nucleus": (0.95, 0.10, 0.00),
            "cytoplasm": (0.03, 0.50, 0.04),
            "membrane": (0.00, 0.05, 0.50),
            "mesangium": (0.00, 0.12, 0.45),
            "collagen": (0.00, 0.00, 0.55),
            "erythrocyte": (0.00, 0.95, 0.00),
            "brush_border": (0.00, 0.35, 0.10),
        },
    ),
}


@dataclass(frozen=True)
class CohortStyle:
    """How a hospital's lab and scanner render a stain: the part that differs between cohorts."""

    #: Added to every dye vector before re-normalising (per dye name): a shifted stain colour.
    dye_shift: dict[str, tuple[float, float, float]]
    #: Multiplies every dye concentration: darker (> 1) or paler (< 1) staining.
    intensity: float
    #: Incident light I0 (0-255): the brightness of empty glass.
    brightness: float
    #: JPEG quality of the scanner's tiles.
    jpeg_quality: int


DEVELOPMENT_STYLE = CohortStyle(dye_shift={}, intensity=1.0, brightness=243.0, jpeg_quality=90)

#: Another hospital: bluer haematoxylin, more magenta eosin and Schiff, browner silver, a more
#: orange fuchsin and a greener collagen counterstain (as labs using light green instead of
#: aniline blue); darker staining, dimmer light and stronger JPEG compression.
EXTERNAL_STYLE = CohortStyle(
    dye_shift={
        "haematoxylin": (0.12, -0.05, 0.18),
        "iron_haematoxylin": (0.14, -0.06, 0.20),
        "eosin": (0.14, 0.00, 0.12),
        "schiff_magenta": (0.12, -0.05, 0.14),
        "silver": (-0.08, 0.02, 0.10),
        "acid_fuchsin": (0.15, -0.08, -0.22),
        "aniline_blue": (-0.30, 0.20, 0.25),
    },
    intensity=1.18,
    brightness=230.0,
    jpeg_quality=72,
)


def dye_matrix(dyes: tuple[str, ...], style: CohortStyle,
               jitter: np.ndarray | None = None) -> np.ndarray:
    """(dyes × RGB) OD vectors of ``dyes`` under ``style``, each of unit length.

    ``jitter`` (dyes × 3) adds a small per-slide variation before normalising.
    """
    rows = []
    for i, name in enumerate(dyes):
        v = np.asarray(DYES[name], dtype=np.float64) + np.asarray(
            style.dye_shift.get(name, (0.0, 0.0, 0.0)))
        if jitter is not None:
            v = v + jitter[i]
        v = np.clip(v, 0.01, None)
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows)


def compartment_od(stain: str, style: CohortStyle, rng: np.random.Generator) -> np.ndarray:
    """(compartments × RGB) optical density of one unit of each compartment on one slide.

    Includes the cohort's style and a per-slide variation drawn from ``rng`` (staining batch,
    section thickness), so that no two slides are coloured identically.
    """
    recipe = RECIPES[stain]
    n = len(recipe.dyes)
    jitter = rng.normal(0.0, 0.02, size=(n, 3))
    per_dye_amount = rng.normal(1.0, 0.06, size=n).clip(0.8, 1.2)
    conc = recipe.concentration_matrix() * per_dye_amount[None, :] * style.intensity
    return (conc @ dye_matrix(recipe.dyes, style, jitter)).astype(np.float32)
