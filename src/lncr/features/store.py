"""One features file per slide × magnification × encoder, in HDF5.

HDF5 (h5py) rather than zarr: one file per slide is written under a temporary name and
renamed into place, so a file that exists is complete (a zarr store is a folder of chunk files,
which cannot be renamed into place as one unit on every file system); and ``features`` +
``coords`` datasets in an ``.h5`` file are what CLAM and TRIDENT write, so other tools read
lncr's features and the other way round.

Datasets:

- ``features``: (views, tiles, F) float32 or float16, chunked by tiles; view 0 is the centred
  crop evaluation sees, views 1… are augmented crops;
- ``coords``: (tiles, 2) int64, the tile's top-left corner in level-0 pixels;
- ``tile_index``: (tiles,) the tile's number in its store;

and attributes ``fingerprint`` (JSON: the :class:`FeatureSpec` key and the tile store's
identity), ``feature_id``, ``patient_id``, ``stain``, ``magnification``, ``versions``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from lncr.errors import WorkFailed
from lncr.fileio import write_error, writing

CHUNK_TILES = 256


class CorruptFeatures(WorkFailed):
    """A features file cannot be read: it is named, with the fix."""


def fingerprint_of(path: Path) -> dict | None:
    """The fingerprint a finished features file records, or None when there is no readable
    file (a missing or damaged one is computed again)."""
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["fingerprint"])
    except (OSError, KeyError, ValueError):
        return None


class FeatureWriter:
    """Write one slide's features view by view and batch by batch; :meth:`finish` renames
    the file into place, :meth:`discard` drops it."""

    def __init__(self, path: Path, views: int, tiles: int, dim: int, dtype: str,
                 attrs: dict):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one temporary name per process: two embedders of the same slide never share one
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self.file = h5py.File(self.tmp, "w")
        self.features = self.file.create_dataset(
            "features", (views, tiles, dim), dtype=dtype,
            chunks=(1, max(1, min(tiles, CHUNK_TILES)), dim))
        for key, value in attrs.items():
            self.file.attrs[key] = value if isinstance(value, str) else json.dumps(value)

    def write(self, view: int, start: int, values: np.ndarray) -> None:
        try:
            self.features[view, start:start + len(values)] = values
        except OSError as exc:  # h5py: a full disk; the caller discards the file
            raise write_error(self.path, exc) from exc

    def finish(self, coords: np.ndarray, tile_index: np.ndarray) -> Path:
        with writing(self.path, self.tmp):
            self.file.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
            self.file.create_dataset("tile_index", data=np.asarray(tile_index, dtype=np.int64))
            self.file.close()
            self.file = None
        return self.path

    def discard(self) -> None:
        """Drop the unfinished file (after an error or an interruption)."""
        if self.file is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.file.close()
        self.tmp.unlink(missing_ok=True)


class FeatureFile:
    """Read one slide's features: ``read(indices, views)`` → (N, F) float32."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
            self._features = self._file["features"]
        except (OSError, KeyError) as exc:
            raise CorruptFeatures(
                f"the features file {self.path} cannot be read ({exc}): delete it and run "
                "`lncr embed STUDY.yaml` again") from exc
        self.views, self.tiles, self.dim = self._features.shape

    @property
    def nbytes(self) -> int:
        """The size of every view of every tile in memory (float32)."""
        return self.views * self.tiles * self.dim * 4

    def load(self) -> np.ndarray:
        """Every feature of the slide, (views, tiles, F) float32, in memory."""
        return self._features[...].astype(np.float32, copy=False)

    def read(self, indices: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
        """Features of tiles ``indices`` (repeats allowed), each in its view (default 0)."""
        indices = np.asarray(indices, dtype=np.int64)
        views = np.zeros_like(indices) if views is None else np.asarray(views, np.int64)
        out = np.empty((len(indices), self.dim), dtype=np.float32)
        for view in np.unique(views):
            picked = views == view
            wanted, back = np.unique(indices[picked], return_inverse=True)
            out[picked] = self._features[int(view), wanted][back]  # h5py: increasing indices
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
