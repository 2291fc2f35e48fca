"""Gaussian-process Bayesian optimization (optuna's ``GPSampler``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import register_agent
from .optuna_agent import OptunaAgent

if TYPE_CHECKING:
    import optuna

__all__ = ["GPAgent"]


@register_agent("gp")
class GPAgent(OptunaAgent):
    """Bayesian optimization with a Gaussian process and expected improvement (optuna GP)."""

    n_startup_trials = 10

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        from optuna.samplers import GPSampler

        # GPSampler fits a Matern-5/2 ARD kernel and maximises log expected improvement; it
        # uses scipy and torch internally (our code never imports torch here). Scores after
        # adaptive BN are not noise-free across near-identical allocations, so the noise term
        # stays on (deterministic_objective=False).
        return GPSampler(seed=seed, n_startup_trials=self.n_startup_trials)
