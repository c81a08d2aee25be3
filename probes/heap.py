"""Giving freed heap memory back to the operating system (glibc's ``malloc_trim``).

Long streamed analyses free many d × d temporaries between small results that stay alive;
without a trim the process keeps those pages and its resident size only grows. Used between
clouds by :mod:`analyses.isotropy` and before each measured variant by the benchmarks.
"""

from __future__ import annotations

import functools
import sys


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another libc, another OS)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_heap() -> None:
    """Hand the heap's free pages back to the OS (``malloc_trim(0)``; a no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
