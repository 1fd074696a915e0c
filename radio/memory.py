"""Giving the memory a process freed back to the system.

glibc's ``malloc`` keeps what a process frees for its next allocations, and hands the system back
only what lies at the top of its heap: a broker that held 770 MB for clients that read nothing
kept 770 MB resident after they were gone, however little it held since, until it stopped (one
``malloc_trim`` took it to 58 MB). Long-running servers call ``give_back`` now and then, in a
thread: the call walks the heap, and the event loop need not wait for it.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

EVERY: Final = 10.0
"""Seconds between calls, at most: the heap of a broker that holds little is walked in microseconds."""


def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` (glibc's), or None where it has none (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]  # type: ignore[attr-defined]
    trim.restype = ctypes.c_int  # type: ignore[attr-defined]
    return trim


_TRIM: Final = _malloc_trim()


def give_back() -> bool:
    """Return the freed memory the C library holds to the system; whether it could be asked to."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
