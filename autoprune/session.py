"""The search loop: ask, repair to the budget, prune and evaluate, tell, record.

    agent.ask -> problem.repair -> space.decode -> executor(prune + evaluate) -> agent.tell
                                                                              -> study (one trial)

``SearchSession`` holds the loop's state; an executor drives it (``Executor.execute``): the
local executor proposes, runs and completes one batch after another, Ray keeps several
candidates in flight and completes them as they finish.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from autoprune.agents import Agent, is_probe
from autoprune.context import agent_context
from autoprune.evaluator import Evaluator, as_evaluator
from autoprune.executors.base import Executor, LocalExecutor
from autoprune.pareto import ParetoRange
from autoprune.phases import SearchCosts
from autoprune.placement import model_device, on_cpu, placed, resolve_device
from autoprune.problem import PruningProblem
from autoprune.study import StudyStore, TrialRecord
from autoprune.search_spaces import PruningBrokeModel, release, watch

__all__ = ["Proposal", "PruneAndEvaluate", "SearchSession", "TrialFailure", "best_record",
           "evaluate_point", "objective_value", "run_search"]

#: An evaluator, or any callable with its signature (wrapped by ``as_evaluator``).
Evaluate = Evaluator | Callable[[nn.Module], Mapping[str, float]]


class TrialFailure(Exception):
    """A trial that failed elsewhere (on a Ray worker); its text is the whole reason recorded."""


class PruneAndEvaluate:
    """One trial's work: prune a copy of the dense model to ``config`` and score it."""

    def __init__(self, problem: PruningProblem, model: nn.Module, evaluate: Evaluate,
                 costs: SearchCosts | None = None) -> None:
        self.space = problem.space
        self.model = model
        self.evaluate = as_evaluator(evaluate)
        self.costs = costs  # where this process's trials spend their time

    def __getstate__(self) -> dict[str, Any]:
        """Shipped to a worker (Ray): a dense model on a GPU travels as a CPU copy, and the
        worker places it on its own GPU (Ray gives a trial's actor its share of one) or, with
        none, on its CPU."""
        state = dict(self.__dict__)
        if model_device(self.model).type != "cpu":
            state.update(model=on_cpu(self.model), place="auto")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        place = state.pop("place", None)
        self.__dict__.update(state)
        if place is not None:
            self.model = placed(self.model, device=resolve_device(place))

    def __call__(self, config: Mapping[str, int]) -> dict[str, float]:
        start = time.perf_counter()
        pruned = self.space.apply(self.model, config)
        pruned_at = time.perf_counter()
        try:
            metrics = self.evaluate(pruned)
        except Exception as err:
            broken = self.space.broken_units(self.model, config)
            if broken is not None:  # the pruned network itself fails, not the evaluator
                raise PruningBrokeModel(broken, err) from err
            raise
        finally:
            if self.costs is not None:
                self.costs.prune_s += pruned_at - start
                self.costs.evaluate_s += time.perf_counter() - pruned_at
                self.costs.trials += 1
            gone = watch(pruned)
            del pruned
            release(gone)  # the trial's network, back to the system before the next is built
        if not isinstance(metrics, Mapping):
            raise TypeError(f"the evaluator returned {type(metrics).__name__}; it must return a "
                            "dict such as {'accuracy': 0.93} or {'loss': 0.2}")
        return {str(k): float(v) for k, v in metrics.items()}


def objective_value(metrics: Mapping[str, float], objective: str, *,
                    minimize: bool | None = None) -> float:
    """The number to maximise: accuracy as is, a loss (or any metric to ``minimize``)
    negated. NaN when missing."""
    value = metrics.get(objective, float("nan"))
    value = float(value) if value is not None else float("nan")
    return -value if (objective == "loss" if minimize is None else minimize) else value


def best_record(records: list[TrialRecord], problem: PruningProblem) -> TrialRecord | None:
    """The feasible, finished trial with the highest objective; among equal objectives (an
    accuracy on a few hundred images ties often) the lowest ``loss`` the evaluator reported,
    then the earliest."""
    ok = [r for r in records if not r.failed and math.isfinite(r.objective)
          and problem.feasible(r.costs)]
    return max(ok, key=lambda r: (r.objective, -_loss(r), -r.number)) if ok else None


def _loss(record: TrialRecord) -> float:
    loss = record.metrics.get("loss")
    return float(loss) if loss is not None and math.isfinite(float(loss)) else 0.0


def _config_key(config: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((k, int(v)) for k, v in config.items()))


@dataclass(eq=False)
class Proposal:
    """One candidate handed to an executor: the repaired point and its configuration.
    ``id`` numbers proposals in the order the agent asked for them."""

    id: int
    point: np.ndarray
    config: dict[str, int]
    #: The trial it became, or (a repeat of a configuration scored before) the trial whose
    #: result it is told; ``None`` while it runs.
    record: TrialRecord | None = None
    repeat: bool = False
    #: Evaluated as asked, outside the budget (``agents.Probe``).
    probe: bool = False
    # Proposals with the same configuration, asked while this one was running: told its
    # result instead of being pruned and scored again.
    twins: list[Proposal] = field(default_factory=list)


class SearchSession:
    """The loop's state, driven by an executor: ``propose`` candidates, ``complete`` them.

    Several candidates may be in flight (``--executor ray --workers N``) and complete in any
    order. Each finished trial is written to the study the moment it completes (numbered in
    completion order, one optuna trial each, so a kill loses nothing that finished), but the
    agent is told results *in the order it asked for them*: the agents' ask/tell contract pairs
    each tell with the oldest outstanding ask (optuna and CMA-ES agents keep a FIFO of asked
    points). The saved state (``search_state``: the agent's state, how many trials it had
    seen recorded, which of those it was not told yet) is one study attribute written after
    every change, so a resumed search tells the agent exactly what it missed. Large parts of
    an agent's state that change rarely (its ``blobs``: an RL agent's networks) are stored
    apart and rewritten only when they change (``StudyStore.put_blob``).

    A proposal repeating a configuration scored before is told that result and costs no trial
    (nothing is pruned again); one repeating a *running* configuration waits for its result
    (and runs after all if that one fails). After ``max_repeats`` repeats in a row the agent
    has converged (or the budget leaves no other candidates): ``converged`` is set and the
    search ends.
    """

    def __init__(self, problem: PruningProblem, *, agent: Agent, store: StudyStore,
                 trials: int | None, objective: str = "accuracy", minimize: bool | None = None,
                 pareto: ParetoRange | None = None, max_repeats: int = 50,
                 on_record: Callable[[TrialRecord], None] | None = None) -> None:
        if trials is not None and trials < 1:
            raise ValueError(f"trials must be at least 1, got {trials}")
        self.problem = problem
        self.space = problem.space
        self.agent = agent
        self.store = store
        self.trials = trials
        self.objective = objective
        self.minimize = (objective == "loss") if minimize is None else minimize
        self.pareto = pareto
        self.max_repeats = max_repeats
        self.on_record = on_record
        self._lows = self.space.ratio_lower_bounds()
        self._running: dict[tuple[tuple[str, int], ...], Proposal] = {}
        self._queue: list[Proposal] = []  # asked, not yet told, in ask order
        self._again: list[Proposal] = []  # twins of a trial that failed, to be run
        self._next_id = 0
        self.agent_done = False
        self.repeats = 0  # proposals in a row that repeated a scored configuration
        self._waiting = False  # the agent proposed a running configuration: wait for a result
        self.records = store.records()
        self._restore()
        self._seen = {_config_key(r.config): r for r in self.records if not r.failed}

    # ------------------------------------------------------------------ resume
    def _restore(self) -> None:
        saved = self.store.get_meta("search_state")
        untold: list[TrialRecord] = []
        if saved is not None:
            state = saved["agent"]
            if "blobs" in state:  # kept apart (StudyStore.put_blob)
                state = {**state, "blobs": {name: self.store.get_blob(name, ref)
                                            for name, ref in state["blobs"].items()}}
            self.agent.load_state_dict(state)
            missed = set(saved.get("untold", ()))
            untold = [r for r in self.records
                      if r.number in missed or r.number >= int(saved.get("recorded", 0))]
        elif (state := self.store.get_meta("agent_state")) is not None:  # before async loops
            self.agent.load_state_dict(state)
        else:  # no saved state: let the agent learn from what the study holds
            untold = list(self.records)
        for r in untold:  # recorded before a kill, never told: the agent learns them now
            self.agent.tell(np.asarray(r.point), _result(r, self.pareto))
        if untold or saved is None:
            self._save()

    def _save(self) -> None:
        untold = [p.record.number for p in self._queue if p.record is not None and not p.repeat]
        state = self.agent.state_dict()
        if "blobs" in state:  # large and rarely changing: stored apart, only when changed
            state = {**state, "blobs": {name: self.store.put_blob(name, text)
                                        for name, text in state["blobs"].items()}}
        self.store.set_meta("search_state", {"agent": state, "recorded": len(self.records),
                                             "untold": untold})

    # ------------------------------------------------------------------ state
    @property
    def in_flight(self) -> int:
        """Candidates running, or about to run again (their twin failed): future trials."""
        return len(self._running) + len(self._again)

    @property
    def converged(self) -> bool:
        return self.repeats >= self.max_repeats

    @property
    def room(self) -> int:
        """How many more trials may be started."""
        if self.trials is None:
            return 1 << 30
        return max(0, self.trials - len(self.records) - self.in_flight)

    @property
    def finished(self) -> bool:
        """Nothing in flight and nothing more to propose."""
        return self.in_flight == 0 and (self.agent_done or self.converged or self.room == 0)

    # ------------------------------------------------------------------ propose / complete
    def propose(self, n: int) -> list[Proposal]:
        """Up to ``n`` new candidates to prune and score (fewer, or none, when the agent has
        no more now, or the study is full). A candidate identical to a finished trial is
        recorded at once with its result; one identical to a running candidate waits for it
        (and runs after all if that one fails)."""
        out: list[Proposal] = []
        while self._again and len(out) < n:  # twins of a failed trial: scored after all
            prop = self._again.pop(0)
            key = _config_key(prop.config)
            if key in self._running:
                self._running[key].twins.append(prop)
            else:
                self._running[key] = prop
                out.append(prop)
        while len(out) < n and self.room > 0 and not self.converged and not self._waiting:
            points = self.agent.ask(min(n - len(out), self.room))
            if not points:
                # An agent waiting for results (a bisection) proposes nothing while its point
                # runs; it is done only if nothing is in flight either.
                self.agent_done = self.in_flight == 0
                break
            wait = False
            for p in points:
                # A probe is scored as it is (a unit's sensitivity, outside the budget).
                probing = is_probe(p)
                x = np.clip(np.asarray(p, dtype=float), 0.0, 1.0) if probing \
                    else _repair(self.problem, p, self.pareto)
                prop = Proposal(id=self._next_id, point=x,
                                config=self.space.decode(x[:self.space.dim]), probe=probing)
                self._next_id += 1
                self._queue.append(prop)
                key = _config_key(prop.config)
                if key in self._seen:  # scored before: told its result, costs no trial
                    prop.record, prop.repeat = self._seen[key], True
                    self.repeats += 1
                elif key in self._running:  # running now: told its result when it ends
                    self._running[key].twins.append(prop)
                    self.repeats += 1
                    wait = True
                else:
                    self._running[key] = prop
                    self.repeats = 0
                    out.append(prop)
            # Repeats are told before the agent is asked again: otherwise it asks with the
            # same knowledge and proposes the same known configuration, up to max_repeats.
            self._tell_ready()
            if wait:
                # It proposed a configuration that is running: it cannot learn anything new
                # before a result arrives, so it is not asked again until one does (Tune
                # polls a searcher many times a second while trials run).
                self._waiting = True
                break
        self._tell_ready()
        return out

    def complete(self, prop: Proposal, outcome: Mapping[str, float] | BaseException) -> None:
        """Record a candidate's metrics (or the exception it raised), and its twins'."""
        self._running.pop(_config_key(prop.config), None)
        self._waiting = False  # news for the agent: it may be asked again
        rec = self._finish(prop, outcome)
        if rec.failed:  # as in a sequential search, a failed configuration may be tried again
            self._again.extend(prop.twins)
        else:
            for twin in prop.twins:
                twin.record, twin.repeat = rec, True
        self._tell_ready()

    def _finish(self, prop: Proposal,
                outcome: Mapping[str, float] | BaseException) -> TrialRecord:
        rec = _make_record(len(self.records), prop.point, prop.config,
                           self.problem.costs(prop.config), outcome, self.objective,
                           minimize=self.minimize)
        if prop.probe:
            rec = replace(rec, extra={**rec.extra, "probe": True})
        self.store.add(rec, params=self.space.ratios(prop.config), lows=self._lows)
        prop.record = rec
        self.records.append(rec)
        if not rec.failed:
            self._seen.setdefault(_config_key(prop.config), rec)
        if self._queue and self._queue[0] is not prop:  # the agent hears of it later
            self._save()
        if self.on_record is not None:
            self.on_record(rec)
        return rec

    def _tell_ready(self) -> None:
        told = False
        while self._queue and self._queue[0].record is not None:
            prop = self._queue.pop(0)
            rec = prop.record
            result = _result(rec, self.pareto)
            if prop.repeat:  # the known result, with the point this proposal asked for
                result = _result(replace(rec, point=tuple(prop.point)), self.pareto)
                result["repeat"] = 1.0  # agents may explore rather than ask for it again
            self.agent.tell(prop.point, result)
            told = True
        if told:
            self._save()


def run_search(problem: PruningProblem, *, model: nn.Module, evaluate: Evaluate, agent: Agent,
               trials: int, store: StudyStore, executor: Executor | None = None,
               objective: str = "accuracy", batch: int = 1, progress: bool = True,
               console: Console | None = None, pareto: ParetoRange | None = None,
               max_repeats: int = 50, costs: SearchCosts | None = None) -> list[TrialRecord]:
    """Run until the study holds ``trials`` trials (or the agent has nothing more to propose).

    Trials already in ``store`` count: a killed search resumes from its study, with the agent's
    saved state, and repeats no finished trial. Identical configurations are scored once: a
    configuration proposed again is told its known result and does not count as a trial; after
    ``max_repeats`` such proposals in a row the agent has converged and the search stops.
    With ``pareto`` the agent's points have one more coordinate, the budget level of that
    candidate, and it is told two objectives (see ``autoprune.pareto``). The executor decides
    how many candidates are in flight: the local one runs ``batch`` at a time, Ray keeps
    ``workers`` running (``SearchSession``).
    """
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    executor = executor or LocalExecutor()
    space = problem.space
    work = PruneAndEvaluate(problem, model, evaluate, costs)
    if agent.context_needs:  # heuristics allocate from facts about the units, set before resume
        agent.set_context(agent_context(space, model, needs=agent.context_needs,
                                        problem=problem, trials=trials))
    console = console or Console(stderr=True)
    bar = Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[best]}"), TimeElapsedColumn(), console=console,
                   disable=not progress, transient=False)
    task = bar.add_task("search", total=trials, completed=0, best="best: -")

    def show(_: TrialRecord | None = None) -> None:
        best = best_record(session.records, problem)
        bar.update(task, completed=min(len(session.records), trials),
                   best=_best_text(best, objective))

    session = SearchSession(problem, agent=agent, store=store, trials=trials,
                            objective=objective, pareto=pareto, max_repeats=max_repeats,
                            on_record=show)
    show()
    with bar if progress else nullcontext():
        executor.execute(session, work, batch=batch)
    if session.converged and len(session.records) < trials:
        console.print(f"[yellow]the last {session.repeats} proposals were all configurations "
                      "already evaluated (the agent has converged, or the budget leaves no "
                      f"other candidates): stopping after {len(session.records)} trials[/]")
    return session.records


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
                 objective: str, *, minimize: bool | None = None) -> TrialRecord:
    if isinstance(outcome, BaseException):
        reason = str(outcome) if isinstance(outcome, TrialFailure) \
            else f"{type(outcome).__name__}: {outcome}"
        extra = {"broken_units": list(outcome.units)} \
            if isinstance(outcome, PruningBrokeModel) else {}
        return TrialRecord(number=number, point=tuple(x), config=config, costs=costs, metrics={},
                           objective=float("nan"), failed=True, reason=reason, extra=extra)
    value = objective_value(outcome, objective, minimize=minimize)
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
    if rec.extra.get("probe"):
        out["probe"] = 1.0  # scored outside the budget: only the agent that asked learns it
    return out


def _best_text(best: TrialRecord | None, objective: str) -> str:
    if best is None:
        return "best: -"
    return f"best {objective}: {abs(best.objective):.4f}"
