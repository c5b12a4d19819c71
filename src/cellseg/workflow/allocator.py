"""Keep a long job's resident memory at its live data: glibc's allocator told to hand freed
blocks back to the system.

By default glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), so
later blocks of that size come from the heap; small long-lived arrays allocated between them
(the masks of the cells found so far) then pin the freed heap space, and the process's RSS
keeps every block's peak although its live data is small. A fixed threshold keeps large blocks
in mmap, returned on free, and trims the heap's top eagerly.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> mallopt parameters
M_MMAP_THRESHOLD = -3
THRESHOLD = 64 * 1024  # bytes: blocks from this size are mmapped, heap tops above it trimmed


def release_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds at `THRESHOLD` for this process; False where the C
    library has no `mallopt` (macOS) or refuses it, which changes nothing but the memory kept."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))
