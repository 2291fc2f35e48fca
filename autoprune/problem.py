"""A pruning problem: a search space, the cost models of its budgets, and the budgets.

It costs configurations from their layer tables and repairs infeasible points *before* any
pruning happens, so every evaluated candidate meets every budget.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from autoprune.costs import CostModel, get_cost_model
from autoprune.latency.table import LatencyTable
from autoprune.search_spaces import SearchSpace
from autoprune.targets import Budget, Target, resolve_budgets

__all__ = ["PruningProblem", "build_problem"]

_REPAIR_STEPS = 30


class PruningProblem:
    """Costs and budgets over one search space.

    ``costs(config)`` returns every cost model's estimate (always ``macs`` and ``params``, plus
    those the budgets name). ``repair(x)`` moves a point along a monotone path until it sits just
    inside every budget. ``cost_models`` adds models that need construction (a latency table's
    ``latency_ms``); ``margins`` keeps predictions a fraction inside a budget (see ``Budget``).
    """

    def __init__(self, space: SearchSpace, targets: Iterable[Target], *,
                 cost_models: Sequence[CostModel] = (),
                 margins: Mapping[str, float] | None = None) -> None:
        self.space = space
        models = {m.name: m for m in cost_models}
        for name in ("macs", "params"):
            models.setdefault(name, get_cost_model(name))
        targets = list(targets)
        for t in targets:
            if t.metric not in models:
                models[t.metric] = get_cost_model(t.metric)
        self.cost_models: dict[str, CostModel] = models
        self.dense_costs = self.costs(space.dense_config())
        self.min_costs = self.costs(space.decode(np.zeros(space.dim)))
        self.budgets: list[Budget] = resolve_budgets(targets, self.dense_costs, self.min_costs,
                                                     margins=margins)

    def with_margin(self, metric: str, margin: float) -> PruningProblem:
        """The same problem with ``metric``'s budget searched ``margin`` (a fraction) inside its
        limit, never below what the thinnest configuration costs."""
        out = copy.copy(self)
        out.budgets = []
        for b in self.budgets:
            if b.metric == metric:
                floor = self.min_costs[metric] / b.limit
                b = replace(b, margin=min(max(0.0, margin), max(0.0, 1.0 - floor)))
            out.budgets.append(b)
        return out

    def costs(self, config: Mapping[str, int]) -> dict[str, float]:
        table = self.space.layer_table(config)
        return {name: m.estimate(table) for name, m in self.cost_models.items()}

    def feasible(self, costs: Mapping[str, float], *,
                 budgets: Sequence[Budget] | None = None) -> bool:
        return all(b.met_by(costs) for b in (self.budgets if budgets is None else budgets))

    def repair(self, x: Sequence[float], *, grow: bool = True,
               budgets: Sequence[Budget] | None = None) -> np.ndarray:
        """The point on the path through ``x`` that keeps the most while meeting every budget.

        The path scales every coordinate toward the lower bound (t < 1), through ``x`` (t = 1),
        and, with ``grow``, toward the dense model (t > 1) — the same uniform scaling AMC uses to
        bring an allocation to its budget, applied in both directions so no candidate wastes
        budget. Decoding is monotone and so are the costs, so a bisection on t finds it.
        The returned point decodes exactly to the repaired configuration. ``budgets`` replaces
        the problem's own (a Pareto search moves one limit per candidate); none may be below
        the thinnest network's cost.
        """
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        budgets = self.budgets if budgets is None else list(budgets)
        if not budgets:
            return self.space.encode(self.space.decode(x))

        def at(t: float) -> np.ndarray:
            return x * t if t <= 1.0 else x + (1.0 - x) * (t - 1.0)

        def ok(t: float) -> bool:
            return self.feasible(self.costs(self.space.decode(at(t))), budgets=budgets)

        hi_limit = 2.0 if grow else 1.0
        if ok(hi_limit):
            return self.space.encode(self.space.decode(at(hi_limit)))
        lo, hi = 0.0, hi_limit  # ok(0) holds: resolve_budgets refused budgets below the minimum
        for _ in range(_REPAIR_STEPS):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return self.space.encode(self.space.decode(at(lo)))


def build_problem(space: SearchSpace, targets: Iterable[Target], *,
                  table: LatencyTable | None = None,
                  problem: Callable[..., PruningProblem] = PruningProblem) -> PruningProblem:
    """The one way a search's problem is made (search, allocate, once-for-all, benchmarks):
    the budgets over ``space``, a latency budget costed by ``table`` with predictions kept the
    table's typical error inside the limit (``LatencyTable.prediction_margin``). ``problem``
    makes the instance (once-for-all passes its memoised subclass)."""
    if table is None:
        return problem(space, targets)
    return problem(space, targets, cost_models=[table.cost_model()],
                   margins={"latency_ms": table.prediction_margin()})
