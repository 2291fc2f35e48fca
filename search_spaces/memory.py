"""Giving freed memory back to the operating system.

A trial frees a whole pruned network, and space building frees several; glibc's allocator keeps
much of what is freed in its heap (PyTorch's large CPU tensors come from ``malloc``, and glibc
raises its mmap threshold after each large free, so later tensors of that size land in the
heap), where it still counts as the process's memory. On GPT-2 the resident memory after
building the space was 1.8 GB with 0.56 GB of live tensors, and 1.0 GB after ``malloc_trim``.
``release`` trims the heap after each such phase; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release"]


@functools.cache
def _trim() -> object | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def release() -> None:
    """Return the heap's free pages to the system."""
    trim = _trim()
    if trim is not None:
        trim(0)
