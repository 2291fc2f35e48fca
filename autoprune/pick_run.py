"""``pick``: choose from a finished run, without a new search, the best network for a budget
decided after it (typically from a Pareto run's front), and write it into the run folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from torch import nn

from autoprune.agents.sensitivity import allocation_from_probes
from autoprune.context import agent_context
from autoprune.errors import SearchError
from autoprune.evaluator import Evaluator
from autoprune.precision import value_bytes
from autoprune.problem import PruningProblem, build_problem
from autoprune.run import Run
from autoprune.run_folder import write_choice
from autoprune.run_report import space_record, split_metrics
from autoprune.session import best_record, objective_value
from autoprune.settings import slug
from autoprune.study import TrialRecord
from autoprune.targets import parse_targets

__all__ = ["pick"]


def pick(run_dir: str | Path, target: str | Sequence[str], *, cache_dir: Path | None = None,
         console: Console | None = None, device: str | None = None) -> dict[str, Any]:
    """Choose from a finished run the best trial that meets ``target`` — typically from a Pareto
    run's front, for a budget decided after the search — without a new search: prune the dense
    model to it, score it (adaptive BN, validation and test), and write ``pick-<target>.json``
    and ``pick-<target>.pt`` into the run folder (``load_pruned(run_dir, choice=...)``).
    ``device`` (cpu, cuda, cuda:N, auto; default the CPU) is where it scores."""
    console = console or Console(stderr=True)
    run = Run.open(run_dir, cache_dir=cache_dir, device=device)
    run_dir = run.folder
    targets = parse_targets(target)
    if any(t.metric == "latency_ms" for t in targets):
        raise SearchError("pick chooses by the costs the study recorded (flops=, params=, "
                          "sparsity=, size=); it reopens no latency table. For a latency "
                          "budget run a search: autoprune search --target latency=...")
    settings = run.settings
    task, model, space = run.task, run.model, run.space
    evaluator = run.evaluator()
    problem = build_problem(space, targets, storage_format=settings.space.storage_format,
                            value_bytes=value_bytes(model))
    store = run.study
    records = store.records()
    best = best_record(records, problem)
    # A study with sensitivity curves (its probes) allocates this budget from them too.
    curve = _curve_trial(records, problem, model, objective=store.get_meta("objective")
                         or task.metric, evaluator=evaluator)
    if best is None and curve is None:
        finished = [r for r in records if not r.failed]
        cheapest = ", ".join(
            f"{b.metric} {min(r.costs[b.metric] for r in finished) / problem.dense_costs[b.metric]:.1%}"
            for b in problem.budgets) if finished else "no finished trial"
        raise SearchError(f"no trial of {run_dir} meets {', '.join(t.text for t in targets)} "
                          f"(cheapest: {cheapest} of dense); pick a looser target or run a "
                          "search for this budget")
    if curve is not None and (best is None or curve.objective > best.objective):
        best = curve
    pruned = space.apply(model, best.config)
    val = evaluator(pruned)
    test = evaluator.test(pruned)
    name = f"pick-{slug('_'.join(t.text for t in targets))}"
    choice = write_choice(
        run_dir / f"{name}.json", model=model, space=space, data=settings.source.data,
        example_inputs=run.example, config=best.config,
        costs=best.costs, trial=None if best is curve else best.number,
        metrics=split_metrics(val, test),
        budgets=[asdict(b) for b in problem.budgets], weights=space.deployable(pruned),
        extra={**space_record(settings.space),
               **({"dtype": settings.source.dtype} if settings.source.dtype != "float32"
                  else {})})
    console.print(
        (f"picked trial {best.number} of {len(records)}: " if best is not curve else
         f"picked the allocation of the study's sensitivity curves for this budget (better "
         f"than its {len(records)} trials): ")
        + ", ".join(f"{b.metric} {best.costs[b.metric] / problem.dense_costs[b.metric]:.1%} of "
                    f"dense (budget {b.text})" for b in problem.budgets)
        + f"; validation {task.describe(val)}, test {task.describe(test)}"
        f"\nwrote {run_dir / (name + '.json')} and {name}.pt")
    return {"run_dir": str(run_dir), "choice": name,
            "trial": None if best is curve else best.number,
            "costs": dict(best.costs), "metrics": choice["metrics"],
            "budgets_met": problem.feasible(best.costs),
            "units": {k: int(v) for k, v in best.config.items()},
            "files": {"choice": str(run_dir / f"{name}.json"),
                      "model": str(run_dir / f"{name}.pt")}}


def _curve_trial(records: Sequence[TrialRecord], problem: PruningProblem, model: nn.Module, *,
                 objective: str, evaluator: Evaluator) -> TrialRecord | None:
    """The knapsack's allocation for ``problem``'s budget from the sensitivity probes of a
    study (``agents.sensitivity``), scored now; ``None`` when the study has none, or when the
    allocation is a configuration the study already scored."""
    probes = [(np.asarray(r.point, dtype=float)[:problem.space.dim], _told(r))
              for r in records if r.extra.get("probe") and not r.failed]
    if not probes:
        return None
    context = agent_context(problem.space, model, needs={"budget"}, problem=problem)
    x = allocation_from_probes(context, probes)
    if x is None:
        return None
    x = problem.repair(x)
    config = problem.space.decode(x)
    if any(dict(r.config) == config for r in records):
        return None  # scored in the search: best_record has seen it
    metrics = evaluator(problem.space.apply(model, config))
    return TrialRecord(number=len(records), point=tuple(x), config=config,
                       costs=problem.costs(config), metrics=metrics,
                       objective=objective_value(metrics, objective),
                       extra={"from": "sensitivity curves"})


def _told(record: TrialRecord) -> dict[str, float]:
    return {"objective": record.objective,
            **{f"metric.{k}": float(v) for k, v in record.metrics.items()}}
