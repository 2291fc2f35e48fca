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

__all__ = ["release", "reuse_heap", "watch"]


@functools.cache
def _trim() -> object | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


class _Watched(list):
    """:func:`watch`'s weak references, and whether the heap is trimmed once they are gone."""

    trim = True


#: trial networks whose freed memory the next trial reuses (see :func:`reuse_heap`)
_REUSED: weakref.WeakSet = weakref.WeakSet()


def reuse_heap(model: nn.Module) -> nn.Module:
    """``model``, marked as a trial network whose memory the next trial of its space builds
    its own in, so :func:`release` leaves the heap untrimmed after it: a weight-sparse trial's
    tensors have the dense shapes every time, and trimming made each trial fault its pages in
    again without lowering the peak. (A channel trial's sizes change; left untrimmed, a
    30-trial search of the 246M decoder was no faster: those are trimmed.)"""
    _REUSED.add(model)
    return model


def watch(model: object) -> list[weakref.ref]:
    """Weak references to ``model`` and to its tensors, for :func:`release` after the caller
    drops it."""
    refs = _Watched([weakref.ref(model)])
    if isinstance(model, nn.Module):
        refs += [weakref.ref(t) for t in chain(model.parameters(), model.buffers())]
        refs.trim = model not in _REUSED
    return refs


def release(gone: Sequence[weakref.ref] = ()) -> None:
    """Return the heap's free pages to the system. ``gone`` (:func:`watch` of what the caller
    just dropped, a trial's network) is collected first when a reference cycle still holds
    any of it (``masks.mask_weight`` leaves masked networks without cycles: a full
    collection, 0.2 s in a process holding a transformers model, is spared). The heap is
    not trimmed after a network marked :func:`reuse_heap`: the next trial builds its tensors
    in the pages it freed, which trimming would make it fault in again (a third of a GPT-2
    Wanda trial's pruning time) without lowering the peak."""
    if any(ref() is not None for ref in gone):
        gc.collect()
    if not getattr(gone, "trim", True):
        return
    trim = _trim()
    if trim is not None:
        trim(0)
