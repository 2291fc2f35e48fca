"""A pruning problem: a search space, the cost models of its budgets, and the budgets.

It costs configurations from their layer tables and repairs infeasible points *before* any
pruning happens, so every evaluated candidate meets every budget.

Costs are asked for far more often than candidates are evaluated: every repair is a 30-step
bisection, and the AMC environment bounds every action by one. So MACs and parameters come
from exact quadratic forms of the channel counts where the space allows them
(:class:`QuadraticCost`, checked against the layer table at random configurations, built once
per space), and every configuration's costs are memoised.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from autoprune.costs import CostModel, SizeCost, get_cost_model
from autoprune.latency.table import LatencyTable
from autoprune.search_spaces import SearchSpace
from autoprune.targets import Budget, Target, TargetError, resolve_budgets

__all__ = ["FAST_UNITS", "PruningProblem", "QuadraticCost", "build_problem", "quadratic_costs"]

_REPAIR_STEPS = 30
#: Spaces of at most this many units get quadratic forms (about d^2 / 2 exact evaluations).
FAST_UNITS = 48
_MEMO = 200_000  # memoised configurations per problem, then the memo starts over
_FORMS: weakref.WeakKeyDictionary[SearchSpace, dict[str, QuadraticCost]] = \
    weakref.WeakKeyDictionary()
#: Budgets on single weights: only a weight-granularity space's rows carry what they count.
_WEIGHT_METRICS = ("weights", "size_bytes")


def _forms(space: SearchSpace) -> dict[str, QuadraticCost]:
    if space not in _FORMS:
        _FORMS[space] = quadratic_costs(space)
    return _FORMS[space]


# ---------------------------------------------------------------------- fast costs
class QuadraticCost:
    """A cost that is exactly a quadratic polynomial of the channel counts, evaluated in
    microseconds instead of rebuilding the layer table (an evolution repairs hundreds of
    children, each a 30-step bisection over costs).

    MACs and parameters are: each conv/linear row is ``k * in * out`` (depthwise: ``k * out``),
    each norm row ``k * out``, and a row's widths come from at most two units. The coefficients
    are read off the exact cost at the thinnest configuration and at one- and two-unit changes
    of it, and the form is checked against the exact cost at random configurations (the
    caller falls back to the exact cost if it does not match).
    """

    def __init__(self, space: SearchSpace, exact: Callable[[dict[str, int]], float]) -> None:
        units = space.units
        self.base = np.array([u.minimum for u in units], dtype=float)
        self.span = np.array([u.full - u.minimum for u in units], dtype=float)

        def at(delta: np.ndarray) -> float:
            return float(exact({u.name: int(b + d) for u, b, d in zip(units, self.base, delta)}))

        d = len(units)
        self.f0 = at(np.zeros(d))
        self.linear, self.square = np.zeros(d), np.zeros(d)
        self.cross = np.zeros((d, d))
        gain = np.zeros(d)
        for i in range(d):
            one, half = np.zeros(d), np.zeros(d)
            one[i] = self.span[i]
            # a width the unit can take, near the middle (grouped layers move in steps)
            inner = [c - self.base[i] for c in getattr(units[i], "choices", ())
                     if self.base[i] < c < self.base[i] + self.span[i]]
            half[i] = (float(inner[len(inner) // 2]) if inner
                       else max(1.0, float(np.floor(self.span[i] / 2))))
            g1, g2 = at(one) - self.f0, at(half) - self.f0
            x1, x2 = one[i], half[i]
            if x1 == x2 or x1 == 0:
                continue
            # g(x) = a x + s x^2 through (x1, g1) and (x2, g2)
            self.square[i] = (g1 / x1 - g2 / x2) / (x1 - x2)
            self.linear[i] = g1 / x1 - self.square[i] * x1
            gain[i] = g1
        for i in range(d):
            for j in range(i + 1, d):
                both = np.zeros(d)
                both[i], both[j] = self.span[i], self.span[j]
                if both[i] and both[j]:
                    rest = at(both) - self.f0 - gain[i] - gain[j]
                    self.cross[i, j] = rest / (both[i] * both[j])

    def __call__(self, channels: Sequence[int]) -> float:
        delta = np.asarray(channels, dtype=float) - self.base
        return float(self.f0 + self.linear @ delta + self.square @ (delta * delta)
                     + delta @ self.cross @ delta)


def quadratic_costs(space: SearchSpace, *, seed: int = 0) -> dict[str, QuadraticCost]:
    """Exact fast forms of ``macs`` and ``params`` for ``space`` (those that check out at
    random configurations; none for a space of more than ``FAST_UNITS`` units, whose forms
    would cost more exact evaluations to build than a search makes)."""
    if space.dim > FAST_UNITS:
        return {}
    rng = np.random.default_rng(seed)
    checks = [space.decode(rng.random(space.dim)) for _ in range(8)]
    tables: dict[tuple[int, ...], Any] = {}  # both forms read the same configurations

    def table(config: Mapping[str, int]) -> Any:
        key = tuple(config[u.name] for u in space.units)
        if key not in tables:
            tables[key] = space.layer_table(config)
        return tables[key]

    fast = space.cost_totals() if hasattr(space, "cost_totals") else None  # (the same sums)
    out = {}
    for name in ("macs", "params"):
        model = get_cost_model(name)
        exact = (lambda c, n=name: fast(c)[n]) if fast is not None else \
            (lambda c, m=model: m.estimate(table(c)))
        try:
            form = QuadraticCost(space, exact)
        except ValueError:  # a width the space cannot cost: the exact cost it is
            continue
        if all(math.isclose(form([c[u.name] for u in space.units]),
                            model.estimate(space.layer_table(c)), rel_tol=1e-9, abs_tol=0.5)
               for c in checks):
            out[name] = form
    return out





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
        _check_weight_budgets(space, targets)
        for t in targets:
            if t.metric not in models:
                models[t.metric] = get_cost_model(t.metric)
        self.cost_models: dict[str, CostModel] = models
        # forms of the standard cost models only (a caller's own "macs" model is its own)
        self._fast = {n: f for n, f in _forms(space).items()
                      if type(models[n]) is type(get_cost_model(n))}
        self._memo: dict[tuple[int, ...], dict[str, float]] = {}
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
        key = tuple(int(config.get(u.name, u.full)) for u in self.space.units)
        hit = self._memo.get(key)
        if hit is None:
            table = None
            hit = {}
            for name, m in self.cost_models.items():
                form = self._fast.get(name)
                if form is not None:
                    hit[name] = form(key)
                else:
                    table = table or self.space.layer_table(config)
                    hit[name] = m.estimate(table)
            if len(self._memo) >= _MEMO:
                self._memo.clear()
            self._memo[key] = hit
        return dict(hit)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_memo": {}}  # shipped to workers without the memo

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


def _check_weight_budgets(space: SearchSpace, targets: Sequence[Target]) -> None:
    """``sparsity=`` and ``size=`` on a space whose rows count no single weights (the channel
    space) is one error, before anything is costed."""
    asked = [t.text for t in targets if t.metric in _WEIGHT_METRICS]
    if asked and not any(r.weight_elements > 0
                         for r in space.layer_table(space.dense_config())):
        raise TargetError(f"target {asked[0]!r} on the {space.name} space: sparsity= and size= "
                          "budget single weights: use --granularity unstructured or nm")


def build_problem(space: SearchSpace, targets: Iterable[Target], *,
                  table: LatencyTable | None = None, storage_format: str = "bitmap",
                  problem: Callable[..., PruningProblem] = PruningProblem,
                  value_bytes: int = 4) -> PruningProblem:
    """The one way a search's problem is made (search, allocate, once-for-all, benchmarks):
    the budgets over ``space``, a latency budget costed by ``table`` with predictions kept the
    table's typical error inside the limit (``LatencyTable.prediction_margin``), a ``size=``
    budget costed in ``storage_format`` (``dense``, ``bitmap``, ``csr``: ``SizeCost``) with
    ``value_bytes`` a stored weight (2 for a half-precision search).
    ``problem`` makes the instance (once-for-all passes its memoised subclass)."""
    targets = list(targets)
    models: list[CostModel] = []
    if any(t.metric == "size_bytes" for t in targets):
        models.append(SizeCost(storage_format, value_bytes=value_bytes))
    if table is None:
        return problem(space, targets, cost_models=models) if models else problem(space, targets)
    return problem(space, targets, cost_models=[table.cost_model(), *models],
                   margins={"latency_ms": table.prediction_margin()})
