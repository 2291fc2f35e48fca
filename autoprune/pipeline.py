"""The one search pipeline, from a problem to an ``Allocation``: what ``allocate`` (any model,
the Python API) and ``search`` (a whole run, the CLI) share once each has built its space,
problem and study store. It settles the objective, runs the trials on an executor, measures
a latency budget's choice, and returns the chosen network with the whole search behind it."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console
from torch import nn

from autoprune.agents import Agent, AgentOptionError, make_agent
from autoprune.allocation import Allocation
from autoprune.errors import SearchError
from autoprune.evaluator import Evaluator
from autoprune.executors import Executor, make_executor
from autoprune.latency.device import Device
from autoprune.latency.table import LatencyTable
from autoprune.latency.verify import LatencyCheck, check_summary, verify_latency
from autoprune.pareto import ParetoRange
from autoprune.phases import SearchCosts, space_progress
from autoprune.problem import PruningProblem
from autoprune.run_folder import unit_table
from autoprune.search_spaces import SearchSpace, release, watch
from autoprune.session import PruneAndEvaluate, best_record, evaluate_point, run_search
from autoprune.study import StudyStore, TrialRecord
from autoprune.targets import Budget

__all__ = ["check_agent", "describe_problem", "pareto_range", "search_problem"]


def check_agent(name: str, dim: int = 1, *, seed: int = 0, pareto: bool = False,
                reward: str = "acc") -> Agent:
    """``make_agent`` with the search's options; a bad name or option is a ``SearchError``
    (built with ``dim=1`` to check them before any work)."""
    try:
        return make_agent(name, dim, seed=seed, objectives=2 if pareto else 1,
                          options={"reward": reward})
    except AgentOptionError as err:
        raise SearchError(str(err)) from None


def search_problem(problem: PruningProblem, *, model: nn.Module, example: Any,
                   evaluator: Evaluator, store: StudyStore, agent: str, trials: int,
                   seed: int = 0, metric: str | None = None, pareto: bool = False,
                   reward: str = "acc", executor: str | Executor = "local",
                   progress: bool = False, console: Console | None = None,
                   costs: SearchCosts | None = None, table: LatencyTable | None = None
                   ) -> Allocation:
    """Search ``problem`` (its study in ``store``: a resumed one goes on) and return the
    chosen network. ``metric``, the entry of the evaluator's dict optimised (``accuracy`` or
    ``loss``), None: the study's, or what ``evaluator`` returns (accuracy when it has one,
    else loss), checked before the first trial. ``table``: the latency table
    that costs a latency budget; the chosen network is then measured here."""
    costs = costs or SearchCosts()
    objective = metric or store.get_meta("objective") or _objective_of(
        first_metrics(problem.space, model, evaluator, costs))
    store.set_meta("objective", objective)
    ranges = pareto_range(problem) if pareto else None
    runner = make_executor(executor) if isinstance(executor, str) else executor
    try:
        with space_progress(console or Console(stderr=True), progress):
            records = run_search(problem, model=model, evaluate=evaluator,
                                 agent=check_agent(agent, problem.space.dim + (1 if ranges else 0),
                                                   seed=seed, pareto=pareto, reward=reward),
                                 trials=trials, store=store, executor=runner,
                                 objective=objective, progress=progress, console=console,
                                 pareto=ranges, costs=costs)
    finally:
        if isinstance(executor, str):  # ours to release; a caller's executor stays theirs
            runner.close()
    check = None
    # never report a latency that was not measured; a table measured on another device is
    # not timed here (run_report says the latency is predicted for that device)
    if table is not None and not table.remote:
        work = PruneAndEvaluate(problem, model, evaluator)
        check = verify_latency(
            problem, records, model=model, example=example,
            device=Device.of(table.device), console=console,
            record=lambda x: evaluate_point(problem, x, work=work, store=store, records=records,
                                            objective=objective,
                                            extra={"latency_repair": True}))
    return _allocation(problem, records, check=check, pareto=ranges, costs=costs, model=model,
                       example=example,
                       device_table=table if table is not None and table.remote else None)


def _objective_of(metrics: Mapping[str, float]) -> str:
    return "accuracy" if "accuracy" in metrics else "loss"


def first_metrics(space: SearchSpace, model: nn.Module, evaluator: Evaluator,
                  costs: SearchCosts | None = None) -> Mapping[str, float]:
    """What the evaluator returns (which metric the search optimises), checked before the
    first trial: a dict with a finite ``accuracy`` or ``loss`` (``checked_metrics`` refuses
    other returns). Asked of the thinnest network first (a copy of the dense model would
    double the memory of a large one); the dense model's copy answers when the thinnest does
    not run or scores NaN, and an evaluator that fails there is refused. ``costs`` counts
    the evaluations as evaluating and the rest as setting up."""
    started, evaluating = time.perf_counter(), [0.0]

    def timed(network: nn.Module) -> Mapping[str, float]:
        t = time.perf_counter()
        try:
            return evaluator(network)
        finally:
            evaluating[0] += time.perf_counter() - t

    try:
        return _first_metrics(space, model, timed)
    finally:
        if costs is not None:
            costs.evaluate_s += evaluating[0]
            costs.setup_s += time.perf_counter() - started - evaluating[0]


def _first_metrics(space: SearchSpace, model: nn.Module,
                   evaluator: Callable[[nn.Module], Mapping[str, float]]) -> Mapping[str, float]:
    try:
        thin = space.apply(model, space.min_config())
    except Exception:  # noqa: BLE001 - the trial will name it
        thin = None
    if thin is not None:
        try:
            metrics = evaluator(thin)
            if _finite(metrics):
                return metrics
        except SearchError:
            raise  # what the evaluator returned is not metrics: no network will do better
        except Exception:  # noqa: BLE001 - an evaluator failing on this network only
            pass
        finally:
            gone = watch(thin)
            del thin
            release(gone)  # its memory back to the system before the trials build theirs
    try:
        metrics = evaluator(copy.deepcopy(model))
    except SearchError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's function: one error, before work
        raise SearchError(f"evaluate failed on the dense model ({type(err).__name__}: {err}); "
                          "fix it so it scores any network of this model") from None
    if not _finite(metrics):
        raise SearchError(f"evaluate returned {dict(metrics)} for the dense model: the search "
                          "needs a finite 'accuracy' or 'loss' there. Fix the evaluator (a NaN "
                          "loss: check its data and reduction)")
    return metrics


def _finite(metrics: Mapping[str, float]) -> bool:
    key = _objective_of(metrics)
    return key in metrics and math.isfinite(float(metrics[key]))


def _allocation(problem: PruningProblem, records: list[TrialRecord], *,
                check: LatencyCheck | None = None, pareto: ParetoRange | None = None,
                costs: SearchCosts | None = None, model: nn.Module | None = None,
                example: Any = None, device_table: LatencyTable | None = None) -> Allocation:
    best = check.chosen if check else best_record(records, problem)
    if best is None:
        reasons = sorted({r.reason for r in records if r.failed})[:3]
        broke = [r for r in records if r.failed and r.reason.startswith("PruningBrokeModel")]
        if broke and len(broke) == sum(r.failed for r in records):
            units = sorted({u for r in broke for u in r.extra.get("broken_units", ())})
            raise SearchError(
                f"no trial finished: pruning breaks this model ({len(broke)} of {len(records)} "
                f"pruned networks fail in forward{'; units: ' + ', '.join(units) if units else ''}"
                f"). First failure: {broke[0].reason.split(': ', 1)[-1]}. Fix: leave those "
                "layers out (ignored_layers), or tell us the model: the space should have kept "
                "them dense.")
        raise SearchError(f"no trial finished with a usable score ({len(records)} trials); "
                          f"failures: {reasons or 'none'}. Fix the evaluator so it returns a "
                          "finite accuracy or loss.")
    return Allocation(config=dict(best.config), units=unit_table(problem.space, best.config),
                      costs=dict(best.costs), metrics=dict(best.metrics),
                      dense_costs=dict(problem.dense_costs), budgets=list(problem.budgets),
                      trials=list(records), space=problem.space,
                      latency=check_summary(check) if check else
                      _predicted_for(device_table, best.costs) if device_table else None,
                      chosen=best,
                      problem=problem, check=check, pareto=pareto,
                      resources=costs.summary() if costs is not None else None,
                      model=model, example=example)


def _predicted_for(table: LatencyTable, costs: Mapping[str, float]) -> dict[str, Any]:
    """``Allocation.latency`` with a table timed on another device: predicted there, not
    measured here."""
    return {"met": None, "measured_here": False, "predicted_ms": costs["latency_ms"],
            "device": dict(table.device), "note": table.remote_note()}


def pareto_range(problem: PruningProblem) -> ParetoRange:
    if not problem.budgets:
        raise SearchError("--objective pareto needs a --target: the front runs from the "
                          "thinnest network up to the first budget")
    b = problem.budgets[0]
    return ParetoRange(metric=b.metric, low=problem.min_costs[b.metric], high=b.limit,
                       dense=problem.dense_costs[b.metric])


def describe_problem(problem: PruningProblem, console: Console) -> None:
    """The space, the dense costs and the budgets, with a note on each budget close to the
    thinnest network and on what the space kept dense."""
    dense = problem.dense_costs
    console.print(f"{problem.space.dim} units, dense {dense['macs'] / 1e6:.1f}M MACs, "
                  f"{dense['params'] / 1e6:.3f}M params"
                  + (f", predicted latency {dense['latency_ms']:.2f} ms"
                     if "latency_ms" in dense else "")
                  + "; budgets: " + ", ".join(_budget_text(b) for b in problem.budgets))
    for b in problem.budgets:
        if (tight := tightness(problem, b)) is not None:
            console.print(f"[yellow]note:[/] {tight}", highlight=False)
    for note in getattr(problem.space, "notes", ()):
        console.print(f"[yellow]note:[/] {note}", highlight=False)


# A budget leaving less than this share of the range between the thinnest network the space
# allows and the dense one gets a note: nearly every unit must sit at its lower bound.
_TIGHT_SHARE = 0.1


def tightness(problem: PruningProblem, b: Budget) -> str | None:
    """A warning when ``b`` is close to the thinnest network, else None."""
    low, dense = problem.min_costs[b.metric], problem.dense_costs[b.metric]
    if dense <= low or (b.search_limit - low) / (dense - low) >= _TIGHT_SHARE:
        return None
    unit = " ms" if b.metric == "latency_ms" else f" {b.metric}"
    fmt = (lambda v: f"{v:.2f}") if b.metric == "latency_ms" else (lambda v: f"{v:,.0f}")
    return (f"{b.text} is close to the thinnest network this space allows ({fmt(low)}{unit}; "
            f"dense {fmt(dense)}{unit}), so nearly every unit sits at its lower bound and "
            "accuracy after adaptive BN alone can fall to chance. Fine-tune the result "
            "(--finetune-steps), or allow a looser budget.")


def _budget_text(b: Budget) -> str:
    if b.metric != "latency_ms":
        return f"{b.text} (<= {b.limit:,.0f} {b.metric})"
    return (f"{b.text} (candidates <= {b.search_limit:.2f} ms predicted, a {100 * b.margin:.0f}% "
            f"margin for the table's error; the chosen one is measured)")
