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
