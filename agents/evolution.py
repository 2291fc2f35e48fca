"""Aging (regularized) evolution with Once-for-All's mutation and crossover, over the unit cube.

Real et al. (AAAI 2019, "Regularized evolution for image classifier architecture search") keep
a population of the most recent evaluations: every new child pushes the oldest individual out,
however good it was, which keeps the search from clinging to a lucky early score. Children are
made the way Once-for-All's evolution finder makes them (Cai et al., ICLR 2020;
mit-han-lab/once-for-all ``EvolutionFinder``): parents are the best quarter of the population;
half of the children are a parent with every gene resampled with probability 0.1, the other
half a uniform crossover of two parents. OFA runs this in generations (100 individuals, 25
parents, 50 + 50 children); here it runs steady-state, one child per proposal, so it learns
from every evaluation at the small trial counts a pruning search affords.

Feasibility is kept by the search loop's repair, and the population holds the *repaired* points
the loop tells back (as OFA keeps only samples that meet the constraint).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .base import Agent
from .registry import register_agent

__all__ = ["EvolutionAgent", "EvolutionConfig"]


@dataclass(frozen=True, kw_only=True)
class EvolutionConfig:
    """``population``: individuals alive (the most recent evaluations); proposals are
    uniform random until that many results have been told. ``parent_fraction``: the best share of the
    population that breeds (OFA: 25 of 100). ``mutate_fraction``: share of children made by
    mutation, the rest by crossover (OFA: 50/50). ``mutation_prob``: chance that a gene is
    resampled (OFA: 0.1)."""

    population: int = 20
    parent_fraction: float = 0.25
    mutate_fraction: float = 0.5
    mutation_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.population < 2:
            raise ValueError(f"population must be at least 2, got {self.population}")
        for name in ("parent_fraction", "mutate_fraction", "mutation_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


@register_agent("evolution")
class EvolutionAgent(Agent):
    """Aging evolution with Once-for-All's mutation (p=0.1 per gene) and uniform crossover."""

    def __init__(self, dim: int, *, seed: int = 0,
                 config: EvolutionConfig | None = None) -> None:
        super().__init__(dim, seed=seed)
        self.config = config or EvolutionConfig()
        self.rng = np.random.default_rng(seed)
        self.asked = 0
        # The living population, oldest first: (point told back, objective).
        self.population: list[tuple[np.ndarray, float]] = []

    def ask(self, n: int) -> list[np.ndarray]:
        points = []
        for _ in range(max(0, n)):
            # Random until the population is full: results told from elsewhere (a chained
            # heuristic, a replayed study) fill it too, so evolution starts from them.
            warm = len(self.population) < self.config.population
            points.append(self.rng.random(self.dim) if warm else self._child())
            self.asked += 1
        return points

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:
        value = float(result.get("objective", math.nan))
        if not math.isfinite(value):
            return  # a failed candidate never breeds
        self.population.append((np.clip(np.asarray(point, dtype=float), 0.0, 1.0), value))
        if len(self.population) > self.config.population:
            self.population.pop(0)  # aging: the oldest dies, whatever its score

    def _parents(self) -> list[np.ndarray]:
        k = max(2, math.ceil(self.config.parent_fraction * len(self.population)))
        # Stable order: ties go to the younger individual, as a fresh score is the better
        # estimate of the current population.
        order = sorted(range(len(self.population)), key=lambda i: (-self.population[i][1], -i))
        return [self.population[i][0] for i in order[:k]]

    def _child(self) -> np.ndarray:
        parents = self._parents()
        if self.rng.random() < self.config.mutate_fraction:
            parent = parents[int(self.rng.integers(len(parents)))]
            child = parent.copy()
            genes = self.rng.random(self.dim) < self.config.mutation_prob
            if not genes.any():  # an unchanged copy would only repeat an evaluation
                genes[int(self.rng.integers(self.dim))] = True
            child[genes] = self.rng.random(int(genes.sum()))
            return child
        i, j = self.rng.choice(len(parents), size=2, replace=False)
        take = self.rng.random(self.dim) < 0.5
        return np.where(take, parents[i], parents[j])

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "rng": self.rng.bit_generator.state,
                "asked": self.asked,
                "population": [[[float(v) for v in x], y] for x, y in self.population]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.config = EvolutionConfig(**state["config"])
        self.rng.bit_generator.state = state["rng"]
        self.asked = int(state["asked"])
        self.population = [(np.asarray(x, dtype=float), float(y))
                           for x, y in state["population"]]
