"""Sensitivity analysis as an agent: measure each unit alone, then allocate by the measurements.

Classic sensitivity analysis (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017;
NNI's and Distiller's sensitivity pruners) prunes one layer at a time with every other layer
dense, and gives the layers that lose least the most pruning. Here every evaluated candidate
meets the budget (the search loop repairs it), so the probe is budget-aware: the point "every
unit at 1, unit ``i`` at ``a``", repaired, is the uniform allocation with unit ``i`` thinned
relative to the rest and the saved budget spread over the others. Its score against the
uniform allocation's says whether taking budget from unit ``i`` helps.

Trials: 1 (uniform) + ``dim`` x ``len(levels)`` probes, then two allocations built from them
(every unit at its best probed level; and halfway from there to uniform), then it stops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .base import Agent
from .registry import register_agent

__all__ = ["SensitivityAgent"]


@register_agent("sensitivity")
class SensitivityAgent(Agent):
    """Probe each unit thinned alone around the uniform allocation, then allocate by the gains."""

    #: Coordinates a probed unit is thinned to while every other unit is at 1 (before repair).
    levels: ClassVar[tuple[float, ...]] = (0.0, 0.5)

    def __init__(self, dim: int, *, seed: int = 0) -> None:
        super().__init__(dim, seed=seed)
        # Probe 0 is the uniform allocation; probe 1 + i * len(levels) + j thins unit i to
        # levels[j]. Then the final allocations.
        self.n_probes = 1 + dim * len(self.levels)
        self.scores: list[float | None] = [None] * self.n_probes
        self.asked = 0            # probes and final allocations proposed so far
        self.pending: list[int] = []

    def _probe(self, k: int) -> np.ndarray:
        x = np.ones(self.dim)
        if k > 0:
            unit, level = divmod(k - 1, len(self.levels))
            x[unit] = self.levels[level]
        return x

    def allocation(self) -> np.ndarray:
        """Every unit at its best probed level (1 when no thinning beat the uniform score)."""
        base = _score(self.scores[0])
        x = np.ones(self.dim)
        for unit in range(self.dim):
            best = base
            for j, level in enumerate(self.levels):
                s = _score(self.scores[1 + unit * len(self.levels) + j])
                if s > best:
                    best, x[unit] = s, level
        return x

    def ask(self, n: int) -> list[np.ndarray]:
        points = []
        while len(points) < n and self.asked < self.n_probes:
            points.append(self._probe(self.asked))
            self.pending.append(self.asked)
            self.asked += 1
        if points or self.pending:
            return points
        # Every probe is in: the final allocations, once.
        finals = [self.allocation()]
        finals.append(0.5 * (1.0 + finals[0]))  # gentler: halfway back to uniform
        k = self.asked - self.n_probes
        out = [f for f in finals[k:k + max(0, n)]]
        self.asked += len(out)
        self.pending.extend(-1 for _ in out)
        return out

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:
        if not self.pending:
            return
        k = self.pending.pop(0)
        if k >= 0:
            value = float(result.get("objective", math.nan))
            self.scores[k] = value if math.isfinite(value) else None

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "asked": self.asked - len(self.pending)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        scores = list(state["scores"])
        if len(scores) != self.n_probes:
            raise ValueError(f"saved sensitivity state has {len(scores)} probes, this space "
                             f"needs {self.n_probes}")
        self.scores, self.asked, self.pending = scores, int(state["asked"]), []


def _score(value: float | None) -> float:
    return -math.inf if value is None else value
