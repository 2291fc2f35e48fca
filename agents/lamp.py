"""LAMP: layer-adaptive magnitude-based pruning (Lee et al., ICLR 2021), on channels."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .allocation import KnobAllocationAgent, threshold_fractions
from .registry import register_agent

__all__ = ["LAMPAgent", "lamp_scores"]


def lamp_scores(magnitudes: np.ndarray) -> np.ndarray:
    """LAMP score of each entry: its squared magnitude over the sum of the squared magnitudes
    of every entry at least as large, ``w_u^2 / sum_{v >= u} w_v^2`` (Lee et al., eq. 2). The
    largest entry of every layer scores 1, so one global threshold never empties a layer, and
    the score does not depend on the layer's scale. Applied to channel-group magnitudes, as
    Torch-Pruning's ``normalizer="lamp"`` does."""
    w2 = np.asarray(magnitudes, dtype=float) ** 2
    order = np.argsort(w2, kind="stable")
    sorted_w2 = w2[order]
    tail = np.cumsum(sorted_w2[::-1])[::-1]  # sum over this entry and every larger one
    out = np.empty_like(w2)
    out[order] = np.divide(sorted_w2, tail, out=np.ones_like(sorted_w2), where=tail > 0)
    return out


@register_agent("lamp")
class LAMPAgent(KnobAllocationAgent):
    """One global threshold on LAMP scores of channel magnitudes (Lee et al., ICLR 2021)."""

    context_needs: ClassVar[frozenset[str]] = frozenset({"scores"})

    def fractions(self, s: float) -> np.ndarray:
        scores = [lamp_scores(np.asarray(u, dtype=float)) for u in self._require_context().scores]
        return threshold_fractions(scores, s)
