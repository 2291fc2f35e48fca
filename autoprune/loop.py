"""The search loop: ask, repair to the budget, prune and evaluate, tell, record.

    agent.ask -> problem.repair -> space.decode -> executor(prune + evaluate) -> agent.tell
                                                                              -> study (one trial)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from autoprune.agents import Agent
from autoprune.context import agent_context
from autoprune.executors import Executor, LocalExecutor
from autoprune.pareto import ParetoRange
from autoprune.problem import PruningProblem
from autoprune.study import StudyStore, TrialRecord

__all__ = ["PruneAndEvaluate", "best_record", "evaluate_point", "objective_value", "run_search"]

Evaluate = Callable[[nn.Module], Mapping[str, float]]


class PruneAndEvaluate:
    """One trial's work: prune a copy of the dense model to ``config`` and score it."""

    def __init__(self, problem: PruningProblem, model: nn.Module, evaluate: Evaluate) -> None:
        self.space = problem.space
        self.model = model
        self.evaluate = evaluate

    def __call__(self, config: Mapping[str, int]) -> dict[str, float]:
        pruned = self.space.apply(self.model, config)
        metrics = self.evaluate(pruned)
        if not isinstance(metrics, Mapping):
            raise TypeError(f"the evaluator returned {type(metrics).__name__}; it must return a "
                            "dict such as {'accuracy': 0.93} or {'loss': 0.2}")
        return {str(k): float(v) for k, v in metrics.items()}


def objective_value(metrics: Mapping[str, float], objective: str) -> float:
    """The number to maximise: accuracy as is, a loss negated. NaN when missing."""
    value = metrics.get(objective, float("nan"))
    value = float(value) if value is not None else float("nan")
    return -value if objective == "loss" else value


def best_record(records: list[TrialRecord], problem: PruningProblem) -> TrialRecord | None:
    """The feasible, finished trial with the highest objective."""
    ok = [r for r in records if not r.failed and math.isfinite(r.objective)
          and problem.feasible(r.costs)]
    return max(ok, key=lambda r: (r.objective, -r.number)) if ok else None


def _config_key(config: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((k, int(v)) for k, v in config.items()))


def run_search(problem: PruningProblem, *, model: nn.Module, evaluate: Evaluate, agent: Agent,
               trials: int, store: StudyStore, executor: Executor | None = None,
               objective: str = "accuracy", batch: int = 1, progress: bool = True,
               console: Console | None = None, pareto: ParetoRange | None = None,
               max_repeats: int = 200) -> list[TrialRecord]:
    """Run until the study holds ``trials`` trials (or the agent has nothing more to propose).

    Trials already in ``store`` count: a killed search resumes from its study, with the agent's
    saved state, and repeats no finished trial. Identical configurations are scored once: a
    configuration proposed again is told its known result and does not count as a trial; after
    ``max_repeats`` such proposals in a row the agent has converged and the search stops.
    With ``pareto`` the agent's points have one more coordinate, the budget level of that
    candidate, and it is told two objectives (see ``autoprune.pareto``).
    """
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    executor = executor or LocalExecutor()
    space = problem.space
    work = PruneAndEvaluate(problem, model, evaluate)
    if agent.context_needs:  # heuristics allocate from facts about the units, set before resume
        agent.set_context(agent_context(space, model, needs=agent.context_needs,
                                        problem=problem))
    records = store.records()
    state = store.get_meta("agent_state")
    if state is not None:
        agent.load_state_dict(state)
    else:  # no saved state: let the agent learn from what the study holds
        for r in records:
            agent.tell(np.asarray(r.point), _result(r, pareto))
    seen = {_config_key(r.config): r for r in records if not r.failed}
    lows = space.ratio_lower_bounds()
    console = console or Console(stderr=True)
    bar = Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[best]}"), TimeElapsedColumn(), console=console,
                   disable=not progress, transient=False)
    best = best_record(records, problem)
    with bar if progress else nullcontext():
        task = bar.add_task("search", total=trials, completed=min(len(records), trials),
                            best=_best_text(best, objective))
        repeats = 0  # proposals in a row that were all configurations scored before
        while len(records) < trials:
            if repeats >= max_repeats:
                console.print(f"[yellow]the last {repeats} proposals were all configurations "
                              "already evaluated (the agent has converged, or the budget leaves "
                              f"no other candidates): stopping after {len(records)} trials[/]")
                break
            points = agent.ask(min(batch, trials - len(records)))
            if not points:
                break
            repaired = [_repair(problem, p, pareto) for p in points]
            configs = [space.decode(x[:space.dim]) for x in repaired]
            fresh = [i for i, c in enumerate(configs) if _config_key(c) not in seen]
            outcomes: dict[int, dict[str, float] | BaseException] = {}
            for j, out in executor.run(work, [configs[i] for i in fresh]):
                outcomes[fresh[j]] = out
            for i, (x, config) in enumerate(zip(repaired, configs)):
                key = _config_key(config)
                if i not in outcomes:
                    # A configuration scored before: the agent is told its known result (with
                    # the point it proposed), nothing is pruned again, and it costs no trial --
                    # a model-based agent that keeps proposing near its best in a small
                    # discrete space would otherwise spend its budget on repeats.
                    prev = seen[key]
                    agent.tell(x, _result(replace(prev, point=tuple(x)), pareto))
                    store.set_meta("agent_state", agent.state_dict())
                    repeats += 1
                    continue
                repeats = 0
                rec = _make_record(len(records), x, config, problem.costs(config), outcomes[i],
                                   objective)
                agent.tell(x, _result(rec, pareto))
                store.add(rec, params=space.ratios(config), lows=lows)
                store.set_meta("agent_state", agent.state_dict())
                records.append(rec)
                if not rec.failed:
                    seen.setdefault(key, rec)
                best = best_record(records, problem)
                bar.update(task, completed=min(len(records), trials),
                           best=_best_text(best, objective))
    return records


def evaluate_point(problem: PruningProblem, x: np.ndarray, *, work: PruneAndEvaluate,
                   store: StudyStore, records: list[TrialRecord], objective: str,
                   extra: Mapping[str, object] | None = None) -> TrialRecord:
    """Prune and score one point outside the agent's loop (a final latency repair), append it
    to ``records`` and the study, and return its record. The point is used as given."""
    config = problem.space.decode(x)
    try:
        outcome: Mapping[str, float] | BaseException = work(config)
    except Exception as err:  # noqa: BLE001 - recorded as a failed trial with its reason
        outcome = err
    rec = _make_record(len(records), x, config, problem.costs(config), outcome, objective)
    if extra:
        rec = replace(rec, extra=dict(extra))
    store.add(rec, params=problem.space.ratios(config), lows=problem.space.ratio_lower_bounds())
    records.append(rec)
    return rec


def _make_record(number: int, x: np.ndarray, config: Mapping[str, int],
                 costs: Mapping[str, float], outcome: Mapping[str, float] | BaseException,
                 objective: str) -> TrialRecord:
    if isinstance(outcome, BaseException):
        return TrialRecord(number=number, point=tuple(x), config=config, costs=costs, metrics={},
                           objective=float("nan"), failed=True,
                           reason=f"{type(outcome).__name__}: {outcome}")
    value = objective_value(outcome, objective)
    if not math.isfinite(value):
        return TrialRecord(number=number, point=tuple(x), config=config, costs=costs,
                           metrics=outcome, objective=float("nan"), failed=True,
                           reason=f"the evaluator returned no finite {objective!r} "
                                  f"(got {dict(outcome)})")
    return TrialRecord(number=number, point=tuple(x), config=config, costs=costs,
                       metrics=outcome, objective=value)


def _repair(problem: PruningProblem, point: np.ndarray, pareto: ParetoRange | None
            ) -> np.ndarray:
    if pareto is None:
        return problem.repair(point)
    level = float(np.clip(point[-1], 0.0, 1.0))
    x = problem.repair(point[:-1], budgets=pareto.budgets(problem.budgets, level))
    return np.append(x, level)


def _result(rec: TrialRecord, pareto: ParetoRange | None = None) -> dict[str, float]:
    out = {"objective": rec.objective, **{f"cost.{k}": v for k, v in rec.costs.items()},
           **{f"metric.{k}": v for k, v in rec.metrics.items()}}
    if pareto is not None:
        out["objective.1"] = pareto.cost_objective(rec.costs)
    return out


def _best_text(best: TrialRecord | None, objective: str) -> str:
    if best is None:
        return "best: -"
    return f"best {objective}: {abs(best.objective):.4f}"
