"""Baseline agents: uniform allocation and random search."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Agent
from .registry import register_agent

__all__ = ["RandomAgent", "UniformAgent"]


@register_agent("uniform")
class UniformAgent(Agent):
    """Same preserve ratio in every unit (the search loop scales it to meet the budget)."""

    def __init__(self, dim: int, *, seed: int = 0) -> None:
        super().__init__(dim, seed=seed)
        self.proposed = False

    def ask(self, n: int) -> list[np.ndarray]:
        # One point is the whole method: the dense point, scaled uniformly down to the budget.
        if self.proposed or n < 1:
            return []
        self.proposed = True
        return [np.ones(self.dim)]

    def state_dict(self) -> dict[str, Any]:
        return {"proposed": self.proposed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.proposed = bool(state["proposed"])


@register_agent("random")
class RandomAgent(Agent):
    """Independent uniform samples of every unit's ratio (EagleEye's candidate generator)."""

    multi_objective = True  # it ignores results, so any number of objectives will do

    def __init__(self, dim: int, *, seed: int = 0) -> None:
        super().__init__(dim, seed=seed)
        self.rng = np.random.default_rng(seed)

    def ask(self, n: int) -> list[np.ndarray]:
        return [self.rng.random(self.dim) for _ in range(max(0, n))]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
