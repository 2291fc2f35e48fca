"""Trials on Ray Tune (``--executor ray``): each candidate is one Tune trial that prunes,
evaluates and reports one configuration; the agent proposes through ``AgentSearcher``, so
``workers`` candidates stay in flight and a new one is proposed whenever one finishes.

What travels: the trial's work (the search space, the dense model and the evaluator with its
data, plus a latency table when costing needs one — costing itself stays on the driver) is put
in Ray's object store once by ``tune.with_parameters``; each trial receives only its
``{"channels": {unit: kept}}``. Results come back to the driver, which writes the run folder's
optuna study exactly as the local executor does.

Faults: an exception in the evaluator is reported as the trial's failure (recorded with its
reason, not retried: it would fail again); a worker that dies (a crash, ``os._exit``, out of
memory, a lost node) is retried by Tune up to ``max_failures`` times, then recorded as failed
with Tune's error text. A killed driver leaves the study; rerunning resumes from it.

Threads: every trial pins torch to ``max(1, int(cpus_per_trial))`` threads and the workers get
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` to match: several torch processes with default thread
pools on a few cores spin on each other's barriers and run many times slower.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune

from autoprune.executors.base import Executor, TrialWork
from autoprune.executors.tune_searcher import ERROR_KEY, AgentSearcher
from autoprune.session import SearchSession
from autoprune.user_model import user_modules


__all__ = ["RayExecutor"]

# While our Tuner runs (and only then: a user's own Tuner in the same process keeps Tune's
# defaults): no Tune CSV/JSON/TensorBoard loggers per trial (disk and driver time for files
# nobody reads: the study is the record), the old console engine (verbose=0 silences it).
_TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0"}


class RayExecutor(Executor):
    """Runs trials on Ray: a local Ray started for the search (``address=None``), or a running
    cluster (``address="auto"`` or ``"host:port"`` of its head). ``workers``: trials in
    flight (``None``: as many as the cluster's CPUs hold); ``cpus_per_trial``: CPUs Tune
    reserves for each; ``max_failures``: retries of a trial whose worker died."""

    name = "ray"

    def __init__(self, *, workers: int | None = None, address: str | None = None,
                 cpus_per_trial: float = 1.0, max_failures: int = 2) -> None:
        if (workers is not None and workers < 1) or cpus_per_trial <= 0 or max_failures < 0:
            raise ValueError("workers >= 1, cpus_per_trial > 0 and max_failures >= 0 please")
        self.workers = workers
        self.address = address
        self.cpus_per_trial = cpus_per_trial
        self.max_failures = max_failures
        self.threads = max(1, int(cpus_per_trial))
        #: Seconds ``start`` took (connecting, or starting a local Ray).
        self.startup_s: float | None = None
        #: Of the last ``execute``: seconds from its start until every worker slot is running
        #: a trial (Tune's set-up and the workers' start, each importing torch: with
        #: ``startup_s``, Ray's fixed cost), then from that moment to the last trial's end
        #: and the trials that ended in it (steady state), and the trials Tune ran.
        self.timings: dict[str, float] = {}
        self._owns_ray = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.startup_s is not None:
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # CI and clusters: no network
        t0 = time.perf_counter()
        if not ray.is_initialized():  # else: the caller's connection (and cluster) is used
            env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
                   "RAY_USAGE_STATS_ENABLED": "0"}
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
    def execute(self, session: SearchSession, work: TrialWork, *, batch: int = 1) -> None:  # type: ignore[override]
        if session.finished:
            return
        self.start()
        capacity = ray.cluster_resources().get("CPU", 0.0)
        if capacity < self.cpus_per_trial:
            raise ValueError(f"the Ray cluster has {capacity:g} CPUs; a trial asks for "
                             f"{self.cpus_per_trial:g} (--cpus-per-trial)")
        _ship_user_code()
        searcher = AgentSearcher.for_session(session)
        searcher.defer_errors = True
        watch = _Watch(searcher, self.max_failures)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, work=work, threads=self.threads),
            {"cpu": self.cpus_per_trial})
        _remove_stale_storage()
        # Tune's bookkeeping (not ours: the study is the record), named after this process so a
        # later search removes it if this driver is killed before it can.
        storage = tempfile.mkdtemp(prefix=f"autoprune-tune-{os.getpid()}-")
        t0 = time.perf_counter()
        with _quiet_tune():
            try:
                tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        search_alg=searcher, num_samples=max(1, session.room),
                        max_concurrent_trials=self.workers,  # None: as resources allow
                        # one actor per worker slot, reused: no process start and no import
                        # of torch per trial
                        reuse_actors=True),
                    run_config=tune.RunConfig(
                        name="autoprune", storage_path=storage, verbose=0, log_to_file=False,
                        failure_config=tune.FailureConfig(max_failures=self.max_failures),
                        callbacks=[watch])).fit()
            finally:
                shutil.rmtree(storage, ignore_errors=True)
        if watch.starts:
            slots = self.workers or int(capacity // self.cpus_per_trial)
            starts = sorted(watch.starts)
            ready = starts[min(max(1, slots), len(starts)) - 1]  # the last slot's first trial
            self.timings = {"to_first_trial_s": starts[0] - t0, "to_all_workers_s": ready - t0,
                            "steady_span_s": max(watch.ends or [ready]) - ready,
                            "steady_trials": float(sum(e > ready for e in watch.ends)),
                            "trials_run": float(len(watch.ends))}
        searcher.abandon("Ray Tune stopped before this trial reported a result")

    # ------------------------------------------------------------------ plain fan-out (not part
    # of the Executor contract: Ray's own helper for plain calls, e.g. benchmarks)
    def run(self, fn: Callable[[Any], Any], items: Sequence[Any]
            ) -> Iterator[tuple[int, Any | BaseException]]:
        """``fn(item)`` as Ray tasks, ``workers`` at a time, yielded as they finish."""
        self.start()
        _ship_user_code()
        remote = ray.remote(num_cpus=self.cpus_per_trial, max_retries=self.max_failures)(_call)
        fn_ref = ray.put(fn)
        slots = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)
                                           // self.cpus_per_trial))
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


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's console output off while our Tuner runs; restored after (a user's own Tuner in
    this process keeps Tune's defaults). Its tracebacks of failed trials are noise for us:
    failures are recorded with their reason and shown in the trials table."""
    loggers = [logging.getLogger(n) for n in ("ray.tune", "ray.train", "ray.air")]
    levels = [lg.level for lg in loggers]
    saved = {k: os.environ.get(k) for k in _TUNE_ENV}
    os.environ.update(_TUNE_ENV)
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pin(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _trial(config: dict[str, Any], work: TrialWork, threads: int) -> None:
    """One Tune trial: prune to ``config["channels"]``, evaluate, report the metrics."""
    _pin(threads)
    try:
        metrics = work(config["channels"])
    except Exception as err:  # noqa: BLE001 - reported: recorded as failed, not retried
        tune.report({ERROR_KEY: f"{type(err).__name__}: {err}"})
        return
    tune.report(dict(metrics))


def _call(fn: Callable[[Any], Any], item: Any, threads: int) -> Any:
    _pin(threads)
    return fn(item)


class _Watch(tune.Callback):
    """Gives the searcher the error of a trial Tune gave up on (the searcher alone only learns
    *that* it failed), and notes when trials start and end (the scaling benchmark)."""

    def __init__(self, searcher: AgentSearcher, max_failures: int) -> None:
        self.searcher = searcher
        self.max_failures = max_failures
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ends.append(time.perf_counter())

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ends.append(time.perf_counter())
        text = ""
        try:
            text = Path(trial.error_file).read_text() if trial.error_file else ""
        except OSError:
            pass
        lines = [ln.strip() for ln in text.splitlines()
                 if ln.strip() and not ln.startswith("Failure #")]
        detail = lines[-1] if lines else "no error text"
        self.searcher.fail(trial.trial_id,
                           f"the Ray worker running this trial failed {self.max_failures + 1} "
                           f"time(s): {detail[:500]}")


def _remove_stale_storage() -> None:
    for path in Path(tempfile.gettempdir()).glob("autoprune-tune-*-*"):
        pid = path.name.split("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # its driver is gone
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # alive (another user's): leave it
            pass


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
