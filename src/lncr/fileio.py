"""Atomic file writes: a file appears under its final name only when complete, so an
interrupted run never leaves a half-written file that looks finished — and a file is always
replaced (a new inode renamed over it), never rewritten in place, so a study copied with hard
links (``cp -al``) never changes its original through the copy.

A write that fails (a full disk, a read-only folder, a library's own error while encoding)
removes its half file and raises one error that names the file and the fix; so does
:func:`read_torch` for a checkpoint that cannot be read back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lncr.errors import WorkFailed


class WriteFailed(WorkFailed):
    """A file could not be written; the message names it and the fix (``errno``: the
    operating system's error number, ENOSPC for a full disk)."""

    def __init__(self, number: int, message: str):
        super().__init__(message)
        self.errno = number

    def __reduce__(self):  # crosses process boundaries (the sweep's workers) intact
        return type(self), (self.errno, str(self))


class DamagedFile(WorkFailed):
    """A file lncr wrote cannot be read back (truncated, overwritten, not what it should
    be); the message names it and how to rebuild it."""


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 4 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_ends_sha256(path: str | Path, span: int = 1 << 20) -> str:
    """SHA-256 of a file's size and its first and last ``span`` bytes: a content identity
    that costs two reads whatever the file's size."""
    import hashlib

    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(span))
        if size > span:
            fh.seek(max(span, size - span))
            digest.update(fh.read(span))
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


def _disk_full(path: Path, exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or a library's error wrapping one, such as PyTorch's
    ``enforce fail … PytorchStreamWriter``) comes from a full disk."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(path.parent).free < (1 << 20)
    except OSError:
        return False


@contextlib.contextmanager
def writing(path: Path, tmp: Path) -> Iterator[None]:
    """Around a write of ``tmp`` renamed to ``path``: any failure removes ``tmp`` and becomes
    one :class:`WriteFailed` naming ``path``."""
    try:
        yield
        os.replace(tmp, path)
    except Exception as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, WriteFailed):
            raise
        raise write_error(path, exc) from exc


def write_error(path: Path, exc: BaseException) -> WriteFailed:
    """The one-line error for a failed write of ``path``: a full disk, or why else."""
    if _disk_full(path, exc):
        return WriteFailed(errno.ENOSPC, f"no space left on the device to write {path}: free "
                           "some space and run the same command again (finished work is "
                           "kept)")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return WriteFailed(getattr(exc, "errno", None) or errno.EIO,
                       f"cannot write {path} ({(reason.splitlines() or [''])[0][:200]}): check "
                       "that its folder exists and may be written")


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = partial_path(path)
    with writing(path, tmp):
        tmp.write_text(text, encoding="utf-8")
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = partial_path(path)
    with writing(path, tmp):
        tmp.write_bytes(data)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON with sorted keys (byte-stable for equal objects)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_figure(fig, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig`` under a temporary name, renamed into place when complete."""
    path = Path(path)
    tmp = partial_path(path)
    with writing(path, tmp):
        fig.savefig(tmp, format=path.suffix.lstrip("."), **kwargs)
    return path


def atomic_save_image(image, path: str | Path) -> Path:
    """An RGB uint8 array (H, W, 3) as an image file (format from the suffix), atomically.
    PNG at zlib level 1: a 2048-px overview in a third of the time of the default, barely
    larger."""
    from PIL import Image

    path = Path(path)
    tmp = partial_path(path)
    kind = path.suffix.lstrip(".").upper().replace("JPG", "JPEG")
    with writing(path, tmp):
        Image.fromarray(image).save(tmp, format=kind, **({"compress_level": 1}
                                                         if kind == "PNG" else {}))
    return path


def atomic_save_array(array, path: str | Path) -> Path:
    """A NumPy array as ``.npy``, atomically."""
    import numpy as np

    path = Path(path)
    tmp = partial_path(path)
    with writing(path, tmp), open(tmp, "wb") as fh:
        np.save(fh, array)
    return path


def atomic_save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` atomically (checkpoints: a kill never leaves half of one)."""
    import torch

    path = Path(path)
    tmp = partial_path(path)
    with writing(path, tmp):
        torch.save(obj, tmp)
    return path


def read_torch(path: str | Path, map_location: Any = "cpu", fix: str = "") -> Any:
    """``torch.load(path, weights_only=True)``; a file that is truncated, damaged or holds
    more than tensors raises :class:`DamagedFile` naming it and ``fix``."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError,
            pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DamagedFile(f"{path} cannot be read ({reason}): it is truncated or damaged"
                          + (f"; {fix}" if fix else "")) from exc
