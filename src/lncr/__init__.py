"""lncr: predict complete response in lupus nephritis from multi-stain renal biopsy slides."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lncr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
