"""Facts about a search space's units for agents that allocate from them (global magnitude,
LAMP, ERK, OWL) or bound their own proposals (the RL agents): computed here, where torch and the cost
models live, and handed over as plain numbers and a numpy-level cost function."""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from autoprune.agents import AgentContext, PointCosts, UnitFacts
from autoprune.search_spaces import SearchSpace, UnitFactsError

if TYPE_CHECKING:
    from autoprune.problem import PruningProblem

__all__ = ["CONTEXT_FIELDS", "agent_context", "point_costs", "space_granularity", "unit_facts"]

#: The ``AgentContext`` fields an agent may ask for in ``context_needs``.
CONTEXT_FIELDS = frozenset({"scores", "layers", "units", "budget"})


def agent_context(space: SearchSpace, model: nn.Module, *, needs: Set[str] = frozenset(),
                  problem: PruningProblem | None = None,
                  trials: int | None = None) -> AgentContext:
    """The ``AgentContext`` of ``space``; channel scores (a trace of ``model``) only when
    ``needs`` asks for them, the budget (costs of points) only with ``problem``; ``trials``
    the evaluations the search may spend."""
    unknown = set(needs) - CONTEXT_FIELDS
    if unknown:
        raise ValueError(f"an agent asked for unknown context fields {sorted(unknown)}")
    if "budget" in needs and problem is None:
        raise ValueError("an agent that needs the budget needs the pruning problem: "
                         "agent_context(..., problem=problem)")
    granularity = space_granularity(space)
    try:
        scores = _scores(space, model, granularity) if "scores" in needs else ()
        layers = tuple(tuple(rows) for rows in space.unit_layers()) if "layers" in needs else ()
        units = unit_facts(space) if "units" in needs else ()
    except UnitFactsError as err:
        raise UnitFactsError(f"this agent needs facts about units ({', '.join(sorted(needs))}) "
                             f"that the {space.name!r} space cannot give: {err}; choose "
                             "another agent or space") from None
    budget = point_costs(problem) if "budget" in needs and problem is not None else None
    return AgentContext(choices=tuple(u.choices for u in space.units), scores=scores,
                        layers=layers, units=units, budget=budget, granularity=granularity,
                        kinds=tuple(u.kind for u in space.units), trials=trials)


def space_granularity(space: SearchSpace) -> str:
    """``channels``, or for a space whose units are single weights (``Unit.kind == "weights"``)
    the space's ``granularity`` (``unstructured`` or ``nm``)."""
    if space.units and all(u.kind == "weights" for u in space.units):
        return str(getattr(space, "granularity", "unstructured"))
    return "channels"


def _scores(space: SearchSpace, model: nn.Module, granularity: str) -> tuple:
    """Channel scores as tuples of floats (as ever); per-weight scores as one read-only numpy
    array per unit (millions of weights: never Python floats)."""
    raw = space.channel_scores(model)
    if granularity == "channels":
        return tuple(tuple(float(v) for v in s) for s in raw)
    out = []
    for s in raw:
        a = np.asarray(s).reshape(-1)
        if not np.issubdtype(a.dtype, np.floating):
            a = a.astype(np.float64)
        a.flags.writeable = False  # a view: the agents cannot change what they were given
        out.append(a)
    return tuple(out)


def unit_facts(space: SearchSpace) -> tuple[UnitFacts, ...]:
    """Per unit, the dense shape of the conv/linear layer it is named after (AMC's embedding)."""
    rows = {r.name: r for r in space.layer_table(space.dense_config())}
    out = []
    for unit, owned in zip(space.units, space.unit_layers()):
        params = sum(i * o * kh * kw for i, o, kh, kw in owned)
        row = rows.get(unit.name)
        if row is None or row.kind not in ("conv", "linear"):
            out.append(UnitFacts(kind="conv", in_channels=unit.full, out_channels=unit.full,
                                 params=params))
            continue
        depthwise = row.kind == "conv" and row.groups > 1 and row.groups == row.in_channels
        out.append(UnitFacts(
            kind="depthwise" if depthwise else row.kind, in_channels=row.in_channels,
            out_channels=row.out_channels, kernel=max(row.kernel, default=1),
            stride=max(row.stride, default=1),
            in_size=int(np.prod(row.in_size[-2:])) if row.kind == "conv" and row.in_size else 1,
            params=params))
    return tuple(out)


def point_costs(problem: PruningProblem) -> PointCosts:
    """The problem's costs as a function of points of the cube, with its search limits
    (``Budget.search_limit``: a latency budget keeps the lookup table's margin)."""
    space = problem.space

    def costs(x: np.ndarray) -> Mapping[str, float]:
        return problem.costs(space.decode(np.asarray(x, dtype=float)))

    return PointCosts(costs=costs, limits={b.metric: b.search_limit for b in problem.budgets},
                      dense=dict(problem.dense_costs))
