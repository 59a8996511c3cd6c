"""Cells of a phantom section: a bank of nucleus and erythrocyte stamps, and where to put them.

Drawing tens of thousands of small ellipses one numpy expression at a time would dominate the
render; instead each cell is a pre-rendered stamp pasted with one ``np.maximum`` on a slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lncr.synth.geometry import Glomerulus, PatientGeometry, Section, Tubule, radial_modulation
from lncr.synth.stains import COMPARTMENTS

N_ANGLES = 12
N_SIZES = 3

#: name → (semi-axis a µm range, semi-axis b µm range, chromatin density, compartment)
CELL_KINDS: dict[str, tuple[tuple[float, float], tuple[float, float], float, str]] = {
    "lymphocyte": ((2.3, 2.9), (2.1, 2.6), 1.00, "nucleus"),
    "epithelial": ((3.0, 3.9), (2.3, 3.0), 0.72, "nucleus"),
    "spindle": ((4.5, 6.0), (1.1, 1.6), 0.85, "nucleus"),
    "flat": ((3.5, 4.5), (0.9, 1.3), 0.85, "nucleus"),
    "erythrocyte": ((3.2, 3.8), (3.0, 3.6), 0.90, "erythrocyte"),
}
KIND_INDEX = {name: i for i, name in enumerate(CELL_KINDS)}


@dataclass(frozen=True)
class StampBank:
    stamps: tuple[np.ndarray, ...]  # float32 2-D arrays, odd sizes
    channel: np.ndarray  # compartment index of each stamp

    def index(self, kind: int, size: np.ndarray, angle: np.ndarray) -> np.ndarray:
        return (kind * N_SIZES + size) * N_ANGLES + angle


@lru_cache(maxsize=4)
def stamp_bank(mpp: float) -> StampBank:
    """Render every (kind, size, angle) stamp once for pixels of ``mpp`` µm."""
    rng = np.random.default_rng(12345)  # fixed: the bank is part of the renderer, not a sample
    stamps, channels = [], []
    for name, ((a0, a1), (b0, b1), density, comp) in CELL_KINDS.items():
        for s in range(N_SIZES):
            a = (a0 + (a1 - a0) * s / (N_SIZES - 1)) / mpp
            b = (b0 + (b1 - b0) * s / (N_SIZES - 1)) / mpp
            half = int(np.ceil(a)) + 2
            yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
            for k in range(N_ANGLES):
                t = np.pi * k / N_ANGLES
                u = xx * np.cos(t) + yy * np.sin(t)
                v = -xx * np.sin(t) + yy * np.cos(t)
                r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
                edge = np.clip((1.0 - r) * min(a, b) / 0.8 + 0.5, 0, 1)  # ~1 px antialiased rim
                if name == "erythrocyte":
                    body = 0.65 + 0.35 * np.clip((r - 0.35) / 0.4, 0, 1)  # central pallor
                else:
                    body = 0.78 + 0.22 * np.clip(r, 0, 1)  # denser rim (nuclear membrane)
                    body = body * (0.85 + 0.3 * rng.random(r.shape, dtype=np.float32))  # chromatin
                stamps.append((density * edge * body).astype(np.float32))
                channels.append(COMPARTMENTS.index(comp))
    return StampBank(tuple(stamps), np.array(channels, dtype=np.int16))


@dataclass(frozen=True)
class Cells:
    """Cell positions of one section, in level-0 pixels, sorted by y."""

    x: np.ndarray
    y: np.ndarray
    stamp: np.ndarray


def _on_ellipse(t: Tubule, frac: np.ndarray, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u, v = t.a * frac * np.cos(angle), t.b * frac * np.sin(angle)
    c, s = np.cos(t.theta), np.sin(t.theta)
    return t.x + c * u - s * v, t.y + s * u + c * v


def _tuft_radius(g: Glomerulus, angle: np.ndarray) -> np.ndarray:
    return g.tuft * radial_modulation(angle, g.lobes)


def in_lesion_sector(g: Glomerulus, angle: np.ndarray) -> np.ndarray:
    return np.mod(angle - g.lesion_start, 2 * np.pi) < g.lesion_span


def capillary_loops(g: Glomerulus, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) array of loop centre x, y and lumen radius (µm), packed without overlap inside
    the tuft, none inside a sclerosed segment."""
    loops: list[tuple[float, float, float]] = []
    arr = np.zeros((0, 3))
    target = int((g.tuft / 9.0) ** 2)
    for _ in range(target * 12):
        if len(loops) >= target:
            break
        rad = float(rng.uniform(3.0, 6.0))
        d = g.tuft * np.sqrt(rng.random()) * 0.95
        ang = float(rng.uniform(0, 2 * np.pi))
        if d + rad > 0.97 * _tuft_radius(g, np.array(ang)):
            continue
        if g.lesion == "sclerosis" and in_lesion_sector(g, np.array(ang)):
            continue
        x, y = g.x + d * np.cos(ang), g.y + d * np.sin(ang)
        if len(arr) and (np.hypot(arr[:, 0] - x, arr[:, 1] - y) < arr[:, 2] + rad + 1.6).any():
            continue
        loops.append((x, y, rad))
        arr = np.array(loops)
    return arr


def structure_grid(geom: PatientGeometry, cell: float) -> np.ndarray:
    """Boolean grid (µm cells) marking tubules, glomeruli and arterioles of a moved geometry."""
    grid = np.zeros((int(geom.height / cell) + 1, int(geom.width / cell) + 1), bool)

    def window(x: float, y: float, r: float):
        i0, i1 = max(int((y - r) / cell), 0), min(int((y + r) / cell) + 2, grid.shape[0])
        j0, j1 = max(int((x - r) / cell), 0), min(int((x + r) / cell) + 2, grid.shape[1])
        yy = (np.arange(i0, i1) + 0.5)[:, None] * cell - y
        xx = (np.arange(j0, j1) + 0.5)[None, :] * cell - x
        return (slice(i0, i1), slice(j0, j1)), xx, yy

    for t in geom.tubules:
        win, xx, yy = window(t.x, t.y, t.a + t.membrane)
        c, s = np.cos(t.theta), np.sin(t.theta)
        u, v = c * xx + s * yy, -s * xx + c * yy
        grid[win] |= (u / (t.a + t.membrane)) ** 2 + (v / (t.b + t.membrane)) ** 2 <= 1
    for g in geom.glomeruli:
        win, xx, yy = window(g.x, g.y, g.capsule + 3)
        grid[win] |= xx ** 2 + yy ** 2 <= (g.capsule + 3) ** 2
    for a in geom.arterioles:
        win, xx, yy = window(a.x, a.y, a.lumen + a.wall + 6)
        grid[win] |= xx ** 2 + yy ** 2 <= (a.lumen + a.wall + 6) ** 2
    return grid


class _CellList:
    """Cell centres (µm) and kinds, gathered structure by structure."""

    def __init__(self):
        self.xs: list[np.ndarray] = []
        self.ys: list[np.ndarray] = []
        self.kinds: list[np.ndarray] = []

    def add(self, x, y, kind: str) -> None:
        x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
        self.xs.append(x)
        self.ys.append(y)
        self.kinds.append(np.full(x.shape, KIND_INDEX[kind]))


def place_cells(section: Section, geom: PatientGeometry, loops: list[np.ndarray],
                fibrosis: "callable", rng: np.random.Generator, mpp: float) -> Cells:
    """Every nucleus and erythrocyte of a section (``geom`` is the section's moved geometry;
    ``fibrosis(x, y)`` gives the fibrotic weight in [0, 1] at points in µm). The random draws
    happen in a fixed order: tubules, glomeruli, arterioles, interstitium, then stamps."""
    cells = _CellList()
    for t in geom.tubules:
        rho = (t.a + t.b) / 2
        n = max(3, int(2 * np.pi * rho * (t.lumen + 1) / 2 / (10.0 if t.atrophic else 7.5)))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        frac = (t.lumen + 1) / 2 + rng.normal(0, 0.05, n)
        cells.add(*_on_ellipse(t, frac, ang), "flat" if t.atrophic else "epithelial")
    for g, g_loops in zip(geom.glomeruli, loops):
        _glomerulus_cells(g, g_loops, rng, cells)
    for a in geom.arterioles:
        n = int(2 * np.pi * (a.lumen + a.wall / 2) / 6)
        ang = rng.uniform(0, 2 * np.pi, n)
        d = rng.uniform(a.lumen + 2, a.lumen + a.wall - 1, n)
        cells.add(a.x + d * np.cos(ang), a.y + d * np.sin(ang), "spindle")
        n_rbc = int(a.lumen ** 2 / 12)
        ang, d = rng.uniform(0, 2 * np.pi, n_rbc), a.lumen * np.sqrt(rng.random(n_rbc)) * 0.8
        cells.add(a.x + d * np.cos(ang), a.y + d * np.sin(ang), "erythrocyte")
    _interstitial_cells(section, geom, fibrosis, rng, cells)
    x_um, y_um = np.concatenate(cells.xs), np.concatenate(cells.ys)
    kind = np.concatenate(cells.kinds)
    n = len(x_um)
    size = rng.integers(0, N_SIZES, n)
    angle = rng.integers(0, N_ANGLES, n)
    bank = stamp_bank(mpp)
    stamp = bank.index(kind, size, angle)
    order = np.argsort(y_um, kind="stable")
    return Cells(x_um[order] / mpp, y_um[order] / mpp, stamp[order])


def _glomerulus_cells(g, g_loops: np.ndarray, rng: np.random.Generator,
                      cells: _CellList) -> None:
    """Tuft nuclei (fewer in sclerosis, none in capillary lumens), parietal cells, crescent
    cells, and erythrocytes in some capillary lumens."""
    n = int(np.pi * g.tuft ** 2 / (70.0 if g.lesion != "sclerosis" else 110.0))
    d = g.tuft * np.sqrt(rng.random(n)) * 0.95
    ang = rng.uniform(0, 2 * np.pi, n)
    keep = d < 0.95 * _tuft_radius(g, ang)
    if g.lesion == "sclerosis":
        keep &= ~in_lesion_sector(g, ang) | (rng.random(n) < 0.25)
    x, y = g.x + d * np.cos(ang), g.y + d * np.sin(ang)
    if len(g_loops):  # not inside capillary lumens
        dist = np.hypot(x[:, None] - g_loops[None, :, 0], y[:, None] - g_loops[None, :, 1])
        keep &= (dist > g_loops[None, :, 2] + 0.5).all(axis=1)
    cells.add(x[keep], y[keep], "epithelial" if rng.random() < 0.5 else "lymphocyte")
    n_par = int(2 * np.pi * g.capsule / 14)
    ang = rng.uniform(0, 2 * np.pi, n_par)
    cells.add(g.x + (g.capsule - 0.8) * np.cos(ang), g.y + (g.capsule - 0.8) * np.sin(ang),
              "flat")
    if g.lesion == "crescent":
        n_c = int(g.lesion_span * g.capsule * (g.capsule - g.tuft * 0.7) / 90.0)
        ang = g.lesion_start + rng.uniform(0, g.lesion_span, n_c)
        d = rng.uniform(g.tuft * 0.75, g.capsule - 1.5, n_c)
        cells.add(g.x + d * np.cos(ang), g.y + d * np.sin(ang), "epithelial")
    if len(g_loops):  # erythrocytes in some capillary lumens
        pick = g_loops[rng.random(len(g_loops)) < 0.35]
        cells.add(pick[:, 0], pick[:, 1], "erythrocyte")


def _interstitial_cells(section: Section, geom: PatientGeometry, fibrosis,
                        rng: np.random.Generator, cells: _CellList) -> None:
    """Sparse fibroblasts and capillaries, dense lymphocytes in fibrosis."""
    core = section.geometry.core
    grid_cell = 2.0
    occupied = structure_grid(geom, grid_cell)
    n = int(geom.width * geom.height / 140.0)
    x, y = rng.uniform(0, geom.width, n), rng.uniform(0, geom.height, n)
    px, py = section.to_patient(x, y)
    keep = core.signed_distance(px, py) > 3.0
    x, y = x[keep], y[keep]
    free = ~occupied[(y / grid_cell).astype(int).clip(0, occupied.shape[0] - 1),
                     (x / grid_cell).astype(int).clip(0, occupied.shape[1] - 1)]
    x, y = x[free], y[free]
    fib = fibrosis(x, y)
    u = rng.random(len(x))
    lymph = u < 0.02 + 0.55 * fib
    fibro = (u >= 0.02 + 0.55 * fib) & (u < 0.045 + 0.6 * fib)
    rbc = (u >= 0.97) & (fib < 0.3)
    cells.add(x[lymph], y[lymph], "lymphocyte")
    cells.add(x[fibro], y[fibro], "spindle")
    cells.add(x[rbc], y[rbc], "erythrocyte")
