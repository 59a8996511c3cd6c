"""The tile store: one file per slide × magnification.

A store is an uncompressed ZIP archive (``.tiles.zip``) — readable by any ZIP tool — holding:

- ``tiles/000000.png`` (or ``.jpg``), … the kept tiles, already encoded;
- ``tiles.csv``: ``index, x, y, size0, background_fraction`` — the tile's top-left corner and
  side in level-0 pixels, and its fraction of background pixels;
- ``meta.json``: the unit (patient, stain, magnification, µm/px), the settings digest and
  settings, the counts, the lncr and library versions.

Tile *i* is read without reading the others (ZIP's central directory points at each member).
The archive is written under a temporary name and renamed when complete, so a store that exists
is a finished store.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from lncr.errors import WorkFailed
from lncr.fileio import partial_path, write_error, writing
from lncr.tiling.png import encode_png

COLUMNS = ["index", "x", "y", "size0", "background_fraction"]


def encode(tile: np.ndarray, encoding: str, jpeg_quality: int = 90,
           png_compression: int = 1) -> bytes:
    """Encode an RGB uint8 tile as PNG (lossless; :mod:`lncr.tiling.png`) or JPEG."""
    if encoding == "png":
        return encode_png(tile, png_compression)
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(tile[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    else:
        raise ValueError(f"unknown tile encoding {encoding!r} (png or jpeg)")
    if not ok:
        raise RuntimeError(f"could not encode a tile as {encoding}")
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a PNG or JPEG tile")
    return np.ascontiguousarray(bgr[..., ::-1])


class TileStoreWriter:
    """Write a store atomically: use as a context manager; on error nothing is left behind.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "P1.tiles.zip"
    >>> tile = np.full((64, 64, 3), 200, np.uint8)
    >>> with TileStoreWriter(path, "png") as w:
    ...     index = w.add(tile, x=0, y=0, size0=512, background_fraction=0.1)
    ...     w.meta = {"patient_id": "P1"}
    >>> path.exists()
    True
    """

    def __init__(self, path: str | Path, encoding: str = "png", jpeg_quality: int = 90,
                 png_compression: int = 1):
        self.path = Path(path)
        self.encoding, self.jpeg_quality, self.png_compression = encoding, jpeg_quality, png_compression
        self.suffix = ".png" if encoding == "png" else ".jpg"
        self.rows: list[tuple] = []
        self.meta: dict[str, Any] = {}
        self._tmp = partial_path(self.path)
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> "TileStoreWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED)
        return self

    def add(self, tile: np.ndarray, x: int, y: int, size0: float, background_fraction: float) -> int:
        return self.add_encoded(self.encode(tile), x, y, size0, background_fraction)

    def encode(self, tile: np.ndarray) -> bytes:
        """A tile encoded as this store keeps it (thread-safe: no state is touched)."""
        return encode(tile, self.encoding, self.jpeg_quality, self.png_compression)

    def add_encoded(self, data: bytes, x: int, y: int, size0: float,
                    background_fraction: float) -> int:
        """Add a tile already encoded by :meth:`encode`; returns its index."""
        i = len(self.rows)
        info = zipfile.ZipInfo(f"tiles/{i:06d}{self.suffix}", date_time=(2000, 1, 1, 0, 0, 0))
        self._zip.writestr(info, data)
        self.rows.append((i, int(x), int(y), float(size0), round(float(background_fraction), 6)))
        return i

    def __exit__(self, exc_type, exc, tb) -> None:
        zf, self._zip = self._zip, None
        if exc_type is not None:
            with contextlib.suppress(OSError):
                zf.close()
            self._tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):  # a full disk while adding tiles: name the store
                raise write_error(self.path, exc) from exc
            return
        with writing(self.path, self._tmp):
            table = pd.DataFrame(self.rows, columns=COLUMNS).to_csv(index=False)
            zf.writestr(zipfile.ZipInfo("tiles.csv", date_time=(2000, 1, 1, 0, 0, 0)), table)
            meta = {**self.meta, "encoding": self.encoding, "tiles": len(self.rows)}
            zf.writestr(zipfile.ZipInfo("meta.json", date_time=(2000, 1, 1, 0, 0, 0)),
                        json.dumps(meta, indent=2, sort_keys=True))
            zf.close()


class CorruptTileStore(WorkFailed):
    """A tile store cannot be read back (truncated, bit-flipped, not a ZIP)."""


def _corrupt(path: Path, what: str, exc: Exception) -> CorruptTileStore:
    return CorruptTileStore(
        f"the tile store {path} is damaged ({what}: {exc}); re-run `lncr tile STUDY.yaml` "
        "(it checks the stores it reuses and cuts damaged ones again), or delete the file "
        "and re-run")


class TileStore:
    """Read a store: ``len(store)``, ``store[i]`` (RGB uint8), ``store.coords``, ``store.meta``.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "P1.tiles.zip"
    >>> with TileStoreWriter(path, "png") as w:
    ...     index = w.add(np.full((64, 64, 3), 200, np.uint8), x=512, y=0, size0=512,
    ...           background_fraction=0.0)
    >>> with TileStore(path) as store:
    ...     len(store), store[0].shape, int(store.coords.loc[0, "x"])
    (1, (64, 64, 3), 512)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path, "r")
            self.meta: dict[str, Any] = json.loads(self._zip.read("meta.json"))
            self.coords = pd.read_csv(io.BytesIO(self._zip.read("tiles.csv")))
        except FileNotFoundError as exc:
            raise WorkFailed(f"the tile store {self.path} is missing: re-run "
                             "`lncr tile STUDY.yaml`") from exc
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
            raise _corrupt(self.path, "its index cannot be read", exc) from exc
        suffix = ".png" if self.meta.get("encoding", "png") == "png" else ".jpg"
        self._names = [f"tiles/{i:06d}{suffix}" for i in self.coords["index"]]

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, i: int) -> np.ndarray:
        return decode(self.raw(i))

    def raw(self, i: int) -> bytes:
        """The encoded bytes of tile ``i`` (PNG or JPEG)."""
        try:
            return self._zip.read(self._names[i])
        except (OSError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise _corrupt(self.path, f"tile {self._names[i]}", exc) from exc

    def damaged(self) -> str | None:
        """The first member whose bytes fail their CRC-32, or None when every one checks
        (reads the whole store)."""
        try:
            return self._zip.testzip()
        except (OSError, zipfile.BadZipFile, zlib.error) as exc:
            return f"unreadable ({exc})"

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "TileStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The ``meta.json`` of a finished store, or None if it is missing or unreadable."""
    try:
        with zipfile.ZipFile(path, "r") as zf:
            return json.loads(zf.read("meta.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return None
