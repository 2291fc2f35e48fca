"""Tree-structured Parzen estimator (optuna's ``TPESampler``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import register_agent
from .optuna_agent import OptunaAgent

if TYPE_CHECKING:
    import optuna

__all__ = ["TPEAgent"]


@register_agent("tpe")
class TPEAgent(OptunaAgent):
    """Bayesian optimization with a multivariate tree-structured Parzen estimator (optuna TPE)."""

    #: Random proposals before the density model takes over (optuna's default).
    n_startup_trials = 10

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        from optuna.samplers import TPESampler

        # multivariate: one joint Parzen density over all units instead of one per unit, so
        # correlated allocations (take from one unit, give to another) are modelled; Falkner
        # et al. (BOHB, 2018) and optuna's benchmarks find it the stronger default.
        return TPESampler(seed=seed, multivariate=True, n_startup_trials=self.n_startup_trials)
