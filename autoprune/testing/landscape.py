"""A synthetic budget landscape with a known optimum, to judge a search agent without a model.

It mimics a pruning problem: ``dim`` units, a linear cost ``a . x`` (each unit's share of the
MACs), a budget at ``budget`` (45%) of the dense cost, and an accuracy-like objective that grows
with every unit's width with diminishing returns, ``sum_i s_i log(eps + x_i)``, with unit
sensitivities ``s_i`` unknown to the agents. Points are repaired to the budget exactly as
``PruningProblem.repair`` does (uniform scaling along one monotone path), so every evaluated
point sits on the budget surface, and the optimum is known in closed form (KKT), so a search's
*regret* (optimum minus the best value found) is exact.

Used by autoprune's agent tests, ``benchmarks/agent_regret.py`` (search quality) and
``benchmarks/agent_overhead.py`` (time per proposal); a third-party agent can be run on it the
same way (:func:`run_agent`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from autoprune.agents import PointCosts, is_probe

__all__ = ["BudgetLandscape", "run_agent"]


class BudgetLandscape:
    """``f(x) = sum_i s_i log(eps + x_i)`` subject to ``a . x <= budget * sum(a)``; the costs
    ``a`` and sensitivities ``s`` are drawn from ``seed``."""

    def __init__(self, dim: int, seed: int = 0, *, budget: float = 0.45, eps: float = 0.05) -> None:
        if dim < 1 or not 0 < budget < 1 or eps <= 0:
            raise ValueError(f"need dim >= 1, 0 < budget < 1, eps > 0; got {dim}, {budget}, {eps}")
        rng = np.random.default_rng(1000 + seed)
        self.dim, self.eps = dim, eps
        self.a = rng.uniform(0.3, 2.0, dim)   # unit costs
        self.s = rng.uniform(0.2, 2.0, dim)   # unit sensitivities
        self.limit = budget * self.a.sum()
        self.optimum = self.value(self.kkt())

    def value(self, x: np.ndarray) -> float:
        return float(np.sum(self.s * np.log(self.eps + np.asarray(x, dtype=float))))

    def cost(self, x: np.ndarray) -> float:
        return float(self.a @ np.asarray(x, dtype=float))

    def feasible(self, x: np.ndarray) -> bool:
        return self.cost(x) <= self.limit * (1 + 1e-12)

    def repair(self, x: np.ndarray) -> np.ndarray:
        """``PruningProblem.repair``'s path: scale toward 0 below t = 1, toward 1 above."""
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)

        def at(t: float) -> np.ndarray:
            return x * t if t <= 1.0 else x + (1.0 - x) * (t - 1.0)

        lo, hi = 0.0, 2.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.feasible(at(mid)) else (lo, mid)
        return at(lo)

    def point_costs(self) -> PointCosts:
        """The landscape's cost and budget as the search loop hands them to agents."""
        return PointCosts(costs=lambda x: {"macs": self.cost(x)}, limits={"macs": self.limit},
                          dense={"macs": float(self.a.sum())})

    def kkt(self) -> np.ndarray:
        """The optimum: ``x_i = clip(s_i / (lam a_i) - eps, 0, 1)`` with ``a . x = limit``."""
        lo, hi = 1e-9, 1e9
        for _ in range(200):
            lam = math.sqrt(lo * hi)
            x = np.clip(self.s / (lam * self.a) - self.eps, 0.0, 1.0)
            lo, hi = (lam, hi) if self.a @ x > self.limit else (lo, lam)
        return np.clip(self.s / (hi * self.a) - self.eps, 0.0, 1.0)


def run_agent(agent: Any, landscape: BudgetLandscape, *, evaluations: int, batch: int = 1,
              on_step: Callable[[], None] | None = None) -> list[float]:
    """The search loop in miniature: ask, repair, evaluate, tell (``on_step`` after each
    evaluation). A ``Probe`` is evaluated as it is, outside the budget, and is never the best.
    Returns the regret of the best point after each evaluation."""
    best, regrets = -math.inf, []
    while len(regrets) < evaluations:
        points = agent.ask(min(batch, evaluations - len(regrets)))
        if not points:
            raise AssertionError(f"{type(agent).__name__} stopped after {len(regrets)} "
                                 "evaluations")
        for x in points:
            probing = is_probe(x)
            r = np.clip(np.asarray(x, dtype=float), 0.0, 1.0) if probing else landscape.repair(x)
            if not probing and not landscape.feasible(r):
                raise AssertionError(f"repair left {r} over the budget")
            v = landscape.value(r)
            agent.tell(r, {"objective": v, "cost.macs": landscape.cost(r),
                           **({"probe": 1.0} if probing else {})})
            if landscape.feasible(r):
                best = max(best, v)
            regrets.append(landscape.optimum - best)
            if on_step is not None:
                on_step()
    return regrets
