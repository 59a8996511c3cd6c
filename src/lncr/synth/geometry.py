"""Tissue geometry of a phantom renal needle biopsy, in micrometres.

A patient has one geometry (core outline, glomeruli, tubules, arterioles, fibrotic patches);
each of the patient's stains is a serial section of it: the same structures, slightly moved and
rotated, with cells drawn anew (:func:`section_of`). Lesions are planted from the patient's
latent lesion burden.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

GLOMERULAR_LESIONS: tuple[str, ...] = ("crescent", "sclerosis", "wire_loop")


@dataclass(frozen=True)
class Core:
    """A needle core lying roughly along x: a wavy band with ragged edges and slanted ends."""

    x0: float
    x1: float
    y_mid: float
    amplitude: float
    period: float
    phase: float
    half_width: float
    #: Fourier coefficients (amplitude, frequency, phase) of the edge raggedness, per edge.
    upper_edge: tuple[tuple[float, float, float], ...]
    lower_edge: tuple[tuple[float, float, float], ...]
    end_slant: tuple[float, float]

    def centre(self, x: np.ndarray) -> np.ndarray:
        return self.y_mid + self.amplitude * np.sin(2 * np.pi * x / self.period + self.phase)

    def _edge(self, x: np.ndarray, terms: tuple[tuple[float, float, float], ...]) -> np.ndarray:
        out = np.full_like(x, self.half_width, dtype=np.float64)
        for amp, freq, ph in terms:
            out += amp * np.sin(freq * x + ph)
        return out

    def profile(self, step: float, length: float) -> "CoreProfile":
        """Tabulate the x-only parts of the outline every ``step`` µm over [0, length)."""
        x = np.arange(0.0, length + step, step)
        return CoreProfile(self, step, self.centre(x).astype(np.float32),
                           self._edge(x, self.upper_edge).astype(np.float32),
                           self._edge(x, self.lower_edge).astype(np.float32))

    def random_point(self, rng: np.random.Generator, height: float) -> tuple[float, float]:
        """A point to try a structure at: along the core, anywhere across the canvas."""
        return float(rng.uniform(self.x0, self.x1)), float(rng.uniform(0, height))

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Approximate distance (µm) inside the core: positive inside, negative outside."""
        x = np.asarray(x, dtype=np.float64)
        dy = y - self.centre(x)
        up = self._edge(x, self.upper_edge) + dy  # distance to the upper edge (dy < 0 is up)
        down = self._edge(x, self.lower_edge) - dy
        left = (x - self.x0) - self.end_slant[0] * dy
        right = (self.x1 - x) - self.end_slant[1] * dy
        return np.minimum(np.minimum(up, down), np.minimum(left, right))


@dataclass(frozen=True)
class CoreProfile:
    """A core's outline tabulated along x, for fast evaluation on large pixel grids."""

    core: Core
    step: float
    centre: np.ndarray
    upper: np.ndarray
    lower: np.ndarray

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """As :meth:`Core.signed_distance`, to within the table's step."""
        idx = np.clip(np.rint(x / self.step), 0, len(self.centre) - 1).astype(np.intp)
        dy = (y - self.centre[idx]).astype(np.float32)
        c = self.core
        out = np.minimum(self.upper[idx] + dy, self.lower[idx] - dy)
        np.minimum(out, (x - c.x0) - c.end_slant[0] * dy, out=out)
        np.minimum(out, (c.x1 - x) - c.end_slant[1] * dy, out=out)
        return out


@dataclass(frozen=True)
class Tubule:
    x: float
    y: float
    a: float  # semi-axes (µm), outer edge of the epithelium
    b: float
    theta: float
    lumen: float  # lumen radius as a fraction of the outer radius
    membrane: float  # basement-membrane thickness (µm)
    proximal: bool  # has a brush border
    atrophic: bool


@dataclass(frozen=True)
class Glomerulus:
    x: float
    y: float
    tuft: float  # tuft radius (µm)
    capsule: float  # inner radius of Bowman's capsule (µm)
    lobes: tuple[tuple[float, int, float], ...]  # (amplitude fraction, count, phase)
    lesion: str | None  # one of GLOMERULAR_LESIONS
    lesion_start: float  # angle (rad) where a segmental lesion starts
    lesion_span: float  # angular extent (rad); 2π = global


@dataclass(frozen=True)
class Arteriole:
    x: float
    y: float
    lumen: float
    wall: float


@dataclass(frozen=True)
class FibrosisPatch:
    x: float
    y: float
    radius: float
    shape: tuple[tuple[float, int, float], ...]  # radial modulation (amplitude, count, phase)


@dataclass(frozen=True)
class PatientGeometry:
    width: float  # canvas size (µm)
    height: float
    core: Core  # or a :class:`lncr.synth.biopsy.CoreSet` (the same interface)
    glomeruli: tuple[Glomerulus, ...]
    tubules: tuple[Tubule, ...]
    arterioles: tuple[Arteriole, ...]
    patches: tuple[FibrosisPatch, ...]

    def tissue_area_mm2(self) -> float:
        ys, xs = np.mgrid[0:self.height:10.0, 0:self.width:10.0]
        return float((self.core.signed_distance(xs, ys) > 0).sum() * 100.0 / 1e6)


@dataclass(frozen=True)
class Section:
    """One stain's serial section: the patient's geometry under a small rigid motion."""

    geometry: PatientGeometry
    angle: float  # rad
    shift: tuple[float, float]  # µm
    seed: int  # cells of this section

    def to_section(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Patient frame → section frame (µm)."""
        cx, cy = self.geometry.width / 2, self.geometry.height / 2
        c, s = np.cos(self.angle), np.sin(self.angle)
        dx, dy = np.asarray(x) - cx, np.asarray(y) - cy
        return cx + c * dx - s * dy + self.shift[0], cy + s * dx + c * dy + self.shift[1]

    def to_patient(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Section frame → patient frame (µm)."""
        cx, cy = self.geometry.width / 2, self.geometry.height / 2
        c, s = np.cos(self.angle), np.sin(self.angle)
        dx, dy = np.asarray(x) - cx - self.shift[0], np.asarray(y) - cy - self.shift[1]
        return cx + c * dx + s * dy, cy - s * dx + c * dy


@dataclass
class _Occupancy:
    """Coarse occupancy grid for rejection sampling of non-overlapping structures."""

    width: float
    height: float
    cell: float = 2.0
    grid: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.grid = np.zeros((int(self.height / self.cell) + 1, int(self.width / self.cell) + 1), bool)

    def _window(self, x: float, y: float, r: float):
        c = self.cell
        i0, i1 = max(int((y - r) / c), 0), min(int((y + r) / c) + 1, self.grid.shape[0])
        j0, j1 = max(int((x - r) / c), 0), min(int((x + r) / c) + 1, self.grid.shape[1])
        yy = (np.arange(i0, i1) + 0.5)[:, None] * c
        xx = (np.arange(j0, j1) + 0.5)[None, :] * c
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        return (slice(i0, i1), slice(j0, j1)), disc

    def free(self, x: float, y: float, r: float) -> bool:
        win, disc = self._window(x, y, r)
        return not bool((self.grid[win] & disc).any())

    def take(self, x: float, y: float, r: float) -> None:
        win, disc = self._window(x, y, r)
        self.grid[win] |= disc


def fourier_terms(rng: np.random.Generator, n: int, amp: float, lo: float, hi: float
             ) -> tuple[tuple[float, float, float], ...]:
    return tuple((float(rng.uniform(0.3, 1.0) * amp), float(rng.uniform(lo, hi)),
                  float(rng.uniform(0, 2 * np.pi))) for _ in range(n))


def _lobes(rng: np.random.Generator, amp: float, counts: tuple[int, int]
           ) -> tuple[tuple[float, int, float], ...]:
    return tuple((float(rng.uniform(0.3, 1.0) * amp), int(rng.integers(*counts)),
                  float(rng.uniform(0, 2 * np.pi))) for _ in range(2))


def radial_modulation(angle: np.ndarray, terms: tuple[tuple[float, int, float], ...]) -> np.ndarray:
    """1 + Σ amp·sin(k·angle + phase): a lobulated outline."""
    out = np.ones_like(angle, dtype=np.float64)
    for amp, k, ph in terms:
        out += amp * np.sin(k * angle + ph)
    return out


def make_patient_geometry(rng: np.random.Generator, width: float, height: float,
                          burden: float, core=None) -> PatientGeometry:
    """Draw one patient's biopsy: outline (one band-shaped core filling the canvas, unless
    ``core`` gives the cores, :func:`lncr.synth.biopsy.draw_cores`), glomeruli (lesioned with
    a probability that grows with ``burden`` in [0, 1]), arterioles, fibrotic patches (more
    with burden) and tubules. The draws happen in that order (the seed fixes the biopsy)."""
    core = _draw_core(rng, width, height) if core is None else core
    area_mm2 = max(PatientGeometry(width, height, core, (), (), (), ()).tissue_area_mm2(), 1e-3)
    d = _Drawer(rng, core, _Occupancy(width, height), height)
    glomeruli = d.glomeruli(max(2, int(rng.poisson(4.0 * area_mm2))), 0.05 + 0.8 * burden)
    arterioles = d.arterioles(area_mm2)
    patches = d.fibrosis(0.02 + 0.35 * burden, area_mm2)
    tubules = d.tubules(patches, area_mm2)
    return PatientGeometry(width, height, core, tuple(glomeruli), tuple(tubules),
                           tuple(arterioles), tuple(patches))


def _draw_core(rng: np.random.Generator, width: float, height: float) -> Core:
    margin_x = 0.05 * width + 20
    return Core(
        x0=margin_x + rng.uniform(0, 0.03 * width),
        x1=width - margin_x - rng.uniform(0, 0.03 * width),
        y_mid=height / 2,
        amplitude=rng.uniform(0.02, 0.06) * height,
        period=rng.uniform(1.5, 3.0) * width,
        phase=rng.uniform(0, 2 * np.pi),
        half_width=0.36 * height,
        upper_edge=fourier_terms(rng, 4, 0.012 * height, 2 * np.pi / 600, 2 * np.pi / 90),
        lower_edge=fourier_terms(rng, 4, 0.012 * height, 2 * np.pi / 600, 2 * np.pi / 90),
        end_slant=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25))),
    )


class _Drawer:
    """Places the structures of one biopsy without overlaps (``occupancy``)."""

    def __init__(self, rng: np.random.Generator, core: Core, occupancy: _Occupancy,
                 height: float):
        self.rng, self.core, self.occupancy, self.height = rng, core, occupancy, height

    def inside(self, x: float, y: float, r: float) -> bool:
        return float(self.core.signed_distance(np.array([x]), np.array([y]))[0]) > r

    def random_point(self) -> tuple[float, float]:
        return self.core.random_point(self.rng, self.height)

    def glomeruli(self, n_glom: int, p_lesion: float) -> list[Glomerulus]:
        rng, out = self.rng, []
        for _ in range(400 * n_glom):
            if len(out) == n_glom:
                break
            tuft = float(rng.uniform(72, 118))
            capsule = tuft + float(rng.uniform(7, 15))
            x, y = self.random_point()
            if not self.inside(x, y, capsule + 6) or not self.occupancy.free(x, y, capsule + 8):
                continue
            lesion = str(rng.choice(GLOMERULAR_LESIONS)) if rng.random() < p_lesion else None
            span = (2 * np.pi if lesion == "wire_loop"
                    else float(rng.uniform(0.35, 1.0) * 2 * np.pi))
            if lesion == "sclerosis" and rng.random() < 0.3:
                span = 2 * np.pi  # global sclerosis
            out.append(Glomerulus(x, y, tuft, capsule, _lobes(rng, 0.07, (4, 8)), lesion,
                                  float(rng.uniform(0, 2 * np.pi)), span))
            self.occupancy.take(x, y, capsule + 4)
        return out

    def arterioles(self, area_mm2: float) -> list[Arteriole]:
        rng, out = self.rng, []
        for _ in range(200):
            if len(out) == max(1, int(rng.poisson(0.6 * area_mm2))):
                break
            lumen, wall = float(rng.uniform(8, 16)), float(rng.uniform(10, 18))
            x, y = self.random_point()
            if self.inside(x, y, lumen + wall + 5) and self.occupancy.free(x, y,
                                                                           lumen + wall + 6):
                out.append(Arteriole(x, y, lumen, wall))
                self.occupancy.take(x, y, lumen + wall + 3)
        return out

    def fibrosis(self, fraction: float, area_mm2: float) -> list[FibrosisPatch]:
        rng, mean_r, out = self.rng, 140.0, []
        n_patch = int(rng.poisson(fraction * area_mm2 * 1e6 / (np.pi * mean_r ** 2)))
        for _ in range(n_patch):
            for _ in range(50):
                x, y = self.random_point()
                if self.inside(x, y, 0):
                    out.append(FibrosisPatch(x, y, float(rng.uniform(0.55, 1.45) * mean_r),
                                             _lobes(rng, 0.18, (2, 6))))
                    break
        return out

    def tubules(self, patches: list[FibrosisPatch], area_mm2: float) -> list[Tubule]:
        """Cortex is packed with tubules: a jittered hexagonal lattice first, then smaller
        tubules thrown into the gaps; fibrosis replaces or atrophies them."""
        rng, out, core, spacing = self.rng, [], self.core, 50.0
        patches = FibrosisWeight(patches)
        for row, y in enumerate(np.arange(spacing / 2, self.height, spacing * np.sqrt(3) / 2)):
            for x in np.arange(core.x0 + (row % 2) * spacing / 2, core.x1, spacing):
                self.tubule(out, patches, float(x + rng.normal(0, 6)),
                            float(y + rng.normal(0, 6)), float(rng.uniform(18, 24)))
        for _ in range(int(area_mm2 * 1e6 / (np.pi * 20 ** 2) * 6)):
            x, y = self.random_point()
            self.tubule(out, patches, x, y, float(rng.uniform(12, 20)))
        return out

    def tubule(self, out: list[Tubule], patches: FibrosisWeight, x: float, y: float,
               a: float) -> None:
        rng = self.rng
        fib = patches(x, y)
        atrophic = rng.random() < 0.75 * fib
        if fib > 0.5 and rng.random() < 0.55:
            return  # fibrosis replaces tubules
        if atrophic:
            a = float(rng.uniform(9, 17))
        b = a * float(rng.uniform(0.75, 1.0))
        membrane = float(rng.uniform(2.2, 3.6) if atrophic else rng.uniform(0.9, 1.5))
        reach = a + membrane + 0.8
        if not self.inside(x, y, reach + 2) or not self.occupancy.free(x, y, reach):
            return
        out.append(Tubule(x, y, a, b, float(rng.uniform(0, np.pi)),
                          float(rng.uniform(0.15, 0.3) if atrophic else rng.uniform(0.3, 0.55)),
                          membrane, bool(rng.random() < 0.6 and not atrophic), bool(atrophic)))
        self.occupancy.take(x, y, reach)


class FibrosisWeight:
    """How deep a point lies inside the fibrotic patches: 0 outside, 1 from 20 µm in (the
    largest over the patches). The patches' outlines are held as arrays, so a point costs one
    vectorised pass instead of a Python loop over the patches (a full-size biopsy has ~10⁵
    tubule candidates and dozens of patches)."""

    def __init__(self, patches: list[FibrosisPatch]):
        self.x = np.array([p.x for p in patches])
        self.y = np.array([p.y for p in patches])
        self.radius = np.array([p.radius for p in patches])
        terms = np.array([p.shape for p in patches], float).reshape(len(patches), 2, 3)
        self.amp, self.count, self.phase = terms[..., 0], terms[..., 1], terms[..., 2]

    def __call__(self, x: float, y: float) -> float:
        if not len(self.x):
            return 0.0
        d = np.hypot(x - self.x, y - self.y)
        ang = np.arctan2(y - self.y, x - self.x)
        modulation = np.ones_like(ang)
        for k in range(self.amp.shape[1]):  # radial_modulation's sum, term by term
            modulation += self.amp[:, k] * np.sin(self.count[:, k] * ang + self.phase[:, k])
        return float(np.clip((self.radius * modulation - d) / 20.0, 0, 1).max())


def section_of(geometry: PatientGeometry, rng: np.random.Generator) -> Section:
    """A serial section: small rotation (≤ 1.5°) and shift (≤ 25 µm), new cells."""
    return Section(geometry, float(np.deg2rad(rng.uniform(-1.5, 1.5))),
                   (float(rng.uniform(-25, 25)), float(rng.uniform(-25, 25))),
                   int(rng.integers(0, 2 ** 31)))


def moved(section: Section) -> PatientGeometry:
    """The section's structures in its own frame (centres moved, orientations turned)."""
    g = section.geometry

    def at(obj):
        x, y = section.to_section(np.array(obj.x), np.array(obj.y))
        return replace(obj, x=float(x), y=float(y))

    tubules = tuple(replace(at(t), theta=t.theta + section.angle) for t in g.tubules)
    glomeruli = tuple(replace(at(q), lesion_start=q.lesion_start + section.angle) for q in g.glomeruli)
    return replace(g, tubules=tubules, glomeruli=glomeruli,
                   arterioles=tuple(at(a) for a in g.arterioles),
                   patches=tuple(at(p) for p in g.patches))
