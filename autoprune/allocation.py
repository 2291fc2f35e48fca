"""What ``allocate`` returns: the chosen per-unit counts with their costs and metrics, and the
whole search behind them (its own module, so that what reads a result, such as the run
report, need not import the pipeline that makes it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from autoprune.export import save_program

from autoprune.latency.verify import LatencyCheck
from autoprune.pareto import ParetoRange
from autoprune.placement import placed
from autoprune.problem import PruningProblem
from autoprune.run_folder import write_choice, write_json
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
    #: The dense model searched (the caller's, never modified) and its example input: what
    #: ``save`` prunes and records the shapes of.
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    example: Any = field(default=None, repr=False, compare=False)

    def apply(self, model: nn.Module) -> nn.Module:
        """A physically smaller copy of ``model`` with this allocation's channels (in the
        search's precision)."""
        return self.space.apply(placed(model, dtype=self.dtype), self.config)

    def save(self, folder: str | Path, *, console: Console | None = None) -> dict[str, Any]:
        """Write the chosen network as a run folder holds it: ``best.json`` (its widths, costs,
        metrics, budgets and how to rebuild it), ``pruned.pt`` (its weights), ``pruned.pt2``
        (a ``torch.export`` program, where the model exports) and ``summary.json``.
        ``autoprune.load_pruned(folder)`` gives the network back (``model=dense`` for a model
        of your own). Returns the summary."""
        if self.model is None:
            raise ValueError("this Allocation holds no model to prune (it was made by hand); "
                             "allocate() returns one that saves")
        folder = Path(folder)
        delivered = self.space.deployable(self.apply(self.model))
        best = self.chosen
        choice = write_choice(
            folder / "best.json", model=self.model, space=self.space, data=None,
            example_inputs=self.example, config=self.config, costs=self.costs,
            trial=best.number if best else None, metrics=dict(self.metrics),
            budgets=[asdict(b) for b in self.budgets], weights=delivered,
            weights_file="pruned.pt", extra={"dtype": self.dtype} if self.dtype else None)
        program = save_program(delivered, self.example, folder / "pruned.pt2",
                               console or Console(stderr=True))
        summary = {
            "best": {"costs": dict(self.costs), "metrics": dict(self.metrics),
                     "units": {k: int(v) for k, v in self.config.items()},
                     "ratios": {k: round(u["ratio"], 4) for k, u in self.units.items()},
                     "trial": choice["trial"]},
            "dense": {"costs": dict(self.dense_costs)},
            "target": {b.text: {"metric": b.metric, "limit": b.limit} for b in self.budgets},
            "budgets_met": all(self.costs[b.metric] <= b.limit for b in self.budgets)
            and (self.check is None or self.check.met),
            "trials": len(self.trials), "failed_trials": sum(r.failed for r in self.trials),
            **({"latency": dict(self.latency)} if self.latency else {}),
            "resources": dict(self.resources or {}),
            "files": {"choice": str(folder / "best.json"), "model": str(folder / "pruned.pt"),
                      "program": program}}
        write_json(folder / "summary.json", summary)
        return summary
