"""Paths stored inside lncr's outputs are relative, so a study folder can be moved or copied.

A path is stored relative to the output folder (``output_dir``) when it lies inside the study
folder holding it (``output_dir``'s parent: tile stores, run folders, and slides kept beside the
study); anything else (slides on a shared drive) stays absolute. Readers resolve stored paths
against the output folder they read from, so a copy reads and writes its own files.

>>> root = Path("/data/study/lncr-output")
>>> stored(root / "tiles" / "HE" / "20x" / "P1.tiles.zip", root)
'tiles/HE/20x/P1.tiles.zip'
>>> stored("/data/study/slides/P1_HE.tiff", root)
'../slides/P1_HE.tiff'
>>> stored("/archive/P1_HE.svs", root)
'/archive/P1_HE.svs'
>>> str(resolved("tiles/HE/20x/P1.tiles.zip", Path("/copy/lncr-output")))
'/copy/lncr-output/tiles/HE/20x/P1.tiles.zip'
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def stored(path: str | Path, output_dir: str | Path) -> str:
    """How ``path`` is written into an output of ``output_dir``."""
    path = Path(os.path.abspath(path))
    root = Path(os.path.abspath(output_dir))
    if path == root.parent or root.parent in path.parents:
        return Path(os.path.relpath(path, root)).as_posix()
    return str(path)


def resolved(value: str | Path, output_dir: str | Path) -> Path:
    """The path a stored ``value`` means for outputs read from ``output_dir``."""
    value = Path(value)
    if value.is_absolute():
        return value
    return Path(os.path.normpath(Path(os.path.abspath(output_dir)) / value))


def store_columns(table: pd.DataFrame, columns: list[str], output_dir: str | Path
                  ) -> pd.DataFrame:
    """A copy of ``table`` with the path ``columns`` made :func:`stored` (empty cells kept)."""
    out = table.copy()
    for c in columns:
        out[c] = [stored(v, output_dir) if isinstance(v, (str, Path)) and str(v) else v
                  for v in out[c]]
    return out


def resolve_columns(table: pd.DataFrame, columns: list[str], output_dir: str | Path
                    ) -> pd.DataFrame:
    """A copy of ``table`` with the path ``columns`` :func:`resolved` to absolute strings."""
    out = table.copy()
    for c in columns:
        out[c] = [str(resolved(v, output_dir)) if isinstance(v, str) and v else v
                  for v in out[c]]
    return out
