"""Hands memory freed by a finished request back to the system, so the server's RSS tracks what it uses."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    # glibc keeps freed blocks of every thread's arena for reuse; over a few hundred requests of differing
    # lengths that showed as ~1 MB of RSS per request, which malloc_trim returns. Other C libraries: no-op.
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_freed_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
