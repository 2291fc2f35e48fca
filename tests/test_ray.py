"""Trials on a real local Ray (2 CPUs, started once for this module): a search through the CLI
with two workers, equal in kind to the local executor's; a worker that dies is retried; a
driver that is killed resumes from the run folder; agents as searchers in a user's Tuner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import ray
import ray.cloudpickle

import autoprune
import autoprune.agents
import conftest
from autoprune.executors import make_executor
from autoprune.problem import PruningProblem
from autoprune.executors.ray_tune import RayExecutor
from autoprune.search_spaces import ChannelSpace
from autoprune.targets import parse_targets

SMALL = ["--model", "resnet20", "--image-size", "8", "--width-mult", "0.5", "--round-to", "4"]


def _env() -> dict[str, str]:
    # Read at call time: ray.init sets RAY_AUTH_MODE=token in this process (a new local Ray
    # enables token authentication), and drivers joining it by address need it too.
    return {**os.environ, "COLUMNS": "120", "RAY_USAGE_STATS_ENABLED": "0"}


# Test functions and conftest's model travel to the workers by value (the workers cannot
# import test modules by name).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(conftest)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """One local Ray for the module; its address, for drivers started as subprocesses."""
    tmp = tempfile.mkdtemp(prefix="ap-ray-")  # short: Ray's socket paths have a length limit
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tmp,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    torch.set_num_threads(1)  # module-scoped: conftest's per-test pinning is not active yet
    autoprune.load_or_train_baseline("resnet20", image_size=8, width_mult=0.5, epochs=2,
                                     cache_dir=cache, progress=False)
    return cache


def _cli(args: list[str], cache: Path, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True,
                         text=True, env={**_env(), "AUTOPRUNE_CACHE": str(cache)}, timeout=900)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def width_score(model: nn.Module) -> dict[str, float]:
    n = sum(p.numel() for p in model.parameters())
    return {"accuracy": n / (n + 5000.0)}


# ---------------------------------------------------------------------- a whole search
def test_search_on_ray_is_equal_in_kind_to_local(cluster: str, cache: Path,
                                                 tmp_path: Path) -> None:
    """``autoprune.search`` (what ``autoprune search`` calls), in this process so the module's
    Ray is used, with two workers; and the same search with the local executor."""
    import optuna

    common = dict(source=autoprune.ModelSource(model="resnet20", image_size=8, width_mult=0.5),
                  space=autoprune.SpaceSettings(round_to=4), targets=("flops=50%",),
                  agent="random", trials=6, scoring=autoprune.ScoringSettings(calib_batches=2),
                  cache_dir=cache, progress=False)
    local = autoprune.search(autoprune.SearchSettings(**common, run_dir=tmp_path / "local"))
    remote = autoprune.search(autoprune.SearchSettings(**common, run_dir=tmp_path / "ray",
                                                       executor=autoprune.ExecutorSettings(
                                                           executor="ray", workers=2)))
    assert remote["trials"] == local["trials"] == 6 and remote["failed_trials"] == 0
    assert set(remote) == set(local) and set(remote["best"]) == set(local["best"])
    assert remote["best"]["costs"]["macs"] <= remote["target"]["flops=50%"]["limit"]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == \
        sorted(p.name for p in (tmp_path / "local").iterdir())
    studies = {k: optuna.load_study(study_name="autoprune",
                                    storage=f"sqlite:///{tmp_path / k / 'study.db'}")
               for k in ("local", "ray")}
    for study in studies.values():
        assert [t.number for t in study.trials] == list(range(6))
        assert all(t.state.name == "COMPLETE" for t in study.trials)
    first = {k: s.trials[0] for k, s in studies.items()}
    assert set(first["ray"].params) == set(first["local"].params)
    assert set(first["ray"].user_attrs) == set(first["local"].user_attrs)
    assert set(first["ray"].user_attrs["metrics"]) == {"accuracy", "loss"}
    assert set(studies["ray"].user_attrs) == set(studies["local"].user_attrs)
    # the random agent's proposals do not depend on results: the same candidates were scored
    assert sorted(json.dumps(t.user_attrs["channels"], sort_keys=True)
                  for t in studies["ray"].trials) == \
        sorted(json.dumps(t.user_attrs["channels"], sort_keys=True)
               for t in studies["local"].trials)
    model = autoprune.load_pruned(tmp_path / "ray")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert ray.is_initialized()  # a caller's Ray connection is left alone


# ---------------------------------------------------------------------- faults
def flaky(model: nn.Module, folder: str) -> dict[str, float]:
    """Kills its worker once, raises once, returns NaN once; scores the rest."""
    for name in ("crash", "raise", "nan"):
        try:
            os.close(os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        if name == "crash":
            os._exit(3)  # the worker process dies: Tune retries the trial
        if name == "raise":
            raise ValueError("boom")
        return {"accuracy": float("nan")}
    return width_score(model)


def test_a_dying_worker_is_retried_and_failures_are_recorded(cluster: str, user_model: nn.Module,
                                                             tmp_path: Path) -> None:
    ex = RayExecutor(workers=2, max_failures=2)
    folder = str(tmp_path)
    alloc = autoprune.allocate(user_model, example_inputs=torch.randn(1, 1, 16, 16),
                               target="flops=60%", evaluate=lambda m: flaky(m, folder),
                               trials=8, round_to=4, executor=ex, metric="accuracy",
                               agent="random")  # the executor's failures, not an agent's plan
    assert (tmp_path / "crash").exists()  # the worker did die
    assert len(alloc.trials) == 8 and [r.number for r in alloc.trials] == list(range(8))
    reasons = sorted(r.reason for r in alloc.trials if r.failed)
    assert len(reasons) == 2, reasons  # the crashed trial was retried and scored
    assert reasons[0] == "ValueError: boom"
    assert "finite 'accuracy'" in reasons[1]


def test_a_worker_that_dies_past_its_retries_is_recorded_with_the_reason(
        cluster: str, user_model: nn.Module, tmp_path: Path) -> None:
    def dies_once(model: nn.Module) -> dict[str, float]:
        try:
            os.close(os.open(tmp_path / "died", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return width_score(model)
        os._exit(4)

    alloc = autoprune.allocate(user_model, example_inputs=torch.randn(1, 1, 16, 16),
                               target="flops=50%", evaluate=dies_once, trials=5, round_to=4,
                               executor=RayExecutor(workers=2, max_failures=0), seed=3,
                               metric="accuracy")
    died = [r for r in alloc.trials if r.failed]
    assert len(alloc.trials) == 5 and len(died) == 1  # no retry allowed: recorded, search goes on
    assert "Ray worker running this trial failed 1 time" in died[0].reason


# ---------------------------------------------------------------------- resume after kill
_DRIVER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    import ray.cloudpickle, conftest
    ray.cloudpickle.register_pickle_by_value(conftest)
    from conftest import ResidualDepthwiseNet, slow_width_score
    import autoprune
    from autoprune.executors.ray_tune import RayExecutor
    torch.manual_seed(0)
    model = ResidualDepthwiseNet()
    alloc = autoprune.allocate(model, example_inputs=torch.randn(1, 1, 16, 16),
                               target="flops=50%", evaluate=slow_width_score({sleep}),
                               trials={trials}, round_to=1, run_dir={run_dir!r}, seed=7,
                               agent="tpe", metric="accuracy",
                               executor=RayExecutor(workers=2, address={address!r}))
    print("TRIALS=" + str(len(alloc.trials)))
""")


def test_killed_driver_resumes_without_repeating_finished_trials(cluster: str,
                                                                 tmp_path: Path) -> None:
    import optuna

    def script(sleep: float, trials: int) -> list[str]:
        path = tmp_path / f"driver_{trials}.py"
        path.write_text(_DRIVER.format(tests=str(Path(__file__).parent), sleep=sleep,
                                       trials=trials, run_dir=str(tmp_path / "run"),
                                       address=cluster))
        return [sys.executable, str(path)]

    db = tmp_path / "run" / "study.db"
    proc = subprocess.Popen(script(0.5, 60), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    done = conftest.kill_after_trials(proc, db)
    assert done >= 4, "the search did not get going"
    before = optuna.load_study(study_name="autoprune", storage=f"sqlite:///{db}")
    kept = [(t.params, t.value) for t in before.trials]

    out = subprocess.run(script(0.0, len(kept) + 4), env=_env(), capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    # (Ray may print to stdout too: e.g. that the killed driver's workers died)
    assert f"TRIALS={len(kept) + 4}" in out.stdout.split(), out.stdout[-2000:]
    after = optuna.load_study(study_name="autoprune", storage=f"sqlite:///{db}").trials
    assert len(after) == len(kept) + 4
    assert [(t.params, t.value) for t in after[:len(kept)]] == kept
    channels = [json.dumps(t.user_attrs["channels"], sort_keys=True) for t in after]
    assert len(set(channels)) == len(channels)  # nothing scored twice, across the kill too


# ---------------------------------------------------------------------- agents as searchers
def test_agent_searcher_drives_a_users_tuner(cluster: str, user_model: nn.Module,
                                             tmp_path: Path) -> None:
    from ray import tune

    space = ChannelSpace.from_model(user_model, torch.randn(1, 1, 16, 16), round_to=2)
    problem = PruningProblem(space, parse_targets("flops=50%"))
    searcher = autoprune.AgentSearcher("evolution", problem, metric="accuracy", mode="max")

    def trainable(config: dict) -> None:
        torch.set_num_threads(1)
        tune.report(width_score(space.apply(user_model, config["channels"])))

    grid = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=6, max_concurrent_trials=2,
                                    reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    assert len(grid) == 6 and not grid.errors
    records = searcher.records  # a proposal repeating a scored configuration is no trial
    assert len(records) == 6 and not any(r.failed for r in records)
    assert all(problem.feasible(r.costs) for r in records)
    best = grid.get_best_result(metric="accuracy", mode="max").metrics["accuracy"]
    assert searcher.best is not None and searcher.best.objective == pytest.approx(best)
    assert searcher.session.agent.state_dict()["population"]  # the agent was told


# ---------------------------------------------------------------------- errors a user can cause
def test_executor_errors_name_the_fix(cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="available: local, ray"):
        make_executor("dask")
    with pytest.raises(ValueError, match="--executor ray"):
        make_executor("local", workers=2)
    code = ("import sys; sys.modules['ray'] = None\n"
            "from autoprune.executors import make_executor\n"
            "try:\n    make_executor('ray')\nexcept ValueError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert "pip install 'ray[tune]'" in out.stdout
    out = _cli(["search", *SMALL, "--executor", "ray", "--ray-address", "127.0.0.1:9",
                "--run-dir", str(tmp_path / "r"), "--no-progress"], cache, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "ray start --head" in " ".join(out.stderr.split())


def test_help_and_local_searches_do_not_import_ray() -> None:
    code = ("import sys, autoprune.cli, autoprune.api, autoprune.session\n"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert out.stdout.strip() == "False", out.stderr


# ---------------------------------------------------------------------- the session, no Ray
class _Recorder(autoprune.agents.Agent):
    """Proposes seeded random points; remembers what it was told, in order."""

    def __init__(self, dim: int, *, seed: int = 0) -> None:
        super().__init__(dim, seed=seed)
        self.rng = np.random.default_rng(seed)
        self.asked: list[list[float]] = []
        self.told: list[list[float]] = []

    def ask(self, n: int) -> list[np.ndarray]:
        points = [self.rng.random(self.dim) for _ in range(n)]
        self.asked += [p.tolist() for p in points]
        return points

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:
        self.told.append([float(v) for v in point])

    def state_dict(self) -> dict[str, Any]:
        return {"told": self.told}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.told = [list(p) for p in state["told"]]


def test_out_of_order_completions_are_told_in_ask_order_and_exactly_once_after_a_kill(
        user_model: nn.Module, tmp_path: Path) -> None:
    from autoprune.session import SearchSession
    from autoprune.study import StudyStore

    space = ChannelSpace.from_model(user_model, torch.randn(1, 1, 16, 16), round_to=2)
    problem = PruningProblem(space, parse_targets("flops=60%"))
    store = StudyStore.in_folder(tmp_path)
    agent = _Recorder(space.dim, seed=1)
    session = SearchSession(problem, agent=agent, store=store, trials=10)
    props = session.propose(3)
    assert len(props) == 3 and session.in_flight == 3
    session.complete(props[2], {"accuracy": 0.3})  # finishes first: recorded, not told yet
    assert [r.number for r in session.records] == [0] and agent.told == []
    assert store.get_meta("search_state")["untold"] == [0]

    # The driver dies here. The study holds trial 0; the agent's saved state was told nothing.
    resumed = _Recorder(space.dim, seed=1)
    again = SearchSession(problem, agent=resumed, store=StudyStore.in_folder(tmp_path),
                          trials=10)
    assert resumed.told == [list(props[2].point)]  # learnt what it had missed, once
    assert again.store.get_meta("search_state")["untold"] == []
    assert len(again.records) == 1

    # The first driver, had it lived: completions 0 then 1 release the tells in ask order.
    session.complete(props[0], {"accuracy": 0.1})
    assert agent.told == [list(props[0].point)]  # 2 still waits behind 1
    session.complete(props[1], {"accuracy": 0.2})
    assert agent.told == [list(p.point) for p in props]
    assert [r.objective for r in session.records] == [0.3, 0.1, 0.2]  # completion order


def test_ray_executor_run_fans_out_plain_calls(cluster: str) -> None:
    ex = RayExecutor(workers=2)
    out = dict(ex.run(lambda x: 10 // x, [1, 2, 0, 5]))
    assert out[0] == 10 and out[1] == 5 and out[3] == 2
    assert isinstance(out[2], Exception) and "ZeroDivisionError" in repr(out[2])
