"""Worker processes that never outlive lncr.

Every process pool lncr starts (tiling, the phantom, the sweep's local executor) comes from
:func:`process_pool`: spawned (safe with CUDA and threads), and on Linux each worker asks the
kernel to kill it when the process that started it dies (``prctl(PR_SET_PDEATHSIG)``), so a
``kill -9`` of lncr leaves no worker running. Python's pool only notices a dead parent when it
next talks to it, which for a worker busy on a slide can be minutes. Written here because the
standard library offers no such option and a dependency (psutil watchdog threads) would only
poll for it.
"""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Pool initialiser: be killed with the parent (Linux); exit now if it is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def process_pool(max_workers: int) -> ProcessPoolExecutor:
    """A spawned process pool whose workers die with this process."""
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))
