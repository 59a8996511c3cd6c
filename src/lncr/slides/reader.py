"""Open whole-slide images with the best available backend and report what they hold.

The order is fixed and documented: OpenSlide for every format it recognises, tiffslide for
TIFF variants OpenSlide does not open (OME-TIFF, untiled TIFF with metadata), and Pillow for a
plain single-level image as a last resort. The backend that opened a file is always reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: µm/px outside this range are treated as a metadata error, not as a real scan.
PLAUSIBLE_MPP = (0.1, 2.0)

#: Pixels read from the smallest level to prove that a slide decodes (a truncated or corrupt
#: file usually opens but fails here).
_PROBE_PIXELS = 1024


class SlideReadError(Exception):
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


def _float_or_none(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def _open_openslide(path: Path):
    import openslide

    if openslide.OpenSlide.detect_format(str(path)) is None:
        return None
    return openslide.OpenSlide(str(path))


def _open_tiffslide(path: Path):
    import tiffslide

    try:
        return tiffslide.TiffSlide(str(path))
    except Exception:  # tiffslide raises many types for non-TIFF input
        return None


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


def probe_slide(path: str | Path, decode: bool = True) -> SlideInfo:
    """Open ``path`` with the first backend that can, read its metadata and (optionally) decode
    a window of its smallest level.

    Raises :class:`SlideReadError` with the reason when no backend can open or decode it.

    >>> probe_slide("missing.svs")  # doctest: +SKIP
    Traceback (most recent call last):
    SlideReadError: missing.svs: file not found
    """
    path = Path(path)
    if not path.exists():
        raise SlideReadError(f"{path}: file not found")
    if not path.is_file():
        raise SlideReadError(f"{path}: not a file")
    errors: list[str] = []

    try:
        slide = _open_openslide(path)
    except Exception as exc:  # OpenSlide raises OpenSlideError subclasses and OSError
        slide, _ = None, errors.append(f"OpenSlide: {exc}")
    if slide is not None:
        try:
            info = _info_from_slide(path, slide, "openslide", "openslide.mpp", "openslide.vendor",
                                    "openslide.objective-power")
            if decode:
                _probe_decode(slide, info.level_dimensions)
            return info
        except Exception as exc:
            raise SlideReadError(f"{path}: OpenSlide opened the file but could not decode it ({exc})") from exc
        finally:
            slide.close()

    slide = _open_tiffslide(path)
    if slide is not None:
        try:
            info = _info_from_slide(path, slide, "tiffslide", "tiffslide.mpp", "tiffslide.vendor",
                                    "tiffslide.objective-power")
            if decode:
                _probe_decode(slide, info.level_dimensions)
            return info
        except Exception as exc:
            errors.append(f"tiffslide: {exc}")
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
