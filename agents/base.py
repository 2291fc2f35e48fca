"""The agent contract: propose points of the unit cube, learn from their results.

Agents never see torch modules or costs models: only the dimension of the space, points in
``[0, 1]^dim`` and result dictionaries. Heuristics, random search, Bayesian optimization,
evolution and reinforcement learning all sit behind this one ask/tell loop, so every method is
compared under the same loop, budgets and evaluations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["AGENTS", "Agent", "agent_descriptions", "make_agent", "register_agent"]


class Agent(ABC):
    """Proposes points; told what each evaluated point scored.

    ``tell`` receives the point that was *actually* evaluated (after the search loop repaired
    it to meet the budget) and a result with at least ``objective`` (higher is better; NaN for a
    failed trial) plus the trial's costs and metrics.
    """

    name: str = "abstract"

    def __init__(self, dim: int, *, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"an agent needs at least one dimension, got {dim}")
        self.dim = dim
        self.seed = seed

    @abstractmethod
    def ask(self, n: int) -> list[np.ndarray]:
        """Up to ``n`` new points; an empty list means the agent has nothing more to propose."""

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:  # noqa: B027
        """Learn from one evaluated point (stateless agents ignore it)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, enough to resume the search where it stopped."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


AGENTS: dict[str, type[Agent]] = {}


def register_agent(name: str) -> Callable[[type[Agent]], type[Agent]]:
    """Class decorator: make an agent available by ``name`` (``--agent NAME``)."""

    def deco(cls: type[Agent]) -> type[Agent]:
        if name in AGENTS:
            raise ValueError(f"agent {name!r} is registered twice")
        cls.name = name
        AGENTS[name] = cls
        return cls

    return deco


def make_agent(name: str, dim: int, *, seed: int = 0) -> Agent:
    try:
        cls = AGENTS[name]
    except KeyError:
        raise ValueError(f"unknown agent {name!r}; available: {', '.join(sorted(AGENTS))} "
                         "(autoprune agents lists them)") from None
    return cls(dim, seed=seed)


def agent_descriptions() -> dict[str, str]:
    """Agent name -> the first line of its docstring."""
    return {n: (c.__doc__ or "").strip().splitlines()[0] for n, c in sorted(AGENTS.items())}
