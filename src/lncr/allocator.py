"""Keep the C allocator from returning freed tile-sized buffers to the operating system.

Tiling allocates and frees a few megabytes per tile many times a second (the decoded region,
optical densities, the PNG rows). glibc's malloc serves blocks of that size with ``mmap`` and
hands them back with ``munmap`` on ``free``, so each new tile pays page faults on fresh
memory: measured on the 16384 × 8192 phantom, 4.8 s of system time in an 8.4-s ``lncr tile``.
Raising the mmap threshold above a tile's buffers and the trim threshold above what a tile
frees keeps that memory in the heap for the next tile (system time 0.5 s), as the
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` environment variables would, but set from
inside the process that needs it (``mallopt``). Other C libraries (macOS, musl, Windows) are
left as they are.
"""

from __future__ import annotations

import ctypes
import functools

#: mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks below this come from the heap (a 512-px RGB tile in float32 is 3 MiB).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of a heap is returned only beyond this.
TRIM_THRESHOLD = 64 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc for tile-sized buffers, once per process; False where the C
    library is not glibc."""
    try:
        libc = ctypes.CDLL(None)  # the symbols the interpreter is linked with: its C library
        version = libc.gnu_get_libc_version  # only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    version.restype, version.argtypes = ctypes.c_char_p, []
    mallopt.restype, mallopt.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    if not version():
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
