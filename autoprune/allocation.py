"""What ``allocate`` returns: the chosen per-unit counts with their costs and metrics, and the
whole search behind them (its own module, so that what reads a result, such as the run
report, need not import the pipeline that makes it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from autoprune.latency.verify import LatencyCheck
from autoprune.pareto import ParetoRange
from autoprune.precision import in_dtype
from autoprune.problem import PruningProblem
from autoprune.search_spaces import SearchSpace
from autoprune.study import TrialRecord
from autoprune.targets import Budget

__all__ = ["Allocation"]


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """The chosen per-unit channels, with their costs and metrics, and the whole search."""

    config: Mapping[str, int]
    units: Mapping[str, Mapping[str, float]]
    costs: Mapping[str, float]
    metrics: Mapping[str, float]
    dense_costs: Mapping[str, float]
    budgets: Sequence[Budget]
    trials: Sequence[TrialRecord]
    space: SearchSpace = field(repr=False)
    # With a latency budget: the chosen and the dense network, predicted and measured.
    latency: Mapping[str, Any] | None = None
    #: Where the search's time went (space building, pruning, evaluating: seconds) and the
    #: process's peak memory (``peak_rss_gb``): ``phases.SearchCosts.summary``.
    resources: Mapping[str, Any] | None = None
    #: The chosen trial, the problem searched, the latency check and the Pareto range (what a
    #: whole run reports from).
    chosen: TrialRecord | None = field(default=None, repr=False)
    problem: PruningProblem | None = field(default=None, repr=False)
    check: LatencyCheck | None = field(default=None, repr=False)
    pareto: ParetoRange | None = field(default=None, repr=False)

    #: The precision it was searched in (``allocate(dtype=...)``); ``apply`` prunes in it.
    dtype: str | None = None

    def apply(self, model: nn.Module) -> nn.Module:
        """A physically smaller copy of ``model`` with this allocation's channels (in the
        search's precision)."""
        return self.space.apply(in_dtype(model, self.dtype), self.config)
