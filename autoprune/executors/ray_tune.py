"""Trials on Ray (``--executor ray``): one warm Ray actor per worker slot, created once per
search, runs candidate after candidate (``autoprune.executors.ray_actors``); the driver keeps
``workers`` calls in flight and proposes a new candidate from the session whenever one
finishes. (Ray Tune is the way to plug autoprune's agents into a user's own Tune runs:
``AgentSearcher``, ``autoprune.executors.tune_searcher``.)

What travels: the trial's work (the search space, the dense model and the evaluator with its
data, plus a latency table when costing needs one — costing itself stays on the driver) is put
in Ray's object store once and handed to each actor when it is created; each call carries only
the candidate's ``{unit: kept}``. Results come back to the driver, which writes the run folder's
optuna study exactly as the local executor does.

Faults: an exception in the evaluator is the trial's recorded failure (with its reason, not
retried: it would fail again); a worker that dies (a crash, ``os._exit``, out of memory, a lost
node) is replaced by a fresh actor and the trial retried up to ``max_failures`` times, then
recorded as failed with Ray's error text. A killed driver leaves the study; rerunning resumes
from it.

GPUs: with ``gpus_per_trial`` (fractions allowed: 0.5 puts two trials on a GPU) each actor
reserves that share of a GPU (``num_gpus``); Ray sets ``CUDA_VISIBLE_DEVICES`` in it to the GPU
it was given, so a trial's ``cuda`` (or ``auto``) device is ``cuda:0`` there. Trials in flight are
the fewest of what the cluster's CPUs and GPUs hold (:mod:`autoprune.executors.capacity`);
asking for GPUs on a cluster without any is one error naming the fix.

Threads: every actor pins torch to ``max(1, int(cpus_per_trial))`` threads and the workers get
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` to match: several torch processes with default thread
pools on a few cores spin on each other's barriers and run many times slower. Workers run at
normal priority (``RAY_worker_niceness=0``; Ray's default of 15 leaves them only the CPU that
the driver and the host's other processes do not use).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray

from autoprune.executors.base import Executor, TrialSource, TrialWork
from autoprune.executors.capacity import check_request, trial_slots
from autoprune.executors.ray_actors import ActorPool, worker_env
from autoprune.user_model import user_modules


__all__ = ["RayExecutor"]

class RayExecutor(Executor):
    """Runs trials on Ray: a local Ray started for the search (``address=None``), or a running
    cluster (``address="auto"`` or ``"host:port"`` of its head). ``workers``: trials in
    flight, one warm actor each (``None``, or more than the cluster's CPUs and GPUs hold now:
    as many as they hold); ``cpus_per_trial``: CPUs each actor reserves (and its torch
    threads); ``gpus_per_trial``: GPUs each actor reserves (0: none; a fraction shares one);
    ``max_failures``: retries of a trial whose worker died."""

    name = "ray"

    def __init__(self, *, workers: int | None = None, address: str | None = None,
                 cpus_per_trial: float = 1.0, max_failures: int = 2,
                 gpus_per_trial: float = 0.0) -> None:
        if (workers is not None and workers < 1) or cpus_per_trial <= 0 or max_failures < 0:
            raise ValueError("workers >= 1, cpus_per_trial > 0 and max_failures >= 0 please")
        check_request(cpus_per_trial, gpus_per_trial)
        self.workers = workers
        self.address = address
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = float(gpus_per_trial)
        self.max_failures = max_failures
        self.threads = max(1, int(cpus_per_trial))
        #: Seconds ``start`` took (connecting, or starting a local Ray).
        self.startup_s: float | None = None
        #: Of the last ``execute``: seconds from its start until every worker slot is running
        #: a trial (the actors' start, each importing torch and loading the work: with
        #: ``startup_s``, Ray's fixed cost), then from that moment to the last trial's end
        #: and the trials that ended in it (steady state), and the trials run.
        self.timings: dict[str, float] = {}
        self._owns_ray = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.startup_s is not None:
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # CI and clusters: no network
        t0 = time.perf_counter()
        if not ray.is_initialized():  # else: the caller's connection (and cluster) is used
            env = {**worker_env(self.threads), "RAY_USAGE_STATS_ENABLED": "0"}
            kwargs: dict[str, Any] = {}
            if self.address is None:
                kwargs = {"include_dashboard": False}
            elif self.address != "auto":
                _probe(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False,
                         logging_level=logging.ERROR, configure_logging=True,
                         runtime_env={"env_vars": env}, **kwargs)
            except ConnectionError as err:
                raise ValueError(_unreachable(self.address, err)) from None
            self._owns_ray = True
        self.startup_s = time.perf_counter() - t0

    def close(self) -> None:
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
        self.startup_s = None

    # ------------------------------------------------------------------ a whole search
    def execute(self, session: TrialSource, work: TrialWork, *, batch: int = 1) -> None:  # type: ignore[override]
        self.timings = {}
        if session.finished:
            return
        self.start()
        # No more actors than the cluster holds: a call queued on an actor that never gets
        # its CPUs (or GPUs) would wait for ever.
        slots = self.slots()
        _ship_user_code()  # before the work is pickled into the object store
        t0 = time.perf_counter()
        pool = ActorPool(work, slots=slots, threads=self.threads,
                         cpus_per_trial=self.cpus_per_trial, max_failures=self.max_failures,
                         gpus_per_trial=self.gpus_per_trial)
        pool.drive(session)
        starts, ends = sorted(pool.timeline.starts), pool.timeline.ends
        if starts:
            ready = starts[min(slots, len(starts)) - 1]  # the last slot's first trial
            self.timings = {"to_first_trial_s": starts[0] - t0, "to_all_workers_s": ready - t0,
                            "steady_span_s": max(ends or [ready]) - ready,
                            "steady_trials": float(sum(e > ready for e in ends)),
                            "trials_run": float(len(ends))}

    def slots(self) -> int:
        """Trials in flight on the connected cluster (:func:`trial_slots`)."""
        return trial_slots(ray.cluster_resources(), cpus_per_trial=self.cpus_per_trial,
                           gpus_per_trial=self.gpus_per_trial, workers=self.workers)

    # ------------------------------------------------------------------ plain fan-out (not part
    # of the Executor contract: Ray's own helper for plain calls, e.g. benchmarks)
    def run(self, fn: Callable[[Any], Any], items: Sequence[Any]
            ) -> Iterator[tuple[int, Any | BaseException]]:
        """``fn(item)`` as Ray tasks, ``workers`` at a time, yielded as they finish."""
        self.start()
        _ship_user_code()
        remote = ray.remote(num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial,
                            max_retries=self.max_failures)(_call)
        fn_ref = ray.put(fn)
        slots = self.slots()
        pending: dict[Any, int] = {}
        todo = list(enumerate(items))
        while todo or pending:
            while todo and len(pending) < slots:
                i, item = todo.pop(0)
                pending[remote.remote(fn_ref, item, self.threads)] = i
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                yield i, ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - a failed trial, as LocalExecutor
                yield i, err


def _pin(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _call(fn: Callable[[Any], Any], item: Any, threads: int) -> Any:
    _pin(threads)
    return fn(item)


def _ship_user_code() -> None:
    """Classes and functions of a user's files (``--model file.py:fn``, ``--evaluator``) go to
    the workers by value: their modules exist only in this process, so a reference to them
    would not unpickle there."""
    for module in user_modules():
        ray.cloudpickle.register_pickle_by_value(module)


def _probe(address: str) -> None:
    """Fail in seconds, with the fix, when nothing listens at ``host:port`` (ray.init would
    retry for a minute)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r} is not host:port or 'auto' (ray start "
                         "--head prints the address, e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host.removeprefix("ray://"), int(port)), timeout=5).close()
    except OSError as err:
        raise ValueError(_unreachable(address, err)) from None


def _unreachable(address: str | None, err: BaseException) -> str:
    text = (f"cannot reach a Ray cluster at {address!r} ({err}). Start one with "
            "`ray start --head` (it prints the address to use, e.g. 127.0.0.1:6379), pass that "
            "as --ray-address, or leave --ray-address out to start a local Ray for this search")
    if address not in (None, "auto") and "RAY_AUTH_MODE" not in os.environ:
        # Ray sends its token only to clusters found automatically; an explicit address needs
        # the user's consent (Ray's design: a token must not leak to an arbitrary address).
        text += (". If the cluster uses token authentication (the default of `ray start "
                 "--head`), set RAY_AUTH_MODE=token (the token is read from ~/.ray/auth_token "
                 "or RAY_AUTH_TOKEN), or use --ray-address auto on the head machine")
    return text
