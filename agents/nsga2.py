"""NSGA-II genetic algorithm (optuna's ``NSGAIISampler``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import register_agent
from .optuna_agent import OptunaAgent

if TYPE_CHECKING:
    import optuna

__all__ = ["NSGA2Agent"]


@register_agent("nsga2")
class NSGA2Agent(OptunaAgent):
    """NSGA-II genetic algorithm: elitist selection, uniform crossover, mutation (optuna)."""

    #: optuna's default is 50; searches here run ~100-200 trials, so a smaller population
    #: gives several generations of selection instead of two.
    population_size = 16
    carried_attrs = ("NSGAIISampler:generation",)
    # Baldwinian: the GA keeps its own children (and their generation numbers), scored by the
    # value of their repaired point; measured better than keeping the repaired points.
    learn_from = "asked"

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        from optuna.samplers import NSGAIISampler

        return NSGAIISampler(seed=seed, population_size=self.population_size)
