"""Any autoprune agent as a Ray Tune ``Searcher``: ask on ``suggest``, tell on
``on_trial_complete``, so RL, Bayesian optimization and evolution all run with several trials in
flight inside a user's own ``tune.Tuner``. (``--executor ray`` drives the same session on warm
actors instead of Tune trials: ``autoprune.executors.ray_actors``.)

    problem = autoprune.build_problem(space, autoprune.parse_targets("flops=50%"))
    searcher = autoprune.AgentSearcher("tpe", problem, metric="accuracy", mode="max")

    def trainable(config):
        pruned = problem.space.apply(model, config["channels"])
        tune.report(my_eval(pruned))          # e.g. {"accuracy": 0.93}

    tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=40,
                                                      max_concurrent_trials=4)).fit()
    searcher.best                             # a TrialRecord: config, costs, metrics

Each suggestion is the agent's point repaired to the budgets (every configuration meets them),
as ``config["channels"]`` (unit name -> channels kept). Every finished trial lands in the
searcher's ``StudyStore`` (in memory by default; ``StudyStore.in_folder(run_dir)`` gives the same
``study.db`` as ``autoprune search``), numbered in completion order; the agent is told in the
order it asked (``autoprune.session.SearchSession``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray.tune.result import AUTO_RESULT_KEYS
from ray.tune.search import Searcher
from torch import nn

from autoprune.agents import Agent, make_agent
from autoprune.context import agent_context
from autoprune.session import Proposal, SearchSession, TrialFailure, best_record
from autoprune.pareto import ParetoRange
from autoprune.problem import PruningProblem
from autoprune.study import StudyStore, TrialRecord

__all__ = ["ERROR_KEY", "AgentSearcher"]

#: A trainable that catches an exception reports ``{ERROR_KEY: "ValueError: ..."}``: the trial
#: is recorded as failed with that reason instead of being retried (a Python exception in an
#: evaluator is deterministic; retries are for workers that die).
ERROR_KEY = "autoprune_error"
_IGNORED = frozenset(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_id", "experiment_tag",
                                          "should_checkpoint", ERROR_KEY}


class AgentSearcher(Searcher):
    """A Tune searcher proposing configurations of ``problem`` from an autoprune ``agent`` (an
    ``Agent`` or a registered name, ``autoprune agents`` lists them).

    ``metric``/``mode``: what the trainable reports and which way is better. ``trials``: the
    most trials the searcher proposes (``None``: as many as the Tuner's ``num_samples``).
    ``store``: where finished trials are recorded (default: an in-memory optuna study). A
    study that already holds trials resumes: the agent's saved state comes back and no
    recorded configuration is proposed again. ``model`` is needed only by agents that
    allocate from facts about the model (``global``, ``lamp``, ``erk``, ``sensitivity``).
    """

    def __init__(self, agent: Agent | str, problem: PruningProblem, *, metric: str = "accuracy",
                 mode: str = "max", trials: int | None = None, store: StudyStore | None = None,
                 seed: int = 0, model: nn.Module | None = None,
                 pareto: ParetoRange | None = None,
                 on_record: Callable[[TrialRecord], None] | None = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if isinstance(agent, str):
            agent = make_agent(agent, problem.space.dim + (1 if pareto else 0), seed=seed,
                               objectives=2 if pareto else 1)
        if agent.context_needs:
            if model is None:
                raise ValueError(f"agent {agent.name!r} allocates from facts about the model; "
                                 "pass model=... to AgentSearcher")
            agent.set_context(agent_context(problem.space, model, needs=agent.context_needs,
                                            problem=problem, trials=trials))
        session = SearchSession(problem, agent=agent, store=store or StudyStore.in_memory(),
                                trials=trials, objective=metric, minimize=mode == "min",
                                pareto=pareto, on_record=on_record)
        self._setup(session, metric=metric, mode=mode)

    @classmethod
    def for_session(cls, session: SearchSession) -> AgentSearcher:
        """A searcher driving an existing search (what ``RayExecutor`` does)."""
        self = cls.__new__(cls)
        # No metric for Tune: it would then refuse results without it, and a trial whose
        # evaluator failed or returned no score is a failed trial of ours, not Tune's error.
        self._setup(session, metric=None, mode=None)
        return self

    def _setup(self, session: SearchSession, *, metric: str | None, mode: str | None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.session = session
        self._live: dict[str, Proposal] = {}
        self._errored: dict[str, Proposal] = {}
        #: When True, a trial that errored (its worker died max_failures + 1 times) waits for
        #: ``fail(trial_id, reason)`` (``RayExecutor``'s callback has the error text); otherwise
        #: it is recorded at once with a generic reason.
        self.defer_errors = False

    # ------------------------------------------------------------------ results
    @property
    def records(self) -> list[TrialRecord]:
        """Every trial recorded so far, in the study's order."""
        return self.session.records

    @property
    def best(self) -> TrialRecord | None:
        """The best finished trial that meets every budget."""
        return best_record(self.session.records, self.session.problem)

    # ------------------------------------------------------------------ Searcher API
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        # The search space is the problem's; a Tuner's metric/mode must agree with ours.
        if self._metric and ((metric and metric != self._metric)
                             or (mode and mode != self._mode)):
            raise ValueError(f"this AgentSearcher optimises {self._metric!r} ({self._mode}); "
                             f"the Tuner asked for {metric!r} ({mode})")
        return True  # constants in the Tuner's param_space are merged into each suggestion

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.session.finished:
            return Searcher.FINISHED
        props = self.session.propose(1)
        if props:
            self._live[trial_id] = props[0]
            return {"channels": dict(props[0].config)}
        # None: nothing now (the agent waits for a running trial's result); ask again later.
        return Searcher.FINISHED if self.session.finished else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        prop = self._live.pop(trial_id, None)
        if prop is None:
            return  # not one of ours (e.g. a trial added to the Tuner by hand)
        if error:
            if self.defer_errors:
                self._errored[trial_id] = prop
                return
            outcome: Mapping[str, float] | BaseException = TrialFailure(
                "the trial errored in Ray Tune (its worker raised or died on every attempt); "
                "the trial's error.txt in the Tune experiment folder has the traceback")
        else:
            outcome = _outcome(result or {})
        self.session.complete(prop, outcome)

    def fail(self, trial_id: str, reason: str) -> None:
        """Record a deferred errored trial with ``reason``."""
        prop = self._errored.pop(trial_id, None)
        if prop is not None:
            self.session.complete(prop, TrialFailure(reason))

    def abandon(self, reason: str) -> None:
        """Record every trial still running or errored as failed (the Tuner stopped)."""
        for trial_id in list(self._errored):
            self.fail(trial_id, reason)
        for trial_id, prop in list(self._live.items()):
            del self._live[trial_id]
            self.session.complete(prop, TrialFailure(reason))

    # ------------------------------------------------------------------ Tune checkpoints
    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its search algorithm into the experiment folder (for Tuner.restore);
        # the session (an open study, a progress bar) stays in this process. What Tune needs
        # to resume a searcher is ``save``/``restore``, below.
        state = dict(self.__dict__)
        state.update(session=None, _live={}, _errored={})
        return state

    def save(self, checkpoint_path: str) -> None:
        # JSON, never a pickle: the agent's state (the study in the run folder, not this
        # file, is what a resumed autoprune search starts from).
        Path(checkpoint_path).write_text(json.dumps(
            {"agent": self.session.agent.state_dict()}))

    def restore(self, checkpoint_path: str) -> None:
        self.session.agent.load_state_dict(json.loads(Path(checkpoint_path).read_text())["agent"])


def _outcome(result: Mapping[str, Any]) -> Mapping[str, float] | BaseException:
    """A reported result as metrics, or the failure a trainable reported."""
    if result.get(ERROR_KEY):
        return TrialFailure(str(result[ERROR_KEY]))
    metrics: dict[str, float] = {}
    for k, v in result.items():
        # Tune adds its bookkeeping and the flattened config ("config/channels/...").
        if k in _IGNORED or str(k).startswith("config/") or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            metrics[str(k)] = float(v)
    return metrics
