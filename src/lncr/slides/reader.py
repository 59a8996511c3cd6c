"""Open whole-slide images with the best available backend and report what they hold.

The order is fixed and documented: OpenSlide for every format it recognises, tiffslide for
TIFF variants OpenSlide does not open (OME-TIFF, untiled TIFF with metadata), and Pillow for a
plain single-level image as a last resort. The backend that opened a file is always reported.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lncr.errors import BadInput
from lncr.slides.annotations import bounds_offset

#: µm/px outside this range are treated as a metadata error, not as a real scan.
PLAUSIBLE_MPP = (0.1, 2.0)

#: Pixels read from the smallest level to prove that a slide decodes (a truncated or corrupt
#: file usually opens but fails here).
_PROBE_PIXELS = 1024


class SlideReadError(BadInput):
    """A slide file is missing, not a slide, or cannot be decoded."""


@dataclass(frozen=True)
class SlideInfo:
    """What a slide file holds, as read from its metadata."""

    path: Path
    backend: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    vendor: str | None
    objective_power: float | None
    #: Level-0 position of the scanned area's corner (``openslide.bounds-x/y``, MIRAX), where
    #: QuPath puts its pixel (0, 0); (0, 0) for formats without one.
    bounds_offset: tuple[float, float] = (0.0, 0.0)


def _float_or_none(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def _info_from_slide(path: Path, slide, backend: str, mpp_key: str, vendor_key: str,
                     power_key: str) -> SlideInfo:
    props = slide.properties
    mpp_x = _float_or_none(props.get(mpp_key + "-x"))
    mpp_y = _float_or_none(props.get(mpp_key + "-y"))
    mpp = None
    if mpp_x is not None and mpp_y is not None:
        mpp = (mpp_x + mpp_y) / 2
    elif mpp_x is not None or mpp_y is not None:
        mpp = mpp_x if mpp_x is not None else mpp_y
    return SlideInfo(
        path=path,
        backend=backend,
        dimensions=tuple(int(v) for v in slide.dimensions),  # type: ignore[arg-type]
        level_dimensions=tuple(tuple(int(v) for v in d) for d in slide.level_dimensions),  # type: ignore[misc]
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        mpp=mpp,
        vendor=props.get(vendor_key) or None,
        objective_power=_float_or_none(props.get(power_key)),
        bounds_offset=bounds_offset(props, backend),
    )


def _probe_decode(slide, level_dimensions) -> None:
    """Decode a window of the smallest level to prove the pixel data is readable."""
    level = len(level_dimensions) - 1
    w, h = level_dimensions[level]
    size = (min(w, _PROBE_PIXELS), min(h, _PROBE_PIXELS))
    downsample = slide.level_downsamples[level]
    x0 = int(((w - size[0]) // 2) * downsample)
    y0 = int(((h - size[1]) // 2) * downsample)
    region = slide.read_region((x0, y0), level, size)
    np.asarray(region)


def _check_companions(path: Path) -> None:
    """Formats whose image lives beside the named file: say what is missing, not that the
    file is unreadable."""
    if path.suffix.lower() == ".mrxs":
        folder = path.with_suffix("")
        if not (folder / "Slidedat.ini").is_file():
            raise SlideReadError(f"{path}: the MIRAX data folder {folder.name}/ (Slidedat.ini "
                                 "and the Data*.dat files) is missing beside it: copy the "
                                 "folder with the .mrxs file")


def probe_slide(path: str | Path, decode: bool = True) -> SlideInfo:
    """Open ``path`` with the first backend that can, read its metadata and (optionally) decode
    a window of its smallest level.

    Raises :class:`SlideReadError` with the reason when no backend can open or decode it.

    >>> probe_slide("missing.svs")
    Traceback (most recent call last):
    lncr.slides.reader.SlideReadError: missing.svs: file not found
    """
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise SlideReadError(f"{path}: a symbolic link that leads nowhere (broken, or a "
                                 "loop): point it at the slide")
        raise SlideReadError(f"{path}: file not found")
    if not path.is_file():
        raise SlideReadError(f"{path}: not a file")
    _check_companions(path)
    errors: list[str] = []

    # The registered readers in turn (lncr.slides.backends). A file OpenSlide recognises but
    # cannot decode is broken: no other reader is tried.
    from lncr.slides.backends import BACKENDS, missing_extra

    needed = missing_extra(path)
    if needed is not None:
        raise SlideReadError(f"{path}: a {needed.formats} slide needs the {needed.name} reader: "
                             f"pip install 'lncr[{needed.extra}]'")
    for reader in BACKENDS:
        if not (reader.claims(path) and reader.available()):
            continue
        try:
            slide = reader.open(path)
        except Exception as exc:  # each library raises its own types for a foreign file
            errors.append(f"{reader.name}: {exc}")
            continue
        if slide is None:
            continue
        prefix = reader.properties_prefix
        try:
            info = _info_from_slide(path, slide, reader.name, f"{prefix}.mpp",
                                    f"{prefix}.vendor", f"{prefix}.objective-power")
            if decode:
                _probe_decode(slide, info.level_dimensions)
            return info
        except Exception as exc:
            if reader.name == "openslide":
                raise SlideReadError(f"{path}: OpenSlide opened the file but could not decode "
                                     f"it ({exc})") from exc
            errors.append(f"{reader.name}: {exc}")
        finally:
            slide.close()

    try:
        from PIL import Image

        with Image.open(path) as image:
            image.load() if decode and image.width * image.height <= 64e6 else None
            size = (int(image.width), int(image.height))
        return SlideInfo(path=path, backend="pillow", dimensions=size, level_dimensions=(size,),
                         level_downsamples=(1.0,), mpp=None, vendor=None, objective_power=None)
    except Exception as exc:
        errors.append(f"Pillow: {exc}")
    detail = "; ".join(errors) if errors else "no backend recognises the format"
    raise SlideReadError(f"{path}: not a readable slide ({detail})")


def _blocks(size: int, block: int, out: int) -> list[tuple[int, int, int]]:
    """(start, length, output length) of the blocks a side of ``size`` level pixels is read
    in, the output lengths summing to ``out``: an overview is read block by block in both
    directions, so its memory does not grow with the slide's width."""
    found, done = [], 0
    for start in range(0, size, block):
        length = min(block, size - start)
        share = (max(1, int(round(length / size * out))) if start + length < size
                 else out - done)
        if share > 0:
            found.append((start, length, share))
            done += share
    return found


def rgba_array(region) -> np.ndarray:
    """A reader's region (a PIL image or an array) as an (h, w, 3 or 4) uint8 array. A PIL
    RGBA image is copied through ``tobytes`` — a twentieth of the time of ``np.asarray`` on
    it (0.05 ms against 0.8 ms a 512-px tile)."""
    if isinstance(region, np.ndarray):
        return region
    if region.mode != "RGBA":
        region = region.convert("RGBA")
    w, h = region.size
    return np.frombuffer(region.tobytes(), np.uint8).reshape(h, w, 4)


def _over_white(region: np.ndarray) -> np.ndarray:
    """RGB of an RGB(A) array, composited over white: transparent means no tissue scanned.
    Opaque regions (the usual case) skip the arithmetic; the result is C-contiguous."""
    if region.shape[2] == 3:
        return np.ascontiguousarray(region)
    if region[..., 3].min() == 255:
        import cv2

        return cv2.cvtColor(np.ascontiguousarray(region), cv2.COLOR_RGBA2RGB)
    a = region[..., 3:4].astype(np.uint16)
    return ((region[..., :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


class Slide:
    """An open slide with one reading interface whatever the backend.

    ``read(level, x, y, w, h)`` returns an RGB uint8 array of ``h × w`` pixels at ``level``,
    whose top-left corner is (x, y) in level-0 pixels. Pixels outside the slide, and
    transparent pixels, are white (empty glass), so a grid that runs over the slide's edge is
    read like any other cell instead of being dropped.

    For example, with the Aperio test slide of ``tests/data/slides``::

        with open_slide("CMU-1-Small-Region.svs") as s:
            s.mpp, s.level_for(4.0)   # (0.499, 0)
    """

    def __init__(self, path: Path, handle, backend: str, info: SlideInfo, mpp: float):
        from lncr.slides.backends import thread_safe

        self.path, self._handle, self.backend, self.info, self.mpp = path, handle, backend, info, mpp
        # ``read`` may be called from several threads; handles that are not thread-safe are
        # read one region at a time.
        self._lock = contextlib.nullcontext() if thread_safe(backend) else threading.Lock()

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.info.dimensions

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self.info.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self.info.level_downsamples

    def level_for(self, downsample: float) -> int:
        """The coarsest level whose resolution is still at least the target's (downsample
        ≤ target, with a 1 % tolerance): read there and reduce, never enlarge."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.01:
                best = i
        return best

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        # The part of the request inside the level, in level pixels.
        lx, ly = int(np.floor(x / ds)), int(np.floor(y / ds))
        a0, b0 = max(0, -ly), max(0, -lx)
        a1, b1 = min(h, lh - ly), min(w, lw - lx)
        if a0 >= a1 or b0 >= b1:
            return np.full((h, w, 3), 255, np.uint8)
        rx, ry = lx + b0, ly + a0
        size = (b1 - b0, a1 - a0)
        with self._lock:
            if self.backend == "pillow":
                region = rgba_array(self._handle.crop((rx, ry, rx + size[0], ry + size[1])))
            else:
                region = rgba_array(self._handle.read_region(
                    (int(round(rx * ds)), int(round(ry * ds))), level, size))
        if (a0, b0, a1, b1) == (0, 0, h, w):  # all inside the level: no white margin
            return _over_white(region)
        out = np.full((h, w, 3), 255, np.uint8)
        out[a0:a1, b0:b1] = _over_white(region)
        return out

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """An overview of about ``max_side`` pixels on its longer side (never more than the
        slide) and its downsample from level 0. Read from the coarsest level that is at least
        that large, in blocks of at most about 8192 × 8192 level pixels, so memory stays
        bounded whatever the slide's size."""
        import cv2

        level = 0
        for i, (w, h) in enumerate(self.level_dimensions):
            if max(w, h) >= max_side:
                level = i
        w, h = self.level_dimensions[level]
        scale = max(1.0, max(w, h) / max_side)
        if scale > 2:  # no small level: the scanner's own thumbnail is much cheaper to read
            stored = self._stored_thumbnail(max_side)
            if stored is not None:
                return stored
        nw, nh = max(1, int(round(w / scale))), max(1, int(round(h / scale)))
        ds = self.level_downsamples[level]
        block = max(1, int(4096 // scale)) * int(np.ceil(scale))  # level pixels per block
        rows = []
        for y, height, out_h in _blocks(h, block, nh):
            parts = []
            for x, width, out_w in _blocks(w, block, nw):
                part = self.read(level, int(round(x * ds)), int(round(y * ds)), width, height)
                parts.append(cv2.resize(part, (out_w, out_h), interpolation=cv2.INTER_AREA)
                             if scale > 1 else part)
            rows.append(np.concatenate(parts, axis=1))
        image = np.concatenate(rows, axis=0)
        return image, ds * w / image.shape[1]

    def _stored_thumbnail(self, max_side: int) -> tuple[np.ndarray, float] | None:
        """The file's associated ``thumbnail`` image (Aperio and others), if it shows the whole
        slide (same aspect ratio within 2 %) at no less than half of ``max_side``."""
        import cv2

        if self.backend != "openslide":
            return None
        image = self._handle.associated_images.get("thumbnail")
        if image is None:
            return None
        tw, th = image.size
        w, h = self.dimensions
        if abs(tw / th - w / h) > 0.02 * (w / h) or max(tw, th) < max_side / 2:
            return None
        rgb = _over_white(rgba_array(image))
        if max(tw, th) > max_side:
            f = max_side / max(tw, th)
            rgb = cv2.resize(rgb, (max(1, round(tw * f)), max(1, round(th * f))),
                             interpolation=cv2.INTER_AREA)
        return rgb, w / rgb.shape[1]

    def content_id(self) -> str:
        """The slide's identity by its content, not its name or date: OpenSlide's
        ``openslide.quickhash-1`` (a hash of the smallest level and the properties) when the
        backend gives one, and a SHA-256 of the file's size and its first and last MiB — so a
        different slide copied over this one's name (same size, ``cp -p``) is told apart."""
        from lncr.fileio import file_ends_sha256

        properties = getattr(self._handle, "properties", None) or {}
        return f"{properties.get('openslide.quickhash-1', '')}:{file_ends_sha256(self.path)}"

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a slide for reading, with ``mpp`` (µm/px at level 0) overriding the file's.

    Raises :class:`SlideReadError` naming the slide when it cannot be opened or when its µm/px
    is missing or outside :data:`PLAUSIBLE_MPP` (the fix: an ``mpp`` column in slides.csv).
    """
    path = Path(path)
    info = probe_slide(path, decode=False)
    resolution = mpp if mpp is not None else info.mpp
    lo, hi = PLAUSIBLE_MPP
    if resolution is None:
        raise SlideReadError(f"{path}: no µm/px in the file's metadata; give it in the 'mpp' "
                             "column of slides.csv (0.25 for a 40x scan)")
    if not lo <= resolution <= hi:
        raise SlideReadError(f"{path}: {resolution:g} µm/px is implausible (expected {lo}-{hi}); "
                             "correct it in the 'mpp' column of slides.csv")
    if info.backend != "pillow":
        from lncr.slides.backends import backend

        handle = backend(info.backend).open(path)
    else:
        from PIL import Image

        handle = Image.open(path)
        handle.load()
    return Slide(path, handle, info.backend, info, float(resolution))
