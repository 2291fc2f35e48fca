"""Heuristic allocations that are a one-parameter family: find the member that fits the budget.

Global magnitude pruning, LAMP and ERK each define, for a knob ``s`` in ``[0, 1]`` (a global
score threshold, or ERK's density scale), the fraction of its elements every unit keeps:
``fractions(s)``, non-decreasing in ``s``, everything at ``s = 1``. The elements are channels
on the channel space and single weights on the weight-sparsity spaces (``unstructured``,
``nm``), where these are the methods as their papers define them; there ``s`` of a threshold
is the share of all prunable weights kept, and an ``nm`` unit keeps the N:M pattern (or dense)
nearest to its fraction. The method's allocation is
the member that exactly meets the budget. Agents do not see costs, but the search loop repairs
every point onto the budget along a monotone path and tells back the repaired point, which says
on which side of the budget the asked point was: repaired downward means the member was over
budget (lower ``s``); unchanged or upward means it fits (raise ``s``). The agent bisects ``s``
that way; each step is a real, feasible candidate (the member, scaled onto the budget), the
last ones are the method's own allocation up to the units' grids of counts, and the search keeps the best
scoring of them. Counts are discrete, so many knob values give the same point: a point
already evaluated is not proposed again, its known side is used instead. It stops when the knob
interval is tiny or after ``max_steps`` evaluations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .base import Agent, AgentContext

__all__ = ["GlobalThreshold", "KnobAllocationAgent", "threshold_fractions"]


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
        self.fits: dict[str, bool] = {}  # evaluated point (as JSON text) -> it met the budget

    def fractions(self, s: float) -> np.ndarray:
        """Fraction of its elements each unit keeps at knob ``s`` (non-decreasing in ``s``)."""
        raise NotImplementedError

    def set_context(self, context: AgentContext) -> None:
        super().set_context(context)
        self._prepared: Any = None  # what a subclass derives once from the context's scores

    def prepared(self, make: Callable[[AgentContext], Any]) -> Any:
        """``make(context)``, computed once per context (a weight space has millions of scores:
        sorting them at every bisection step would be most of the search's time)."""
        context = self._require_context()
        if getattr(self, "_prepared", None) is None:
            self._prepared = make(context)
        return self._prepared

    def ask(self, n: int) -> list[np.ndarray]:
        # Bisection is sequential: one point per ask, none while one is being evaluated.
        if self.done or n < 1 or self.pending:
            return []
        context = self._require_context()
        while self.hi - self.lo >= self.min_interval:
            s = 0.5 * (self.lo + self.hi)
            x = context.point_for_fractions(self.fractions(s))
            key = _key(x)
            if key in self.fits:  # this member was evaluated already: we know its side
                self._move(s, self.fits[key])
                continue
            self.pending.append((s, [float(v) for v in x]))
            return [x]
        self.done = True
        return []

    def _move(self, s: float, fits: bool) -> None:
        if fits:
            self.lo = s
        else:
            self.hi = s

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:
        if not self.pending:
            return  # not ours (a trial replayed from an old study)
        s, asked = self.pending.pop(0)
        self.steps += 1
        # The repair scales every coordinate the same way, so one sum tells the direction.
        fits = float(np.sum(np.asarray(point, dtype=float) - np.asarray(asked))) > -1e-12
        self.fits[_key(asked)] = fits
        self._move(s, fits)
        if self.steps >= self.max_steps or self.hi - self.lo < self.min_interval:
            self.done = True

    def state_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "steps": self.steps, "done": self.done,
                "fits": dict(self.fits)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lo, self.hi = float(state["lo"]), float(state["hi"])
        self.steps, self.done = int(state["steps"]), bool(state["done"])
        self.fits = {str(k): bool(v) for k, v in state["fits"].items()}
        self.pending = []


def _key(x: np.ndarray | list[float]) -> str:
    return ",".join(f"{float(v):.9f}" for v in x)


class GlobalThreshold:
    """One global threshold over every unit's scores, prepared once: ``self(s)`` is, per unit,
    the share of its entries whose score reaches the ``1 - s`` quantile of all entries pooled
    (``s`` = share of all entries kept; ties at the threshold are kept). Sorting is done here
    once, so a call is a binary search per unit."""

    def __init__(self, scores: Sequence[np.ndarray | Sequence[float]]) -> None:
        self.units = [np.sort(np.asarray(u).reshape(-1)) for u in scores]
        self.pooled = np.sort(np.concatenate(self.units)) if self.units else np.empty(0)

    def counts(self, s: float) -> np.ndarray:
        """Per unit, how many entries reach the threshold."""
        if s >= 1.0:
            return np.array([len(u) for u in self.units])
        keep = int(round(s * len(self.pooled)))
        if keep <= 0:
            return np.zeros(len(self.units), dtype=int)
        tau = self.pooled[len(self.pooled) - keep]
        return np.array([len(u) - int(np.searchsorted(u, tau, side="left")) for u in self.units])

    def __call__(self, s: float) -> np.ndarray:
        if s >= 1.0:
            return np.ones(len(self.units))
        return np.array([c / len(u) if len(u) else 1.0 for c, u in zip(self.counts(s), self.units)],
                        dtype=float)


def threshold_fractions(scores: list[np.ndarray], s: float) -> np.ndarray:
    """Keep, in every unit, the channels whose score reaches one global threshold: the
    ``1 - s`` quantile of all channels' scores (``s`` = share of all channels kept)."""
    return GlobalThreshold(scores)(s)
