"""Package versions recorded in every artifact, read from installed metadata (no imports, so
recording them is free even where torch is not loaded)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from lncr import __version__


def package_versions(*names: str) -> dict[str, str]:
    """``{"lncr": …, name: version …}``; a package that is not installed is recorded as such."""
    out = {"lncr": __version__}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def training_versions() -> dict[str, str]:
    """What training, prediction and the sweep record: lncr, torch (with its build, e.g.
    ``2.14.1+cu130``, which the package metadata leaves out), torchvision and numpy."""
    import torch

    return {**package_versions("torch", "torchvision", "numpy"), "torch": torch.__version__}


def tiling_versions() -> dict[str, str]:
    """What a tile store records: the image libraries, and the OpenSlide C library's version
    (not a Python package, so asked of openslide-python)."""
    import openslide

    return {**package_versions("numpy", "opencv-python-headless", "openslide-python",
                               "tiffslide"), "openslide": openslide.__library_version__}
