"""Global magnitude pruning: one importance threshold across all units (Torch-Pruning's
``global_pruning=True``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .allocation import KnobAllocationAgent, threshold_fractions
from .registry import register_agent

__all__ = ["GlobalMagnitudeAgent", "global_scores"]


def global_scores(scores: tuple[tuple[float, ...], ...]) -> list[np.ndarray]:
    """Each unit's channel magnitudes divided by their mean, as Torch-Pruning's importance does
    by default (``normalizer="mean"``) before it ranks channels of all layers together: raw
    magnitudes of layers with different fan-in are not comparable."""
    out = []
    for u in scores:
        a = np.asarray(u, dtype=float)
        mean = float(a.mean())
        out.append(a / mean if mean > 0 else np.ones_like(a))
    return out


@register_agent("global")
class GlobalMagnitudeAgent(KnobAllocationAgent):
    """One global threshold on mean-normalised channel magnitudes (Torch-Pruning global pruning)."""

    context_needs: ClassVar[frozenset[str]] = frozenset({"scores"})

    def fractions(self, s: float) -> np.ndarray:
        return threshold_fractions(global_scores(self._require_context().scores), s)
