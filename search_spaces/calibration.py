"""What data criteria run on: calibration batches, micro-batches, the default loss, and
gradients for one measurement pass (``criteria.py``'s data criteria use them)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .tracing import as_inputs

__all__ = ["FIX", "calibration_batches", "cross_entropy", "gradients", "micro_batches", "moved_to"]

#: How to give a data criterion its batches.
FIX = "pass calibration=[(inputs, targets), ...] from the training split"


def cross_entropy(logits: torch.Tensor, targets: Any) -> torch.Tensor:
    """The default loss of data criteria: cross-entropy of logits shaped ``(N, C)`` or
    ``(N, T, C)`` (flattened) against integer class targets."""
    fix = "Fix: pass loss=callable(logits, targets) returning a scalar"
    if not isinstance(targets, torch.Tensor) or targets.dtype.is_floating_point \
            or targets.dtype == torch.bool:
        raise ValueError(f"the default loss (cross-entropy) needs integer class targets, got "
                         f"{getattr(targets, 'dtype', type(targets).__name__)}. {fix}")
    if logits.dim() not in (2, 3):
        raise ValueError(f"the default loss (cross-entropy) needs logits shaped (N, C) or "
                         f"(N, T, C), got {tuple(logits.shape)}. {fix}")
    flat = logits.reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    if targets.shape[0] != flat.shape[0]:
        raise ValueError(f"the default loss (cross-entropy) got {targets.shape[0]} targets for "
                         f"logits of shape {tuple(logits.shape)}. {fix}")
    return F.cross_entropy(flat.float(), targets.long())


def calibration_batches(calibration: Any, name: str) -> list[tuple[tuple[torch.Tensor, ...], Any]]:
    if calibration is None or isinstance(calibration, (torch.Tensor, str, bytes, Mapping)):
        got = "none" if calibration is None else type(calibration).__name__
        raise ValueError(f"criterion {name!r} ranks channels on data and was given {got}. "
                         f"Fix: {FIX}")
    batches = list(calibration)
    if not batches:
        raise ValueError(f"criterion {name!r} was given no calibration batches. Fix: {FIX}")
    out = []
    for k, batch in enumerate(batches):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"calibration batch {k} is a {type(batch).__name__}, not an "
                             f"(inputs, targets) pair. Fix: {FIX}")
        try:
            out.append((as_inputs(batch[0]), batch[1]))
        except ValueError:
            raise ValueError(f"calibration batch {k}'s inputs are a {type(batch[0]).__name__}, "
                             f"not a tensor or a tuple of tensors. Fix: {FIX}") from None
    return out


def moved_to(x: Any, device: torch.device) -> Any:
    return x.to(device) if isinstance(x, torch.Tensor) else x


def micro_batches(inputs: tuple[torch.Tensor, ...], targets: Any,
           size: int) -> Iterator[tuple[tuple[torch.Tensor, ...], Any]]:
    """The batch in micro-batches of ``size`` samples (tensors whose first size is the
    batch's are split, others passed whole)."""
    n = inputs[0].shape[0] if inputs[0].dim() else 1
    if n <= size:
        yield inputs, targets
        return

    def cut(x: Any, s: slice) -> Any:
        return x[s] if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == n else x

    for a in range(0, n, size):
        s = slice(a, a + size)
        yield tuple(cut(x, s) for x in inputs), cut(targets, s)


@contextmanager
def gradients(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Every parameter requiring grad, with no gradient before or after."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    try:
        with torch.enable_grad():
            yield params
    finally:
        for p, flag in zip(params, flags):
            p.grad = None
            p.requires_grad_(flag)
