"""Warm trial actors for ``RayExecutor``: one Ray actor per worker slot, created once per
search and holding the trial's work, so a candidate costs one actor call with its config.

``ActorPool.drive(session)`` keeps one call in flight per actor and proposes the next candidate
from the session as soon as a call returns (the agent is told first, then asked), so ``workers``
candidates run at any time, asynchronously; the driver blocks in ``ray.wait`` between results
(no polling).

Faults: an exception raised by the work (the evaluator, or pruning) comes back as the trial's
outcome, exactly as the local executor records it, and is never retried. A call whose actor
died (a crash, ``os._exit``, out of memory, a lost node) is retried on a fresh actor up to
``max_failures`` times, then the trial is recorded failed with Ray's error text; the slot gets
a fresh actor either way. An actor that cannot even be built (its work does not unpickle on the
workers) stops the search with one error naming the fix.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.exceptions

from autoprune.executors.base import TrialSource, TrialWork

__all__ = ["ActorPool", "TrialActor", "actor_resources", "worker_death_reason", "worker_env"]


class TrialActor:
    """One worker slot: the work (space, dense model, evaluator with its data) arrives once, at
    creation; ``run(config)`` prunes and scores one candidate."""

    def __init__(self, work: TrialWork, threads: int) -> None:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        self.threads = threads
        _pin(threads)
        self.work = work

    def run(self, config: Mapping[str, int]) -> tuple[Mapping[str, float] | Exception, float]:
        """The trial's metrics, or the exception its work raised; and the seconds it took."""
        t0 = time.perf_counter()
        _pin(self.threads)  # the work may have changed it; costs nothing
        try:
            out: Mapping[str, float] | Exception = dict(self.work(config))
        except Exception as err:  # noqa: BLE001 - the trial's recorded failure, not retried
            out = _portable(err)
        return out, time.perf_counter() - t0


_RemoteTrialActor = ray.remote(TrialActor)


def actor_resources(cpus_per_trial: float, gpus_per_trial: float = 0.0) -> dict[str, float]:
    """What one trial actor reserves, as ``.options()`` keywords: ``num_cpus``, and
    ``num_gpus`` when trials use GPUs (Ray then sets the actor's ``CUDA_VISIBLE_DEVICES`` to
    the GPU it holds, which torch numbers ``cuda:0``)."""
    out = {"num_cpus": float(cpus_per_trial)}
    if gpus_per_trial > 0:
        out["num_gpus"] = float(gpus_per_trial)
    return out


def worker_env(threads: int) -> dict[str, str]:
    """A trial worker's environment: torch's thread pools at ``threads``, and the worker at
    normal priority. (Ray starts workers at niceness 15, below the driver's and the machine's
    other processes: on a busy host they would get only the CPU left over, so Ray would run
    slower than the local executor on the same cores.)"""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "RAY_worker_niceness": "0"}


def _pin(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _portable(err: Exception) -> Exception:
    """The exception itself when it survives a trip to the driver (the study then records it
    as the local executor would, e.g. a pruned network's broken units), else its text."""
    from autoprune.session import TrialFailure

    try:
        back = pickle.loads(ray.cloudpickle.dumps(err))
        if type(back) is type(err) and str(back) == str(err):
            return err
    except Exception:  # noqa: BLE001 - an exception that does not pickle: its text travels
        pass
    return TrialFailure(f"{type(err).__name__}: {err}")


def worker_death_reason(err: BaseException, attempts: int) -> str:
    """A trial's recorded reason once its worker died on every attempt."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("class_name:", "actor_id:", "namespace:"))]
    detail = " ".join(keep) or type(err).__name__
    return f"the Ray worker running this trial failed {attempts} time(s): {detail[:500]}"


@dataclass
class _Timeline:
    """Driver-clock times of each trial's start (its result's arrival less the seconds the
    actor spent on it) and end (its result's arrival)."""

    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)


class ActorPool:
    """``slots`` warm actors over one object-store copy of ``work``."""

    def __init__(self, work: TrialWork, *, slots: int, threads: int, cpus_per_trial: float,
                 max_failures: int, gpus_per_trial: float = 0.0) -> None:
        self.slots = slots
        self.threads = threads
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial  # Ray sets CUDA_VISIBLE_DEVICES in the actor
        self.max_failures = max_failures
        self._work_ref = ray.put(work)  # once: every actor (and every restart) reads this copy
        self.timeline = _Timeline()

    def _new_actor(self) -> Any:
        return _RemoteTrialActor.options(
            **actor_resources(self.cpus_per_trial, self.gpus_per_trial),
            max_restarts=0, max_task_retries=0,
            runtime_env={"env_vars": worker_env(self.threads)},
        ).remote(self._work_ref, self.threads)

    def drive(self, session: TrialSource) -> None:
        """Run ``session`` to its end (or until the agent has nothing more to propose)."""
        actors = [self._new_actor() for _ in range(self.slots)]
        idle = list(range(self.slots))
        pending: dict[Any, tuple[int, Any]] = {}  # call -> (slot, proposal)
        attempts: dict[int, int] = {}  # proposal id -> calls lost to a dead worker
        again: list[Any] = []  # proposals whose worker died, to run on a fresh actor
        try:
            while True:
                while idle:
                    if again:
                        prop = again.pop(0)
                    else:
                        props = [] if session.finished else session.propose(1)
                        if not props:
                            break
                        prop = props[0]
                    i = idle.pop(0)
                    pending[actors[i].run.remote(prop.config)] = (i, prop)
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1)
                now = time.perf_counter()
                i, prop = pending.pop(done[0])
                idle.append(i)
                try:
                    outcome, seconds = ray.get(done[0])
                except ray.exceptions.RayTaskError as err:
                    # the call itself raised outside the work (e.g. its result did not
                    # pickle): deterministic, recorded as the trial's failure
                    self.timeline.ends.append(now)
                    session.complete(prop, _task_failure(err))
                    continue
                except ray.exceptions.RayError as err:  # the actor died: fresh one, retry
                    if isinstance(err, ray.exceptions.RayActorError) and err.actor_init_failed:
                        raise ValueError(_init_failed(err)) from None
                    self._replace(actors, i)
                    attempts[prop.id] = attempts.get(prop.id, 0) + 1
                    if attempts[prop.id] <= self.max_failures:
                        again.append(prop)
                    else:
                        self.timeline.ends.append(now)
                        session.complete(prop, _failure(worker_death_reason(
                            err, attempts[prop.id])))
                    continue
                self.timeline.starts.append(now - seconds)
                self.timeline.ends.append(now)
                session.complete(prop, outcome)  # metrics, or the exception the work raised
        finally:
            for actor in actors:
                _kill(actor)

    def _replace(self, actors: list[Any], i: int) -> None:
        _kill(actors[i])
        actors[i] = self._new_actor()


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _failure(reason: str) -> Exception:
    from autoprune.session import TrialFailure

    return TrialFailure(reason)


def _task_failure(err: ray.exceptions.RayTaskError) -> Exception:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return _failure(lines[-1][:500] if lines else type(err).__name__)


def _init_failed(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return ("the Ray workers cannot load this search's trial work (the dense model, the "
            f"evaluator and its data): {(lines[-1] if lines else type(err).__name__)[:500]}. "
            "Every Ray node needs autoprune and the packages the model and the evaluator "
            "import (same versions as this machine); a model or evaluator from your own file "
            "travels by value, but what it imports must be installed there")
