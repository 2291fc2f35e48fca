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
    # The GP's fit and its acquisition search grow with the history (542 ms a proposal after
    # 200 trials in the league, against 535 ms a trial): the best 32 and the latest 32 are
    # what it models, and the acquisition starts from 512 quasi-random points and 6 local
    # searches instead of 2048 and 10.
    max_history = 64
    preliminary_samples = 512
    local_searches = 6

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        from optuna.samplers import GPSampler

        # GPSampler fits a Matern-5/2 ARD kernel and maximises log expected improvement; it
        # uses scipy and torch internally (our code never imports torch here). Scores after
        # adaptive BN are not noise-free across near-identical allocations, so the noise term
        # stays on (deterministic_objective=False).
        sampler = GPSampler(seed=seed, n_startup_trials=self.n_startup_trials)
        # optuna keeps these two private (set in __init__, read by its acquisition search)
        if hasattr(sampler, "_n_preliminary_samples") and hasattr(sampler, "_n_local_search"):
            sampler._n_preliminary_samples = self.preliminary_samples
            sampler._n_local_search = self.local_searches
        return sampler
