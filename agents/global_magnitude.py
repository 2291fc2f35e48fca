"""Global magnitude pruning: one importance threshold across all units.

On the weight-sparsity spaces (``unstructured``, ``nm``) this is the original method: one |w|
threshold over every prunable weight of the network, each layer keeping its weights above it
(the context's scores there are the weights' magnitudes). On the channel space it is
Torch-Pruning's ``global_pruning=True``: one threshold on channel-group magnitudes, each unit's
normalised by their mean."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from .allocation import GlobalThreshold, KnobAllocationAgent
from .base import AgentContext
from .registry import register_agent

__all__ = ["GlobalMagnitudeAgent", "global_scores"]


def global_scores(scores: Sequence[Sequence[float] | np.ndarray]) -> list[np.ndarray]:
    """Each unit's channel magnitudes divided by their mean, as Torch-Pruning's importance does
    by default (``normalizer="mean"``) before it ranks channels of all layers together: raw
    magnitudes of layers with different fan-in are not comparable."""
    out = []
    for u in scores:
        a = np.asarray(u, dtype=float)
        mean = float(a.mean())
        out.append(a / mean if mean > 0 else np.ones_like(a))
    return out


def _threshold(context: AgentContext) -> GlobalThreshold:
    # Weights: raw |w| pooled (the original method). Channels: mean-normalised group magnitudes.
    return GlobalThreshold(context.scores if context.weights else global_scores(context.scores))


@register_agent("global")
class GlobalMagnitudeAgent(KnobAllocationAgent):
    """One global magnitude threshold: |w| of all weights, or mean-normalised channel magnitudes.

    On the weight spaces the threshold is on the raw |w| of every prunable weight (the original
    method); on the channel space on channel-group magnitudes, each unit's divided by their mean
    (Torch-Pruning global pruning)."""

    context_needs: ClassVar[frozenset[str]] = frozenset({"scores"})

    def fractions(self, s: float) -> np.ndarray:
        return self.prepared(_threshold)(s)
