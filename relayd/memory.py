"""
Memory given back to the system once the clients that held it are gone.

A closed connection's objects are reference cycles (protocol, transport, timers) that only the
garbage collector frees, and with them what Twisted's write buffer still held for a reader that
never read: a megabyte a deaf phone. relayd.gcpolicy makes full collections rare, so after backlogs
released a lot, one full collection runs before the heap is trimmed (measured: 48 deaf phones given
1 MB frames left about 50 MB in dead transports' buffers until a collection).

CPython allocates objects over 512 bytes with malloc. glibc raises its mmap threshold each time a
large mmapped block is freed (up to 32 MiB on 64-bit), so after the first burst of large frames
every later one comes from the heap, which fragments and is not returned when the burst ends: RSS
stays near its peak. relayd fixes the threshold at 128 KiB (large frames are mmapped and unmapped
when freed), and after send backlogs release a lot, asks glibc to trim what the heap keeps free.
Elsewhere (musl, macOS) neither call exists and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

from twisted.logger import Logger

_log = Logger()

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024
TRIM_AFTER = 16 * 1024 * 1024  # bytes released since the last trim that make another worth its walk


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has these semantics
        libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def tune_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds for the process; False where the allocator is not glibc's."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(_LIBC.mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD))


def trim() -> bool:
    """Return the heap's free memory to the system now; True if glibc released any."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


class GiveBack:
    """A periodic check: after backlogs released TRIM_AFTER bytes or more, collect and trim the heap once."""

    def __init__(self, backlogs, trimmer=trim, collect=gc.collect):
        self.backlogs = backlogs
        self.trimmer = trimmer
        self.collect = collect
        self.trims = 0

    def __call__(self) -> None:
        if self.backlogs.released >= TRIM_AFTER:
            self.backlogs.released = 0
            self.trims += 1
            self.collect()
            self.trimmer()
