"""``pick``: choose from a finished run, without a new search, the best network for a budget
decided after it (typically from a Pareto run's front), and write it into the run folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from torch import nn

from autoprune.agents.sensitivity import allocation_from_probes
from autoprune.context import agent_context
from autoprune.errors import SearchError
from autoprune.evaluator import Evaluator
from autoprune.latency.build import profiled_space
from autoprune.latency.cache import remote_table
from autoprune.latency.device import describe_device
from autoprune.latency.table import LatencyTable
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
         console: Console | None = None, device: str | None = None,
         lut: str | Path | None = None) -> dict[str, Any]:
    """Choose from a finished run the best trial that meets ``target`` — typically from a Pareto
    run's front, for a budget decided after the search — without a new search: prune the dense
    model to it, score it (adaptive BN, validation and test), and write ``pick-<target>.json``
    and ``pick-<target>.pt`` into the run folder (``load_pruned(run_dir, choice=...)``).
    ``device`` (cpu, cuda, cuda:N, auto; default the CPU) is where it scores. ``lut``: a
    latency table measured on another device (``autoprune profile --from-timings``), which
    costs a ``latency=`` budget for that device (the pick is predicted there, not measured
    here)."""
    console = console or Console(stderr=True)
    targets = parse_targets(target)
    if any(t.metric == "latency_ms" for t in targets) and lut is None:
        raise SearchError("pick chooses by the costs the study recorded (flops=, params=, "
                          "sparsity=, size=); a latency budget needs the device's table "
                          "(lut=, from autoprune profile --from-timings). For this machine's "
                          "latency run a search: autoprune search --target latency=...")
    run = Run.open(run_dir, cache_dir=cache_dir, device=device)
    run_dir = run.folder
    settings = run.settings
    task, model, space = run.task, run.model, run.space
    evaluator = run.evaluator()
    table, table_info = _device_table(lut, run, console) if lut is not None else (None, None)
    problem = build_problem(space, targets, table=table,
                            storage_format=settings.space.storage_format,
                            value_bytes=value_bytes(model))
    store = run.study
    records = store.records()
    if table is not None:  # every trial costed for the device too
        records = [r if r.failed else replace(r, costs={**r.costs, **problem.costs(r.config)})
                   for r in records]
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
    if table_info is not None:
        console.print(f"latency {best.costs['latency_ms']:.3g} ms {table_info['note']}",
                      highlight=False)
    return {"run_dir": str(run_dir), "choice": name,
            **({"latency": {"predicted_ms": best.costs["latency_ms"], "measured_here": False,
                            "device": table_info["device"], "note": table_info["note"]}}
               if table_info is not None else {}),
            "trial": None if best is curve else best.number,
            "costs": dict(best.costs), "metrics": choice["metrics"],
            "budgets_met": problem.feasible(best.costs),
            "units": {k: int(v) for k, v in best.config.items()},
            "files": {"choice": str(run_dir / f"{name}.json"),
                      "model": str(run_dir / f"{name}.pt")}}


def _device_table(lut: str | Path, run: Run, console: Console
                  ) -> tuple[LatencyTable, dict[str, Any]]:
    """The table a pick costs a latency budget with: one measured on another device, for this
    run's model and input shape (a table of this machine is refused: a pick here would have
    to be measured, which a search does)."""
    path = Path(lut)
    table = LatencyTable.load(path)
    if not table.remote:
        raise SearchError(f"pick --lut takes a table measured on another device (autoprune "
                          f"profile --from-timings); {path} was built on "
                          f"{describe_device(table.device)}, whose latencies must be measured "
                          "here. Fix: for this machine, search with --target latency=... "
                          f"--lut {path}")
    shape = list(run.example.shape[1:])
    batch = table.device.get("batch")
    return remote_table(table, path, {"batch": batch, "input_shape": [batch, *shape]},
                        profiled_space(run.space), console)


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
