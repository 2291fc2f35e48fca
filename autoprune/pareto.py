"""Pareto searches: one search over a range of budgets, returning the non-dominated set.

With ``--objective pareto`` the agent searches one more coordinate than the space has: its
last coordinate picks, per candidate, where the first budget's limit sits between the thinnest
network's cost and the requested budget; the candidate is repaired onto that limit (the other
budgets stay as they are). The agent maximises two objectives, the score and minus the cost
as a fraction of the dense model's, so a multi-objective agent (NSGA-II, MOTPE, GP with
expected hypervolume improvement) spreads its candidates along the front. The result is the
front (accuracy against cost) with its hypervolume; ``autoprune pick`` then chooses from a
finished run for any budget without a new search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from autoprune.report import pareto_front
from autoprune.study import TrialRecord
from autoprune.targets import Budget

__all__ = ["ParetoRange", "front_summary", "hypervolume"]


@dataclass(frozen=True, kw_only=True)
class ParetoRange:
    """Budgets from ``low`` to ``high`` on cost ``metric`` (absolute units); ``dense`` is the
    dense model's cost, the unit of the second objective."""

    metric: str
    low: float
    high: float
    dense: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high or self.dense <= 0:
            raise ValueError(f"a Pareto range needs 0 <= low <= high and dense > 0, got {self}")

    def limit(self, level: float) -> float:
        """The limit at ``level`` in ``[0, 1]`` (0 = the thinnest network, 1 = the budget)."""
        return self.low + min(1.0, max(0.0, float(level))) * (self.high - self.low)

    def budgets(self, budgets: Sequence[Budget], level: float) -> list[Budget]:
        """``budgets`` with the one on ``metric`` moved to ``limit(level)``."""
        out, moved = [], False
        for b in budgets:
            if b.metric == self.metric and not moved:
                b, moved = replace(b, limit=self.limit(level)), True
            out.append(b)
        return out

    def cost_objective(self, costs: Mapping[str, float]) -> float:
        """The second objective: minus the cost as a fraction of the dense model's."""
        return -costs[self.metric] / self.dense


def hypervolume(points: Sequence[tuple[float, float]], *, ref_cost: float,
                ref_objective: float) -> float:
    """Area dominated by ``(cost, objective)`` points (lower cost, higher objective are better)
    and bounded by the reference point ``(ref_cost, ref_objective)``; points beyond the
    reference add nothing."""
    pts = sorted((c, o) for c, o in points if c <= ref_cost and o >= ref_objective)
    area, best = 0.0, ref_objective
    for i, (c, o) in enumerate(pts):
        best = max(best, o)
        right = pts[i + 1][0] if i + 1 < len(pts) else ref_cost
        area += (right - c) * (best - ref_objective)
    return area


def front_summary(records: Sequence[TrialRecord], *, metric: str, dense_cost: float,
                  ref_cost: float, ref_objective: float = 0.0) -> dict[str, object]:
    """The front on ``metric`` as JSON, with its hypervolume in (fraction of dense cost) x
    objective units, reference point ``(ref_cost / dense_cost, ref_objective)``."""
    front = pareto_front(records, metric)
    hv = hypervolume([(r.costs[metric] / dense_cost, r.objective) for r in front],
                     ref_cost=ref_cost / dense_cost, ref_objective=ref_objective)
    return {"metric": metric, "hypervolume": hv,
            "reference": {"cost_fraction": ref_cost / dense_cost, "objective": ref_objective},
            "points": [{"trial": r.number, "objective": r.objective,
                        "cost_fraction": r.costs[metric] / dense_cost, "costs": dict(r.costs),
                        "metrics": dict(r.metrics), "config": dict(r.config)} for r in front]}
