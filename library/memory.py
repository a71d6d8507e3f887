"""Giving freed memory back to the system after building something large.

A worker runs a thread per live connection. glibc's malloc keeps what a thread frees in its arena
for later, so the temporaries of one large build (a catalogue message for a new seq: a dict per
book) stay in the worker's RSS after they are freed, one build's worth per arena that ever made
one. ``malloc_trim`` hands that free memory back; elsewhere (musl, macOS) there is nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def give_back() -> None:
    """Return the memory the process has freed to the system (glibc only; a few milliseconds)."""
    trim = _trim()
    if trim is not None:
        trim(0)
