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
import gc
import weakref
from collections.abc import Sequence
from itertools import chain

from torch import nn

__all__ = ["release", "watch"]


@functools.cache
def _trim() -> object | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def watch(model: object) -> list[weakref.ref]:
    """Weak references to ``model`` and to its tensors, for :func:`release` after the caller
    drops it."""
    refs = [weakref.ref(model)]
    if isinstance(model, nn.Module):
        refs += [weakref.ref(t) for t in chain(model.parameters(), model.buffers())]
    return refs


def release(gone: Sequence[weakref.ref] = ()) -> None:
    """Return the heap's free pages to the system. ``gone`` (:func:`watch` of what the caller
    just dropped, a trial's network) is collected first when a reference cycle still holds
    any of it (a masked network's parametrizations hold its weights in cycles that outlive
    the network's root module: 4.7 GB of a 1.1B decoder's thinnest network stayed); a network
    without cycles is freed when dropped, and a full collection (0.2 s in a process holding a
    transformers model) is spared."""
    if any(ref() is not None for ref in gone):
        gc.collect()
    trim = _trim()
    if trim is not None:
        trim(0)
