"""Render a phantom section into RGB pixels by the Beer–Lambert law, strip by strip.

Each strip of rows is built as an array of compartment amounts (see
:data:`lncr.synth.stains.COMPARTMENTS`), turned into optical density by one matrix product with
the slide's compartment colours, and into RGB by ``I0 * 10 ** -OD``. A lesion label map at a
fixed downsample is produced alongside, from the same geometry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lncr.synth.cells import capillary_loops, in_lesion_sector, place_cells, stamp_bank
from lncr.synth.geometry import PatientGeometry, Section, moved, radial_modulation
from lncr.synth.stains import COMPARTMENTS

NUC, CYTO, MEMB, MES, COL, ERY, BRUSH = (COMPARTMENTS.index(c) for c in (
    "nucleus", "cytoplasm", "membrane", "mesangium", "collagen", "erythrocyte", "brush_border"))

#: Codes of the lesion label map.
MASK_CODES: dict[str, int] = {
    "background": 0,
    "tissue": 1,
    "fibrosis_inflammation": 2,
    "crescent": 3,
    "sclerosis": 4,
    "wire_loop": 5,
}
STRIP = 512  # rows per strip; a multiple of every mask downsample used
#: Columns per piece of a strip (a multiple of every mask downsample): bounds the memory of a
#: strip's compartment arrays on a slide many millimetres wide (a full-size biopsy).
CHUNK = 8192
GLASS = 256  # period (px) of the glass and sensor-noise fields; divides STRIP


@dataclass(frozen=True)
class Rendered:
    rgb: np.ndarray  # (H, W, 3) uint8, level 0
    labels: np.ndarray  # (H // d, W // d) uint8 lesion codes, d = mask_downsample
    mask_downsample: int


def _periodic_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Smooth noise of unit standard deviation that tiles seamlessly (filtered in Fourier space)."""
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    gauss = np.exp(-2 * (np.pi * sigma_px) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    field = np.fft.ifft2(np.fft.fft2(white) * gauss).real
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _ramp(t: np.ndarray, soft: float) -> np.ndarray:
    """0 below -soft/2, 1 above +soft/2, linear between: an antialiased step."""
    out = t * np.float32(1.0 / soft)
    out += np.float32(0.5)
    np.maximum(out, 0.0, out=out)
    np.minimum(out, 1.0, out=out)
    return out


class _Strip:
    """Compartments of rows [y0, y0 + h) and columns [x0, x0 + w) of the canvas, with helpers to draw into windows."""

    def __init__(self, y0: int, h: int, x0: int, w: int, mpp: float):
        self.y0, self.h, self.x0, self.w, self.mpp = y0, h, x0, w, mpp
        self.comp = np.zeros((len(COMPARTMENTS), h, w), np.float32)  # channel-first: contiguous
        self.labels = np.zeros((h, w), np.uint8)

    def window(self, x: float, y: float, r: float):
        """Slices and local µm coordinates (xx, yy relative to (x, y)) of a disc's bounding box,
        or None when it misses the strip."""
        m = self.mpp
        i0, i1 = max(int((y - r) / m) - self.y0, 0), min(int((y + r) / m) + 2 - self.y0, self.h)
        j0, j1 = max(int((x - r) / m) - self.x0, 0), min(int((x + r) / m) + 2 - self.x0, self.w)
        if i0 >= i1 or j0 >= j1:
            return None
        yy = ((np.arange(i0, i1, dtype=np.float32) + self.y0 + 0.5) * m - y)[:, None]
        xx = ((np.arange(j0, j1, dtype=np.float32) + self.x0 + 0.5) * m - x)[None, :]
        return (slice(i0, i1), slice(j0, j1)), xx, yy

    def clear(self, win, inside: np.ndarray, channels: tuple[int, ...] = (COL, CYTO)) -> None:
        """Remove what lies under a structure. Structures never overlap, so only the
        interstitial background (collagen, cytoplasm) needs clearing unless told otherwise."""
        keep = 1.0 - inside
        for c in channels:
            self.comp[(c,) + win] *= keep

    def put(self, win, channel: int, amount: np.ndarray) -> None:
        dst = self.comp[(channel,) + win]
        np.maximum(dst, amount, out=dst)

    def label(self, win, where: np.ndarray, code: int) -> None:
        lab = self.labels[win]
        lab[where & (lab < code)] = code


def _draw_tubule(s: _Strip, t, tex: np.ndarray, m: float) -> None:
    reach = max(t.a, t.b) + t.membrane + 1.0
    w = s.window(t.x, t.y, reach)
    if w is None:
        return
    win, xx, yy = w
    # Normalised elliptic radius r = sqrt((u/a)² + (v/b)²) of the rotated coordinates, as a
    # quadratic form in x and y (fewer full-size array operations).
    c, sn = np.cos(t.theta), np.sin(t.theta)
    qa = np.float32((c / t.a) ** 2 + (sn / t.b) ** 2)
    qb = np.float32(2 * c * sn * (1 / t.a ** 2 - 1 / t.b ** 2))
    qc = np.float32((sn / t.a) ** 2 + (c / t.b) ** 2)
    r = qa * xx * xx + qc * yy * yy
    r += (qb * yy) * xx
    np.sqrt(r, out=r)
    rho = np.float32((t.a + t.b) / 2)
    d_out = rho - rho * r  # µm inside the epithelium's outer edge
    inside = _ramp(d_out + t.membrane, m)
    s.clear(win, inside)
    s.put(win, MEMB, _ramp(-d_out + 0.1, m) * inside * (0.85 if not t.atrophic else 1.0))
    lumen_d = (r - t.lumen) * rho
    epi = _ramp(lumen_d, m) * _ramp(d_out, m)
    s.put(win, CYTO, epi * ((0.78 if t.proximal else 0.55) * (0.85 + 0.25 * tex[win])))
    if t.proximal:
        s.put(win, BRUSH, _ramp(lumen_d, m) * _ramp(2.2 - lumen_d, m) * 0.8)


def _draw_glomerulus(s: _Strip, g, loops: np.ndarray, tex: np.ndarray, m: float) -> None:
    thick = 2.0 if g.lesion != "sclerosis" else 3.2
    w = s.window(g.x, g.y, g.capsule + thick + 1)
    if w is None:
        return
    win, xx, yy = w
    d = np.sqrt(xx ** 2 + yy ** 2)
    ang = np.arctan2(yy, xx)
    tuft_r = g.tuft * radial_modulation(ang, g.lobes)
    sector = in_lesion_sector(g, ang) if g.lesion else np.zeros_like(d, bool)
    if g.lesion == "crescent":  # the crescent compresses the tuft in its sector
        tuft_r = np.where(sector, np.minimum(tuft_r, g.tuft * 0.72), tuft_r)
    inside = _ramp(g.capsule + thick - d, m)
    s.clear(win, inside)
    s.put(win, MEMB, _ramp(d - g.capsule, m) * inside * 0.9)
    s.put(win, CYTO, _ramp(d - (g.capsule - 1.4), m) * _ramp(g.capsule - d, m) * 0.35)
    tuft = _ramp(tuft_r - d, m)
    texw = 0.85 + 0.3 * tex[win]
    s.put(win, MES, tuft * 0.30 * texw)
    s.put(win, CYTO, tuft * 0.16)
    if g.lesion == "sclerosis":
        scl = tuft * sector
        s.put(win, MES, scl * 0.85 * texw)
        s.put(win, COL, scl * 0.30)
        s.label(win, scl > 0.5, MASK_CODES["sclerosis"])
    elif g.lesion == "crescent":
        cres = sector * _ramp(d - tuft_r - 0.5, m) * _ramp(g.capsule - 0.5 - d, m)
        s.put(win, CYTO, cres * 0.5 * texw)
        s.put(win, COL, cres * 0.2)
        s.label(win, cres > 0.5, MASK_CODES["crescent"])
    elif g.lesion == "wire_loop":
        s.label(win, tuft > 0.5, MASK_CODES["wire_loop"])
    wall = 2.6 if g.lesion == "wire_loop" else 0.7
    for lx, ly, lr in loops:
        lw = s.window(lx, ly, lr + wall + 0.6)
        if lw is None:
            continue
        lwin, lxx, lyy = lw
        ld = np.sqrt(lxx ** 2 + lyy ** 2)
        lumen = _ramp(lr - ld, m)
        s.clear(lwin, lumen, (COL, CYTO, MES))
        s.put(lwin, MEMB, _ramp(ld - lr, m) * _ramp(lr + wall - ld, m) * 0.9)
        if g.lesion == "wire_loop":
            s.put(lwin, MES, lumen * 0.35 * (lr < 4.0))  # hyaline thrombi in small loops


def _draw_arteriole(s: _Strip, a, tex: np.ndarray, m: float) -> None:
    outer = a.lumen + a.wall
    w = s.window(a.x, a.y, outer + 6)
    if w is None:
        return
    win, xx, yy = w
    d = np.sqrt(xx ** 2 + yy ** 2)
    s.clear(win, _ramp(outer + 0.5 - d, m))
    s.put(win, MEMB, _ramp(d - a.lumen, m) * _ramp(a.lumen + 1.0 - d, m) * 0.9)
    s.put(win, CYTO, _ramp(d - a.lumen - 1.0, m) * _ramp(outer - d, m) * 0.62 * (0.85 + 0.25 * tex[win]))
    s.put(win, COL, _ramp(d - outer, m) * _ramp(outer + 6 - d, m) * 0.6)


def _fibrosis_field(geom: PatientGeometry):
    """``weight(x, y)``: fibrotic weight in [0, 1] at points (µm) given as any broadcastable
    arrays, or, fast, as a row vector ``x`` (1, n) and a column vector ``y`` (m, 1)."""
    def weight(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast(x, y).shape, np.float32)
        grid = x.ndim == 2 and y.ndim == 2 and x.shape[0] == 1 and y.shape[1] == 1
        for p in geom.patches:
            reach = p.radius * (1 + sum(abs(a) for a, _, _ in p.shape)) + 25.0
            if grid:  # evaluate only the patch's bounding box
                j0, j1 = np.searchsorted(x[0], [p.x - reach, p.x + reach])
                i0, i1 = np.searchsorted(y[:, 0], [p.y - reach, p.y + reach])
                if j0 >= j1 or i0 >= i1:
                    continue
                dx, dy, dst = x[:, j0:j1] - p.x, y[i0:i1] - p.y, out[i0:i1, j0:j1]
            else:
                dx, dy, dst = x - p.x, y - p.y, out
            r = p.radius * radial_modulation(np.arctan2(dy, dx), p.shape)
            np.maximum(dst, np.clip((r - np.sqrt(dx ** 2 + dy ** 2)) / 25.0, 0, 1), out=dst)
        return out
    return weight


@dataclass
class _Scene:
    """What every strip of one section shares: its geometry, cells, textures and light."""

    section: Section
    geom: PatientGeometry
    loops: list
    fibrosis: object
    cells: object
    bank: object
    tex_a: np.ndarray
    tex_b: np.ndarray
    light: np.ndarray
    noise: np.ndarray
    empty: np.ndarray
    compartment_od: np.ndarray
    mpp: float
    width_px: int
    height_px: int

    COARSE = 4  # the outline and fibrosis fields are smooth: evaluate them every 4 px


def _scene(section: Section, compartment_od: np.ndarray, brightness: float,
           mpp: float) -> _Scene:
    """Draw everything random of a section, in a fixed order (the seed fixes the pixels)."""
    rng = np.random.default_rng(section.seed)
    geom = moved(section)
    width_px, height_px = int(round(geom.width / mpp)), int(round(geom.height / mpp))
    loops = [capillary_loops(g, rng) for g in geom.glomeruli]
    fibrosis = _fibrosis_field(geom)
    cells = place_cells(section, geom, loops, fibrosis, rng, mpp)
    tex_a = _periodic_noise(rng, STRIP, 2.5)  # fine fibrous grain
    tex_b = _periodic_noise(rng, STRIP, 9.0)  # coarser cytoplasm mottling
    # Empty glass: light through uneven mountant, then sensor noise; both periodic with period
    # GLASS px, so bare-glass pixels are copied from one precomputed uint8 tile.
    glass_od = _periodic_noise(rng, GLASS, 40.0) * 0.0015 + 0.012
    light = (np.float32(brightness) * np.exp(-np.log(10.0) * glass_od)).astype(np.float32)
    noise = rng.normal(0, 1.4, (3, GLASS, GLASS)).astype(np.float32)  # channel-first
    empty = np.clip(light[..., None] + np.moveaxis(noise, 0, -1) + 0.5, 0, 255).astype(np.uint8)
    return _Scene(section, geom, loops, fibrosis, cells, stamp_bank(mpp), tex_a, tex_b, light,
                  noise, _tile_to(empty, STRIP, width_px), compartment_od, mpp, width_px,
                  height_px)


class SectionRenderer:
    """One stain's section of a patient at ``mpp`` µm/px, rendered strip by strip.

    ``compartment_od`` is the (compartments × RGB) optical density of one unit of each
    compartment on this slide (stain, cohort style and per-slide variation included);
    ``brightness`` is the incident light of the scanner (0-255). :meth:`strips` yields the RGB
    rows of :data:`STRIP` rows at a time and fills :attr:`labels` (the lesion label map at
    ``mask_downsample``) as it goes; strips are painted in pieces of at most ``chunk``
    columns (the same pixels whatever the chunk).
    """

    def __init__(self, section: Section, compartment_od: np.ndarray, brightness: float,
                 mpp: float, mask_downsample: int = 16, chunk: int = CHUNK):
        self.scene = _scene(section, compartment_od, brightness, mpp)
        self.section, self.ds, self.chunk = section, mask_downsample, chunk
        self.shape = (self.scene.height_px, self.scene.width_px)
        self.labels = np.zeros((self.shape[0] // mask_downsample,
                                self.shape[1] // mask_downsample), np.uint8)

    def strips(self) -> Iterator[np.ndarray]:
        scene, ds = self.scene, self.ds
        profile = self.section.geometry.core.profile(0.5, self.section.geometry.width)
        for y0 in range(0, scene.height_px, STRIP):
            h = min(STRIP, scene.height_px - y0)
            rgb = scene.empty[:h].copy()
            window = _tissue_window(scene, profile, y0, h, ds)
            for s, sd, xs, ys in (_pieces(*window, scene.mpp, self.chunk) if window else ()):
                _paint_strip(scene, s, sd, xs, ys)
                rgb[s.y0 - y0:s.y0 - y0 + s.h, s.x0:s.x0 + s.w] = _strip_rgb(scene, s)
                # Mask: the label at the centre of each ds × ds cell (windows are aligned).
                sub = s.labels[ds // 2::ds, ds // 2::ds]
                lab = self.labels[s.y0 // ds:s.y0 // ds + sub.shape[0],
                                  s.x0 // ds:s.x0 // ds + sub.shape[1]]
                lab[...] = sub[:lab.shape[0], :lab.shape[1]]
            yield rgb


def render_section(section: Section, compartment_od: np.ndarray, brightness: float,
                   mpp: float, mask_downsample: int = 16, chunk: int = CHUNK) -> Rendered:
    """The whole section at once (:class:`SectionRenderer`, whose arguments these are)."""
    renderer = SectionRenderer(section, compartment_od, brightness, mpp, mask_downsample,
                               chunk)
    rgb = np.empty((*renderer.shape, 3), np.uint8)
    y0 = 0
    for strip in renderer.strips():
        rgb[y0:y0 + len(strip)] = strip
        y0 += len(strip)
    return Rendered(rgb=rgb, labels=renderer.labels, mask_downsample=mask_downsample)


def _pieces(box: tuple[int, int, int, int], sd: np.ndarray, xs: np.ndarray, ys: np.ndarray,
            mpp: float, chunk: int = CHUNK):
    """A strip's tissue window (``box``: y0, h, x0, w in pixels) cut along x into pieces of
    at most ``chunk`` columns (aligned to the coarse grid and the mask cells), each a
    :class:`_Strip`. Every structure is drawn into each piece it reaches, clipped, so the
    pieces give the pixels of the whole window."""
    y0, h, left, width = box
    step = chunk // _Scene.COARSE
    for c in range(0, len(xs), step):
        x0 = left + c * _Scene.COARSE
        yield (_Strip(y0, h, x0, min(chunk, left + width - x0), mpp), sd[:, c:c + step],
               xs[c:c + step], ys)


def _tissue_window(scene: _Scene, profile, y0: int, h: int, ds: int):
    """The tissue's bounding box in the strip of rows [y0, y0 + h) (plus a margin), aligned to
    mask cells — everything else is bare glass: ((y0, h, x0, w) in pixels, signed distance,
    xs, ys) on the coarse grid, or None when the strip holds no tissue."""
    coarse, mpp = _Scene.COARSE, scene.mpp
    ys = (np.arange(y0, y0 + h, coarse, dtype=np.float64) + coarse / 2) * mpp
    xs = (np.arange(0, scene.width_px, coarse, dtype=np.float64) + coarse / 2) * mpp
    px, py = scene.section.to_patient(xs[None, :], ys[:, None])
    sd = profile.signed_distance(px.astype(np.float32), py.astype(np.float32))
    near = sd > -2.0
    cols, rows = np.flatnonzero(near.any(axis=0)), np.flatnonzero(near.any(axis=1))
    if not len(cols):
        return None
    step = ds // coarse  # coarse cells per mask cell
    c0, c1 = (max(int(cols[0]) - 1, 0) // step) * step, min(int(cols[-1]) + 2, len(xs))
    r0, r1 = (max(int(rows[0]) - 1, 0) // step) * step, min(int(rows[-1]) + 2, len(ys))
    x0, w = c0 * coarse, min(c1 * coarse, scene.width_px) - c0 * coarse
    ya, hh = y0 + r0 * coarse, min(r1 * coarse, h) - r0 * coarse
    return (ya, hh, x0, w), sd[r0:r1, c0:c1], xs[c0:c1], ys[r0:r1]


def _paint_strip(scene: _Scene, s: _Strip, sd: np.ndarray, xs: np.ndarray,
                 ys: np.ndarray) -> None:
    """Interstitium (collagen, cytoplasm, fibrosis), then every structure and cell, as
    compartment amounts and mask labels of the strip."""
    coarse, mpp, h, w = _Scene.COARSE, scene.mpp, s.h, s.w

    def fine(field: np.ndarray) -> np.ndarray:
        """Nearest-neighbour upsampling by ``coarse`` in one copy."""
        big = np.broadcast_to(field[:, None, :, None],
                              (field.shape[0], coarse, field.shape[1], coarse))
        return big.reshape(field.shape[0] * coarse, field.shape[1] * coarse)[:h, :w]

    tissue = fine(_ramp(sd, 1.5))
    fib = fine(scene.fibrosis(xs[None, :].astype(np.float32), ys[:, None].astype(np.float32)))
    fib *= tissue
    ta = _tile_to(np.roll(scene.tex_a, (-s.y0, -s.x0), axis=(0, 1)), h, w)
    tb = _tile_to(np.roll(scene.tex_b, (-s.y0, -s.x0), axis=(0, 1)), h, w)
    col, cyto = s.comp[COL], s.comp[CYTO]
    np.multiply(ta, 0.06 + 0.15 * fib, out=col)
    col += 0.2 + 0.3 * fib
    col *= tissue
    np.multiply(tb, 0.03, out=cyto)
    cyto += 0.1 + 0.06 * fib
    cyto *= tissue
    s.labels[tissue > 0.5] = MASK_CODES["tissue"]
    s.labels[(fib > 0.5) & (tissue > 0.5)] = MASK_CODES["fibrosis_inflammation"]
    for t in scene.geom.tubules:
        _draw_tubule(s, t, tb, mpp)
    for a in scene.geom.arterioles:
        _draw_arteriole(s, a, tb, mpp)
    for g, g_loops in zip(scene.geom.glomeruli, scene.loops):
        _draw_glomerulus(s, g, g_loops, tb, mpp)
    cells, bank = scene.cells, scene.bank
    reach = 12 / mpp  # stamps reach at most ~8 µm from their centre
    lo, hi = np.searchsorted(cells.y, [s.y0 - reach, s.y0 + h + reach])
    near = (cells.x[lo:hi] >= s.x0 - reach) & (cells.x[lo:hi] < s.x0 + w + reach)
    for cx, cy, k in zip(cells.x[lo:hi][near], cells.y[lo:hi][near],
                         cells.stamp[lo:hi][near]):
        _paste(s.comp[int(bank.channel[k])], bank.stamps[k], int(round(cy)) - s.y0,
               int(round(cx)) - s.x0)


def _strip_rgb(scene: _Scene, s: _Strip) -> np.ndarray:
    """Beer–Lambert: the strip's compartments through the slide's dyes, lit and with sensor
    noise, as RGB (h × w × 3, values 0–255)."""
    h, w, ya, x0 = s.h, s.w, s.y0, s.x0
    ln10 = np.float32(np.log(10.0))
    od = (scene.compartment_od.T @ s.comp.reshape(len(COMPARTMENTS), -1)).reshape(3, h, w)
    od *= -ln10
    np.exp(od, out=od)
    od *= _tile_to(np.roll(scene.light, (-ya, -x0), axis=(0, 1)), h, w)[None]
    od += _tile_to(np.roll(scene.noise, (-ya, -x0), axis=(1, 2)).transpose(1, 2, 0), h,
                   w).transpose(2, 0, 1)
    od += 0.5
    np.maximum(od, 0, out=od)
    np.minimum(od, 255, out=od)
    return np.moveaxis(od, 0, -1)


def _tile_to(field: np.ndarray, h: int, w: int) -> np.ndarray:
    """Repeat a periodic field to cover (h, w) (extra trailing axes kept)."""
    reps = (-(-h // field.shape[0]), -(-w // field.shape[1])) + (1,) * (field.ndim - 2)
    return np.tile(field, reps)[:h, :w]


def _paste(plane: np.ndarray, stamp: np.ndarray, ci: int, cj: int) -> None:
    """Max-composite ``stamp`` centred at (ci, cj) into the 2-D ``plane``, clipped."""
    half = stamp.shape[0] // 2
    i0, j0 = ci - half, cj - half
    a0, b0 = max(i0, 0), max(j0, 0)
    a1, b1 = min(i0 + stamp.shape[0], plane.shape[0]), min(j0 + stamp.shape[1], plane.shape[1])
    if a0 < a1 and b0 < b1:
        dst = plane[a0:a1, b0:b1]
        np.maximum(dst, stamp[a0 - i0:a1 - i0, b0 - j0:b1 - j0], out=dst)
