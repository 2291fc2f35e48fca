"""Sensitivity analysis as an agent: measure each unit's curve alone, allocate the budget from
the curves, then refine the allocation with real evaluations.

Classic sensitivity analysis (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017;
NNI's and Distiller's sensitivity pruners; ModelOpt's FastNAS) prunes one unit at a time with
every other unit dense and gives the units that lose least the most pruning. Here:

1. **Uniform first.** The first proposal is the uniform allocation (the loop scales it to the
   budget), so even a search cut short has a network that meets the budget.
2. **Curves.** The dense point, then each unit thinned alone to a few levels of the cube (its
   floor first), every other unit dense. These are ``Probe`` points: scored as they are,
   outside the budget, and kept in the study like every trial, so a resumed search never
   measures them again. How many levels a unit gets follows from the trials the search may
   spend (``AgentContext.trials``): at most ``SHARE`` of them go to curves; when even one level
   per unit does not fit, the units whose floor saves most are measured and the rest borrow
   the median curve of their kind. With too few trials for any curve (under 5), the rest of
   the trials are random allocations.
3. **Allocations** under the search's real cost function (``agents.curves``): the greedy
   knapsack over the curves, and FastNAS's single degradation threshold. A CNN's channel units
   keep at least ``SPREAD`` of the uniform allocation's width in these and in the refinement
   (a bounded deviation from uniform, as OWL bounds its layer sparsities); other kinds keep
   their floors.
4. **Refinement** until the trials run out: half the time one unit of the best network so far
   is given back a level (the ones the curves say lose most, more often) and the others are
   thinned back to the budget; otherwise a fresh allocation (threshold or knapsack) from the
   curves each scaled by a random factor: the curves are measured one unit at a time, and
   units do not add up exactly (EvoPress's finding). In a chain (``sensitivity+tpe``) it
   proposes ``HANDOVER`` allocations in all (the two, then noisy ones) and hands over: they
   are the next stage's first points, and the probes are news to no other stage.

The curve of a unit is what the objective loses against the dense score. On an accuracy
objective whose evaluator also reports ``loss``, the loss lost counts too (x ``TIE``): on a
small validation set most single-unit probes change no prediction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np

from .base import Agent, AgentContext, probe
from .curves import Curve, excess, knapsack, threshold
from .registry import register_agent

__all__ = ["SensitivityAgent", "allocation_from_probes", "lower_bounds"]


@register_agent("sensitivity")
class SensitivityAgent(Agent):
    """Each unit's sensitivity curve, measured alone; a knapsack over the curves; refinement."""

    context_needs: ClassVar[frozenset[str]] = frozenset({"budget"})
    #: Most of the search's trials the curves may take.
    SHARE: ClassVar[float] = 0.7
    #: Levels per unit at most (and when the trial count is not known: ``DEFAULT_LEVELS``).
    MAX_LEVELS: ClassVar[int] = 4
    DEFAULT_LEVELS: ClassVar[int] = 2
    #: Weight of the evaluator's ``loss`` in a curve on another objective (accuracy): on a few
    #: hundred images accuracy moves in steps and most single-unit probes change no
    #: prediction, while the loss measures the damage smoothly. Measured on ResNet-20 (40
    #: evaluations, 3 seeds): 0.886 at 0.01, 0.895 at 0.1, 0.918 at 1.
    TIE: ClassVar[float] = 1.0
    #: Allocations proposed in a chain before the next stage takes over: the knapsack's, the
    #: threshold's, then both again from curves scaled by random factors (a model-based
    #: stage's first points: TPE samples at random until it holds 10).
    HANDOVER: ClassVar[int] = 10
    #: Spread of those random factors (log-normal sigma): how far units may not add up.
    NOISE: ClassVar[float] = 0.5
    #: A CNN's channels (kind ``channels``) keep at least this share of the width the uniform
    #: allocation meeting the budget gives them (rounded down to their choices), in every
    #: allocation made from the curves (OWL's bounded deviation from uniform). Alone, the
    #: expansions of skip-connected blocks lose little, so the curves cut many of them to the
    #: floor together, and a 100-step fine-tune does not bring that back (issue 34). MLP
    #: neurons, heads and the residual width keep their floors (the character-level decoder
    #: wins with 5% of its MLPs). Peers league, val after the fine-tune (3 data orders):
    #: MobileNet-V2 0.965 unbounded (4 seeds), 0.971 at 0.5, 0.974 at 0.7 (seeds 0 1);
    #: ResNet-20 0.976 unbounded, 0.973 at 0.7 (4 seeds; before it 0.918 and 0.911).
    SPREAD: ClassVar[float] = 0.7

    def __init__(self, dim: int, *, seed: int = 0) -> None:
        super().__init__(dim, seed=seed)
        self.plan: list[tuple[int, float]] | None = None  # probes: (unit or -1 = dense, x)
        # What the probes measured: (unit or -1 for the dense point, x) -> score (higher is
        # better; -inf for a probe that failed).
        self.measured: dict[tuple[int, float], float] = {}
        self.asked = 0  # proposals so far: uniform, probes, allocations, refinements
        self.pending: list[str] = []  # what each outstanding proposal was
        self.best: tuple[list[float], float] | None = None  # best feasible point, objective
        self.rng = np.random.default_rng(seed)
        self.repeats = 0  # refinements in a row that proposed a configuration scored before
        self._curves: list[Curve] | None = None
        self._finals: list[np.ndarray] | None = None
        self._low: np.ndarray | None = None

    # ------------------------------------------------------------------ the plan
    def _plan(self) -> list[tuple[int, float]]:
        """The probes: the dense point, then each planned unit at its levels (floor first)."""
        if self.plan is None:
            ctx = self._require_context()
            levels, units = _levels(self.dim, ctx.trials, self.SHARE, self.MAX_LEVELS,
                                    self.DEFAULT_LEVELS)
            if units < self.dim:  # not every unit fits: those whose floor saves most first
                order = np.argsort(-self._savings(), kind="stable")[:units]
                chosen = sorted(int(i) for i in order)
            else:
                chosen = list(range(self.dim))
            coords = [k / levels for k in range(levels)]
            self.plan = [_key(-1, 1.0)] + [_key(i, c) for i in chosen for c in coords] \
                if units > 0 else []
        return self.plan

    def _savings(self) -> np.ndarray:
        """Per unit, how much of the budgeted costs its floor alone removes."""
        budget = self._require_context().budget
        assert budget is not None
        limits = budget.limits or {m: v for m, v in budget.dense.items() if v > 0}
        dense = np.ones(self.dim)
        base = _load(budget.costs, limits, dense)
        out = np.empty(self.dim)
        for i in range(self.dim):
            x = dense.copy()
            x[i] = 0.0
            out[i] = base - _load(budget.costs, limits, x)
        return out

    def curves(self) -> list[Curve] | None:
        """Every unit's curve; ``None`` until the dense point and every planned probe are in
        (probes told from elsewhere, such as a study's, count too)."""
        plan = self._plan()
        if not plan or any(k not in self.measured for k in plan):
            return None
        if self._curves is None:
            self._curves = _curves(self.measured, self._require_context())
        return self._curves

    def allocations(self) -> list[np.ndarray]:
        """The knapsack's and the threshold's allocations (empty before the curves are in, or
        when the search has no budget)."""
        curves = self.curves()
        budget = self._require_context().budget
        if curves is None or budget is None or not budget.limits:
            return []
        if self._finals is None:
            low = self.lower()
            out = [knapsack(curves, budget.costs, budget.limits, lower=low)]
            alt = threshold(curves, budget.costs, budget.limits, lower=low)
            if not np.allclose(alt, out[0]):
                out.append(alt)
            self._finals = out
        return self._finals

    def lower(self) -> np.ndarray:
        """Per unit, the thinnest coordinate an allocation from the curves may give it
        (``SPREAD``; 0, the floor, for every kind but ``channels``)."""
        if self._low is None:
            self._low = lower_bounds(self._require_context(), self.SPREAD)
        return self._low

    # ------------------------------------------------------------------ ask / tell
    @property
    def waiting(self) -> bool:  # type: ignore[override]
        return bool(self.pending) and self.asked > len(self._plan())

    def ask(self, n: int) -> list[np.ndarray]:
        plan = self._plan()
        out: list[np.ndarray] = []
        while len(out) < n:
            k = self.asked
            if k == 0:  # the uniform allocation: the loop scales it to the budget
                out.append(np.ones(self.dim))
                self.pending.append("uniform")
            elif k <= len(plan):
                unit, x = plan[k - 1]
                point = np.ones(self.dim)
                if unit >= 0:
                    point[unit] = x
                out.append(probe(point))
                self.pending.append("probe")
            else:
                if not plan and not self.hands_over:  # too few trials for any curve
                    out.append(self.rng.random(self.dim))  # random search, repaired
                    self.pending.append("refinement")
                    self.asked += 1
                    continue
                if plan and self.curves() is None:
                    break  # the probes are not all in: wait for them
                finals = self.allocations()
                j = k - 1 - len(plan)
                if j < len(finals):
                    out.append(finals[j])
                    self.pending.append("allocation")
                elif self.hands_over and finals and j < self.HANDOVER:
                    out.append(self._variant())  # the next stage's first points
                    self.pending.append("allocation")
                elif self.hands_over or not finals or self.pending:
                    break  # done (in a chain), or the refinement waits for its results
                else:
                    out.append(self._refinement())
                    self.pending.append("refinement")
            self.asked += 1
        return out

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:
        what = self.pending.pop(0) if self.pending else "foreign"
        value = float(result.get("objective", math.nan))
        if what == "refinement":  # a known configuration again: explore further next time
            self.repeats = self.repeats + 1 if result.get("repeat") else 0
        if what == "probe" or result.get("probe"):
            where = _probed(point)
            if where is not None:
                self.measured[where] = self._score(result) if math.isfinite(value) \
                    else -math.inf
                self._curves = self._finals = None
            return
        if not math.isfinite(value):
            return
        if self.best is None or value > self.best[1]:
            self.best = ([float(v) for v in np.asarray(point, dtype=float)], value)

    def _score(self, result: Mapping[str, float]) -> float:
        value = float(result["objective"])
        loss = result.get("metric.loss")
        if loss is not None and math.isfinite(loss) and abs(value + loss) > 1e-12:
            value -= self.TIE * float(loss)  # the loss measures what accuracy rounds away
        return value

    # ------------------------------------------------------------------ refinement
    def _refinement(self) -> np.ndarray:
        """Half the time one level back to a unit of the best network so far (a unit the curves
        say loses much, more often; the noisy curves thin the others back to the budget),
        otherwise a fresh allocation from noisy curves (``_variant``)."""
        curves = self.curves()
        budget = self._require_context().budget
        assert curves is not None and budget is not None
        best = np.asarray(self.best[0]) if self.best is not None else self.allocations()[0]
        up = [i for i in range(self.dim) if best[i] < 1.0 - 1e-9]
        if not up or self.rng.random() >= 0.5:
            return self._variant()
        lost = np.array([curves[i].loss(best[i]) for i in up]) + 1e-6
        i = up[int(self.rng.choice(len(up), p=lost / lost.sum()))]
        higher = curves[i].grid[curves[i].grid > best[i] + 1e-9]
        start = best.copy()
        steps = 1 + int(self.rng.random() < 0.3) + self.repeats
        start[i] = float(higher[min(steps, len(higher)) - 1])
        return knapsack(self._noisy(curves), budget.costs, budget.limits, start=start,
                        frozen=[i], lower=self.lower())

    def _variant(self) -> np.ndarray:
        """An allocation from the curves each scaled by a random factor: the threshold's or the
        knapsack's, at random. The curves are measured one unit at a time and units do not
        add up exactly; these are the allocations the curves make plausible."""
        curves = self.curves()
        budget = self._require_context().budget
        assert curves is not None and budget is not None
        rule = threshold if self.rng.random() < 0.5 else knapsack
        return rule(self._noisy(curves), budget.costs, budget.limits, lower=self.lower())

    def _noisy(self, curves: list[Curve]) -> list[Curve]:
        # Wider when the last refinements were all configurations scored before.
        factors = self.rng.lognormal(0.0, self.NOISE * (1 + self.repeats), size=len(curves))
        return [c.scaled(float(f)) for c, f in zip(curves, factors)]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"measured": [[u, x, v if math.isfinite(v) else None]
                             for (u, x), v in self.measured.items()],
                "plan": self._plan(),  # a resume with more trials keeps these probes
                "asked": self.asked - len(self.pending), "best": self.best,
                "repeats": self.repeats,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "measured" not in state:
            raise ValueError("the saved sensitivity state is from an older autoprune (probes "
                             "around the uniform allocation); start the search in a new run "
                             "folder")
        measured = {_key(int(u), float(x)): -math.inf if v is None else float(v)
                    for u, x, v in state["measured"]}
        if any(u >= self.dim for u, _ in measured):
            raise ValueError(f"the saved sensitivity state probes units that this space of "
                             f"{self.dim} units does not have")
        self.measured = measured
        if "plan" in state:
            self.plan = [_key(int(u), float(x)) for u, x in state["plan"]]
        self.asked, self.pending = int(state["asked"]), []
        best = state.get("best")
        self.best = (list(best[0]), float(best[1])) if best else None
        self.rng.bit_generator.state = state["rng"]
        self.repeats = int(state.get("repeats", 0))
        self._curves = self._finals = None
        self._low = None


def allocation_from_probes(context: AgentContext,
                           told: Iterable[tuple[np.ndarray, Mapping[str, float]]]
                           ) -> np.ndarray | None:
    """The knapsack's allocation for ``context``'s budget from probe results measured before
    (a finished study's, for a budget chosen after the search: ``autoprune pick``); ``None``
    when they hold no dense point or no unit's probe, or the context has no budget."""
    agent = SensitivityAgent(context.dim)
    agent.set_context(context)
    for point, result in told:
        agent.tell(point, {**result, "probe": 1.0})
    if context.budget is None or not context.budget.limits or \
            not any(u >= 0 for u, _ in agent.measured):
        return None
    curves = _curves(agent.measured, context)
    return None if curves is None else knapsack(curves, context.budget.costs,
                                                context.budget.limits, lower=agent.lower())


def lower_bounds(ctx: AgentContext, share: float) -> np.ndarray:
    """Per unit, the coordinate keeping ``share`` of the elements the uniform allocation that
    meets ``ctx``'s budget keeps there (the largest choice not above it), for ``channels``
    units; 0 (the floor) for the others, and for all without a budget or kinds."""
    low = np.zeros(ctx.dim)
    budget = ctx.budget
    if share <= 0 or budget is None or not budget.limits or not ctx.kinds:
        return low
    lo, hi = 0.0, 1.0  # the uniform point: the most t * ones that meets the budget
    if excess(budget.costs, budget.limits, np.ones(ctx.dim)) > 1e-12:
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if excess(budget.costs, budget.limits,
                                         np.full(ctx.dim, mid)) <= 1e-12 else (lo, mid)
    else:
        lo = 1.0
    for i, (kind, choices) in enumerate(zip(ctx.kinds, ctx.choices)):
        if kind != "channels" or len(choices) < 2:
            continue
        n = len(choices) - 1
        want = share * choices[int(round(lo * n))]
        # Rounded down to the unit's choices: on a narrow unit (16 channels in steps of 4) a
        # bound rounded up would be the uniform width itself, no freedom left.
        j = max([j for j, c in enumerate(choices) if c <= want + 1e-9], default=0)
        low[i] = j / n
    return low


def _curves(measured: Mapping[tuple[int, float], float],
            ctx: AgentContext) -> list[Curve] | None:
    """Every unit's curve from probe scores (a unit not measured borrows its kind's median
    curve); ``None`` without the dense point."""
    if _key(-1, 1.0) not in measured:
        return None
    worst = min((v for v in measured.values() if math.isfinite(v)), default=0.0)
    score = {k: v if math.isfinite(v) else worst - 1.0  # a failed probe: the worst
             for k, v in measured.items()}
    dense = score[_key(-1, 1.0)]
    losses: dict[int, dict[float, float]] = {}
    for (unit, x), v in score.items():
        if unit >= 0:
            losses.setdefault(unit, {})[x] = dense - v
    if not losses:
        return None
    kinds = ctx.kinds or ("",) * ctx.dim
    return [Curve(losses.get(i) or _borrowed(losses, kinds, i), len(ctx.choices[i]))
            for i in range(ctx.dim)]


def _key(unit: int, x: float) -> tuple[int, float]:
    return (unit, round(float(x), 9))


def _probed(point: np.ndarray) -> tuple[int, float] | None:
    """What a probe point measures: ``(-1, 1.0)`` the dense point, ``(i, x)`` unit ``i``
    alone at ``x``; ``None`` for a point that thins several units."""
    x = np.asarray(point, dtype=float)
    thin = np.flatnonzero(x < 1.0 - 1e-9)
    if len(thin) == 0:
        return _key(-1, 1.0)
    return _key(int(thin[0]), x[thin[0]]) if len(thin) == 1 else None


def _levels(dim: int, trials: int | None, share: float, most: int,
            default: int) -> tuple[int, int]:
    """(levels per unit, units measured) for ``dim`` units and ``trials`` evaluations: the
    uniform and the dense point, then as many levels per unit as ``share`` of the trials
    allow (at least one; fewer units when even one each does not fit)."""
    if trials is None:
        return default, dim
    room = int(share * trials) - 2
    if room < 1:
        return 1, 0
    if room < dim:
        return 1, room
    return max(1, min(most, room // dim)), dim


def _load(costs: Any, limits: Mapping[str, float], x: np.ndarray) -> float:
    c = costs(x)
    return float(sum(c[m] / lim for m, lim in limits.items() if lim > 0))


def _borrowed(measured: Mapping[int, Mapping[float, float]], kinds: tuple[str, ...],
              unit: int) -> dict[float, float]:
    """The median curve of the measured units of ``unit``'s kind (of all, if none is)."""
    same = [m for i, m in measured.items() if kinds[i] == kinds[unit]] or list(measured.values())
    xs = sorted({x for m in same for x in m})
    return {x: float(np.median([Curve(m, 2).loss(x) for m in same])) for x in xs}
