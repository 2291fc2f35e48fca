"""Sensitivity curves and the allocations made from them.

A unit's curve is what the objective loses when that unit alone is thinned to a coordinate of
the cube, every other unit dense (measured by the sensitivity agent's probes, interpolated
between them). Two allocations are made from a set of curves under the search's real cost
function (``PointCosts``), never an additive stand-in for it:

- ``knapsack``: a greedy multiple-choice knapsack. From the dense point, it repeatedly thins
  the unit whose step (to any lower level) costs the least objective per unit of budget excess
  removed, recomputing costs after every step (a residual width's cost depends on every other
  width), until every budget is met.
- ``threshold``: ModelOpt FastNAS's rule. One degradation threshold for all units: each unit
  goes as thin as its curve stays within it; the smallest threshold that meets the budget is
  found by bisection over the measured values.

Both return points that meet the budget; the search loop then grows them back to its edge.
Both take an optional ``lower`` bound per unit (a coordinate): no unit goes below it (the
sensitivity agent bounds CNN channels to a share of the uniform allocation's width).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = ["Curve", "excess", "knapsack", "threshold"]

#: Levels a unit's curve is read at in an allocation, at most (a unit with fewer choices is
#: read at each of its own).
GRID = 9


class Curve:
    """The measured loss of one unit: ``loss(x)`` at coordinate ``x`` (0 = the unit's floor,
    1 = dense, where it is 0), piecewise linear between measurements and made non-increasing in
    ``x`` (thinning more never loses less; a measurement below that is noise)."""

    def __init__(self, points: Mapping[float, float], choices: int) -> None:
        pts = dict(points)
        pts[1.0] = 0.0
        xs = np.array(sorted(pts))
        ys = np.array([pts[x] for x in xs], dtype=float)
        # From the dense end down, the loss never falls: a running maximum.
        ys = np.maximum.accumulate(ys[::-1])[::-1]
        self.xs, self.ys = xs, ys
        n = max(1, choices - 1)
        own = np.arange(n + 1) / n
        grid = own if len(own) <= GRID else np.union1d(np.linspace(0.0, 1.0, GRID),
                                                       xs[xs >= 0.0])
        self.grid = np.array([g for g in grid if 0.0 <= g <= 1.0])

    def scaled(self, factor: float) -> Curve:
        """The same curve with every loss multiplied by ``factor``."""
        out = Curve.__new__(Curve)
        out.xs, out.ys, out.grid = self.xs, self.ys * factor, self.grid
        return out

    def loss(self, x: float) -> float:
        return float(np.interp(x, self.xs, self.ys))

    def slope(self, x: float) -> float:
        """Loss per coordinate just below ``x``: what thinning the unit further costs."""
        lower = self.grid[self.grid < x - 1e-9]
        if len(lower) == 0:
            return float("inf")
        g = lower[-1]
        return (self.loss(g) - self.loss(x)) / max(x - g, 1e-9)


Costs = Callable[[np.ndarray], Mapping[str, float]]


def _levels(curve: Curve, low: float) -> np.ndarray:
    """The coordinates an allocation may give a unit: its curve's grid at or above ``low``,
    and ``low`` itself (a bound between two levels of the grid)."""
    grid = curve.grid[curve.grid >= low - 1e-9]
    return grid if low <= 0.0 or np.any(np.abs(grid - low) < 1e-9) else \
        np.union1d(grid, [low])


def excess(costs: Costs, limits: Mapping[str, float], x: np.ndarray) -> float:
    """How far ``x`` is over its budgets: the sum of each budgeted cost's overshoot, as a
    fraction of its limit (0 when every budget is met)."""
    c = costs(x)
    return float(sum(max(0.0, c[m] / lim - 1.0) for m, lim in limits.items() if lim > 0))


def knapsack(curves: Sequence[Curve], costs: Costs, limits: Mapping[str, float], *,
             start: np.ndarray | None = None, frozen: Sequence[int] = (),
             lower: Sequence[float] | None = None) -> np.ndarray:
    """Thin units greedily, least loss per budget excess removed first, from ``start`` (the
    dense point) until every budget is met; ``frozen`` units keep their coordinate, no unit
    goes below ``lower``. Returns the point reached (as thin as the floors and bounds allow
    if the budget cannot be met)."""
    x = np.ones(len(curves)) if start is None else np.array(start, dtype=float)
    low = np.zeros(len(curves)) if lower is None else np.asarray(lower, dtype=float)
    levels = [_levels(c, float(b)) for c, b in zip(curves, low)]
    over = excess(costs, limits, x)
    frozen_set = set(frozen)
    while over > 1e-12:
        best: tuple[float, int, float, float] | None = None
        for i, curve in enumerate(curves):
            if i in frozen_set:
                continue
            here = curve.loss(x[i])
            for g in levels[i][levels[i] < x[i] - 1e-9]:
                trial = x.copy()
                trial[i] = g
                left = excess(costs, limits, trial)
                removed = over - left
                if removed <= 1e-12:
                    continue
                ratio = (curve.loss(g) - here) / removed
                if best is None or ratio < best[0] - 1e-15:
                    best = (ratio, i, float(g), left)
        if best is None:  # nothing thins further: as far as the floors go
            break
        _, i, g, over = best
        x[i] = g
    return x


def threshold(curves: Sequence[Curve], costs: Costs, limits: Mapping[str, float], *,
              lower: Sequence[float] | None = None) -> np.ndarray:
    """FastNAS's allocation: the smallest loss threshold ``t`` such that every unit thinned as
    far as its curve stays within ``t`` (and not below ``lower``) meets the budget (bisection
    over the measured losses)."""
    low = np.zeros(len(curves)) if lower is None else np.asarray(lower, dtype=float)
    levels = [_levels(c, float(b)) for c, b in zip(curves, low)]

    def at(t: float) -> np.ndarray:
        x = np.ones(len(curves))
        for i, curve in enumerate(curves):
            ok = [g for g in levels[i] if curve.loss(g) <= t + 1e-12]
            x[i] = min(ok) if ok else 1.0
        return x

    ts = sorted({0.0, *(c.loss(g) for c, lv in zip(curves, levels) for g in lv)})
    lo, hi = 0, len(ts) - 1
    if excess(costs, limits, at(ts[hi])) > 1e-12:
        return at(ts[hi])  # even every unit at its floor does not meet it
    while lo < hi:
        mid = (lo + hi) // 2
        if excess(costs, limits, at(ts[mid])) <= 1e-12:
            hi = mid
        else:
            lo = mid + 1
    return at(ts[lo])
