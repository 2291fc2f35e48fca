"""Agents in sequence: ``erk+tpe`` lets ERK propose until it is done, then TPE goes on.

A heuristic allocation (ERK, global magnitude, LAMP) costs a handful of evaluations and already
beats most random allocations; a model-based search (TPE, GP, evolution) starts from nothing
and spends its first evaluations on random points. Chained, the search starts where the
heuristic left off: every result is told to every stage, so when the next stage takes over its
model (TPE's densities, the GP, evolution's population) already holds the heuristic's
candidates as observations. This is how a user with a few dozen evaluations gets the best of
both (measured in ``benchmarks/agents.py``).

The stage that asked for a point learns from it as its own; the stages after it take it as a
point they did not propose, as they do for trials replayed from an old study. Stages hand over when one
has nothing more to propose (``ask`` returns no point); the last stage's end is the chain's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Agent, AgentContext

__all__ = ["ChainAgent"]


class ChainAgent(Agent):
    """Stages in order (``a+b+c``); each proposes until it has nothing more to propose."""

    def __init__(self, stages: Sequence[Agent]) -> None:
        if len(stages) < 2:
            raise ValueError("a chain needs at least two agents, such as 'erk+tpe'")
        dims = {s.dim for s in stages}
        if len(dims) != 1:
            raise ValueError(f"chained agents search different dimensions: {sorted(dims)}")
        super().__init__(stages[0].dim, seed=stages[0].seed)
        self.stages = list(stages)
        self.name = "+".join(s.name for s in stages)
        self.stage = 0  # the stage that proposes now
        for s in self.stages[:-1]:
            s.hands_over = True
        self.objectives = max(s.objectives for s in stages)
        # Union of what the stages need: the loop computes it once and we forward it.
        self.context_needs = frozenset().union(*(s.context_needs for s in stages))  # type: ignore[misc]

    @property
    def waiting(self) -> bool:  # type: ignore[override]
        return self.stage < len(self.stages) and self.stages[self.stage].waiting

    @property
    def multi_objective(self) -> bool:  # type: ignore[override]
        return all(s.multi_objective for s in self.stages)

    def set_context(self, context: AgentContext) -> None:
        super().set_context(context)
        for s in self.stages:
            s.set_context(context)

    def ask(self, n: int) -> list[np.ndarray]:
        while self.stage < len(self.stages):
            points = self.stages[self.stage].ask(n)
            if points or self.stages[self.stage].waiting:
                return points
            self.stage += 1  # this stage is done: the next one takes over
        return []

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:
        # The proposing stage first (it matches the point with what it asked); the stages after
        # it learn it as an observation. Stages already done never ask again: not told. A probe
        # (scored outside the budget, see ``Probe``) is news only to the stage that asked.
        stages = self.stages[self.stage:self.stage + 1] if result.get("probe") \
            else self.stages[self.stage:]
        for s in stages:
            s.tell(point, result)

    def state_dict(self) -> dict[str, Any]:
        return {"chain": [s.name for s in self.stages], "stage": self.stage,
                "stages": [s.state_dict() for s in self.stages]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        names = list(state["chain"])
        if names != [s.name for s in self.stages]:
            raise ValueError(f"the saved state is of chain {'+'.join(names)!r}, not "
                             f"{self.name!r}; resume with the agent the run started with")
        self.stage = int(state["stage"])
        for s, sub in zip(self.stages, state["stages"]):
            s.load_state_dict(sub)
