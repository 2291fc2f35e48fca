"""LAMP: layer-adaptive magnitude-based pruning (Lee et al., ICLR 2021).

On the weight-sparsity spaces (``unstructured``, ``nm``) this is the paper's method: every
weight's LAMP score from the |w| of its layer, one global threshold on the scores. On the
channel space the same scores are computed from channel-group magnitudes (Torch-Pruning's
``normalizer="lamp"``)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .allocation import GlobalThreshold, KnobAllocationAgent
from .base import AgentContext
from .registry import register_agent

__all__ = ["LAMPAgent", "lamp_scores"]


def lamp_scores(magnitudes: np.ndarray) -> np.ndarray:
    """LAMP score of each entry: its squared magnitude over the sum of the squared magnitudes
    of every entry at least as large, ``w_u^2 / sum_{v >= u} w_v^2`` (Lee et al., eq. 2). The
    largest entry of every layer scores 1, so one global threshold never empties a layer, and
    the score does not depend on the layer's scale. Applied to single weights on a weight space,
    to channel-group magnitudes on the channel space (as Torch-Pruning's ``normalizer="lamp"``)."""
    w2 = np.asarray(magnitudes, dtype=float) ** 2
    order = np.argsort(w2, kind="stable")
    sorted_w2 = w2[order]
    tail = np.cumsum(sorted_w2[::-1])[::-1]  # sum over this entry and every larger one
    out = np.empty_like(w2)
    out[order] = np.divide(sorted_w2, tail, out=np.ones_like(sorted_w2), where=tail > 0)
    return out


def _threshold(context: AgentContext) -> GlobalThreshold:
    return GlobalThreshold([lamp_scores(np.asarray(u).reshape(-1)) for u in context.scores])


@register_agent("lamp")
class LAMPAgent(KnobAllocationAgent):
    """One global threshold on LAMP scores of the weights, or of channels (Lee et al., ICLR 2021).

    Per-weight scores from |w| on the weight spaces (the paper's method); from channel-group
    magnitudes on the channel space."""

    context_needs: ClassVar[frozenset[str]] = frozenset({"scores"})

    def fractions(self, s: float) -> np.ndarray:
        return self.prepared(_threshold)(s)
