"""Heuristic allocations that are a one-parameter family: find the member that fits the budget.

Global magnitude pruning, LAMP and ERK each define, for a knob ``s`` in ``[0, 1]`` (a global
score threshold, or ERK's density scale), the fraction of channels every unit keeps:
``fractions(s)``, non-decreasing in ``s``, everything at ``s = 1``. The method's allocation is
the member that exactly meets the budget. Agents do not see costs, but the search loop repairs
every point onto the budget along a monotone path and tells back the repaired point, which says
on which side of the budget the asked point was: repaired upward means the member was under
budget (raise ``s``), downward means over (lower ``s``). The agent bisects ``s`` that way; each
step is a real, feasible candidate (the member, scaled onto the budget), the last ones are the
method's own allocation up to channel rounding, and the search keeps the best scoring of them.
It stops when the repair no longer moves its point, the knob interval is tiny, or after
``max_steps`` steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from .base import Agent

__all__ = ["KnobAllocationAgent", "threshold_fractions"]


class KnobAllocationAgent(Agent):
    """Base for allocations parameterised by one knob; subclasses define ``fractions``."""

    max_steps: ClassVar[int] = 10
    min_interval: ClassVar[float] = 1.0 / 512

    def __init__(self, dim: int, *, seed: int = 0) -> None:
        super().__init__(dim, seed=seed)
        self.lo, self.hi = 0.0, 1.0
        self.steps = 0
        self.done = False
        self.pending: list[tuple[float, list[float]]] = []  # (knob, asked point)
        self.last_point: list[float] | None = None

    def fractions(self, s: float) -> np.ndarray:
        """Fraction of channels each unit keeps at knob ``s`` (non-decreasing in ``s``)."""
        raise NotImplementedError

    def ask(self, n: int) -> list[np.ndarray]:
        # Bisection is sequential: one point per ask, none while one is being evaluated.
        if self.done or n < 1 or self.pending:
            return []
        context = self._require_context()
        s = 0.5 * (self.lo + self.hi)
        x = context.point_for_fractions(self.fractions(s))
        if self.last_point is not None and np.array_equal(x, self.last_point):
            # The knob moved less than one channel step: nothing new to try.
            self.done = True
            return []
        self.pending.append((s, [float(v) for v in x]))
        self.last_point = [float(v) for v in x]
        return [x]

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:
        if not self.pending:
            return  # not ours (a trial replayed from an old study)
        s, asked = self.pending.pop(0)
        self.steps += 1
        moved = float(np.sum(np.asarray(point, dtype=float) - np.asarray(asked)))
        if moved > 1e-12:    # repaired upward: the member was under budget
            self.lo = s
        elif moved < -1e-12:  # repaired downward: over budget
            self.hi = s
        else:                # the member meets the budget as it is
            self.done = True
        if self.steps >= self.max_steps or self.hi - self.lo < self.min_interval:
            self.done = True

    def state_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "steps": self.steps, "done": self.done,
                "last_point": self.last_point}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lo, self.hi = float(state["lo"]), float(state["hi"])
        self.steps, self.done = int(state["steps"]), bool(state["done"])
        self.last_point = state["last_point"]
        self.pending = []


def threshold_fractions(scores: list[np.ndarray], s: float) -> np.ndarray:
    """Keep, in every unit, the channels whose score reaches one global threshold: the
    ``1 - s`` quantile of all channels' scores (``s`` = share of all channels kept)."""
    pooled = np.sort(np.concatenate(scores))
    if s >= 1.0:
        return np.ones(len(scores))
    keep = int(round(s * len(pooled)))
    if keep <= 0:
        return np.zeros(len(scores))
    tau = pooled[len(pooled) - keep]
    return np.array([float(np.mean(u >= tau)) for u in scores])
