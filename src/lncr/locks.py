"""One lncr command at a time per output folder.

Every stage that writes into a study's output folder holds ``<output_dir>/.lncr.lock`` while
it runs (:func:`output_lock`, or :func:`locks_output` on a stage function taking a
:class:`~lncr.study.validate.Study`). A second command on the same folder stops at once with
one line naming the command, process and host that hold it. The lock is an operating-system
lock (filelock's ``flock``), released by the kernel when its holder exits or is killed, so a
crashed run never leaves a stale lock; the holder's description beside it
(``.lncr.lock.json``) is only read while the lock is really held. Nested stages in one process
(the demo's sweep inside its pipeline) share the lock.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout

from lncr.errors import WorkFailed
from lncr.fileio import atomic_write_text

F = TypeVar("F", bound=Callable)
_LOCKS: dict[Path, FileLock] = {}  # one per folder and process: nested use is re-entrant


class OutputBusy(WorkFailed):
    """Another lncr command is working on this output folder."""


def _holder(info: Path) -> str:
    try:
        h = json.loads(info.read_text())
    except (OSError, ValueError):
        return "another lncr process"
    return (f"{h.get('stage')} (`{' '.join(h.get('argv') or [])}`, pid {h.get('pid')} on "
            f"{h.get('host')}, since {h.get('started')})")


def _own_lock_file(path: Path) -> None:
    """A lock file shared with another folder through a hard link (a study copied with
    ``cp -al``) would make the copy and the original one lock: give this folder its own,
    replaced by a rename (the other folder keeps the old file)."""
    try:
        if path.stat().st_nlink > 1:
            atomic_write_text(path, "")
    except FileNotFoundError:
        pass


@contextmanager
def output_lock(output_dir: Path, stage: str = "", wait: float = 0.0) -> Iterator[None]:
    """Hold the output folder's lock; raise :class:`OutputBusy` if another process holds it
    (at once, or after ``wait`` seconds)."""
    folder = Path(os.path.abspath(output_dir))
    folder.mkdir(parents=True, exist_ok=True)
    _own_lock_file(folder / ".lncr.lock")
    lock = _LOCKS.setdefault(folder, FileLock(folder / ".lncr.lock"))
    info = folder / ".lncr.lock.json"
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        raise OutputBusy(f"{folder} is in use by {_holder(info)}; wait for it to finish, or "
                         "stop it (a killed process releases the folder at once)") from None
    try:
        if lock.lock_counter == 1:
            atomic_write_text(info, json.dumps({
                "stage": stage, "argv": sys.argv, "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield
    finally:
        lock.release()


def locks_output(stage: F) -> F:
    """Run ``stage(study, …)`` holding ``study.config.output_dir``'s lock."""

    @functools.wraps(stage)
    def locked(study, *args, **kwargs):
        with output_lock(study.config.output_dir, f"{stage.__module__}.{stage.__name__}"):
            return stage(study, *args, **kwargs)

    return locked  # type: ignore[return-value]
