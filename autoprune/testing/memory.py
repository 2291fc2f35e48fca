"""How much memory a call allocates, for tests that hold a trial to its size.

``peak_allocated(fn)`` runs ``fn`` under torch's profiler with memory recording and returns its
result with the most bytes that were allocated and not yet freed at any moment of the call
(tensor memory on the CPU, as torch's allocator sees it). Unlike the process's resident memory
it does not depend on what the allocator keeps or the system reclaims, so a test can compare
it with the model's own size: a trial that deep-copies the dense model allocates at least its
bytes, one that builds only the pruned network allocates about the pruned network's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch.profiler import ProfilerActivity, profile

__all__ = ["peak_allocated"]

T = TypeVar("T")


def peak_allocated(fn: Callable[[], T]) -> tuple[T, int]:
    """``(fn(), peak bytes allocated during the call)``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return out, peak
