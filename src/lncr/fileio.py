"""Atomic file writes: a file appears under its final name only when complete, so an
interrupted run never leaves a half-written file that looks finished."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 4 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def partial_path(path: Path) -> Path:
    """The temporary name this process writes ``path`` under before renaming it into place:
    hidden, and this process's own (``.NAME.<pid>.partial``), so that two processes writing
    the same file (the shards of a tiling run fitting the same colour reference) never rename
    each other's half file. The half files that dead processes left for the same path (a
    killed run) are removed first."""
    _remove_orphans(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_orphans(path: Path) -> None:
    """Remove ``.NAME.<pid>.partial`` files of ``path`` whose process is gone (and the
    ``.NAME.partial`` of earlier lncr versions)."""
    prefix = f".{path.name}."
    try:
        entries = [e.name for e in os.scandir(path.parent)]
    except OSError:
        return
    for name in entries:
        if not (name.startswith(prefix) and name.endswith(".partial")):
            continue
        pid = name[len(prefix):-len(".partial")]
        if pid == "" or (pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))):
            (path.parent / name).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = partial_path(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON with sorted keys (byte-stable for equal objects)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_figure(fig, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig`` under a temporary name, renamed into place when complete."""
    path = Path(path)
    tmp = partial_path(path)
    fig.savefig(tmp, format=path.suffix.lstrip("."), **kwargs)
    os.replace(tmp, path)
    return path


def atomic_save_image(image, path: str | Path) -> Path:
    """An RGB uint8 array (H, W, 3) as an image file (format from the suffix), atomically."""
    from PIL import Image

    path = Path(path)
    tmp = partial_path(path)
    Image.fromarray(image).save(tmp, format=path.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    os.replace(tmp, path)
    return path


def atomic_save_array(array, path: str | Path) -> Path:
    """A NumPy array as ``.npy``, atomically."""
    import numpy as np

    path = Path(path)
    tmp = partial_path(path)
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)
    return path


def atomic_save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` atomically (checkpoints: a kill never leaves half of one)."""
    import torch

    path = Path(path)
    tmp = partial_path(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path
