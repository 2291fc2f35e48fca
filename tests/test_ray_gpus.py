"""Ray trials with GPUs (``gpus_per_trial``): the capacity arithmetic as a pure function (no
Ray), the errors a user can cause, and on one small local Ray that *declares* a GPU (Ray
schedules a declared GPU like a real one and sets ``CUDA_VISIBLE_DEVICES`` in the actors that
hold it, so no GPU is needed here) the actors' reservations and slots."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from autoprune.executors import make_executor
from autoprune.executors.capacity import gpu_fits, trial_slots
from autoprune.executors.ray_actors import actor_resources


# ---------------------------------------------------------------------- capacity, without Ray
def test_workers_are_the_fewest_the_cpus_and_the_gpus_hold() -> None:
    cluster = {"CPU": 16.0, "GPU": 2.0, "memory": 1e10}
    assert trial_slots(cluster, cpus_per_trial=1) == 16  # no GPUs asked: CPUs only, as before
    assert trial_slots(cluster, cpus_per_trial=1, gpus_per_trial=1) == 2
    assert trial_slots(cluster, cpus_per_trial=1, gpus_per_trial=0.5) == 4
    assert trial_slots(cluster, cpus_per_trial=1, gpus_per_trial=0.25) == 8
    assert trial_slots(cluster, cpus_per_trial=4, gpus_per_trial=0.25) == 4  # CPUs bind
    assert trial_slots(cluster, cpus_per_trial=1, gpus_per_trial=2) == 1
    assert trial_slots(cluster, cpus_per_trial=1, gpus_per_trial=0.5, workers=3) == 3
    assert trial_slots(cluster, cpus_per_trial=1, gpus_per_trial=0.5, workers=9) == 4
    assert trial_slots({"CPU": 2.0}, cpus_per_trial=1, workers=8) == 2
    # a fraction is packed GPU by GPU, as Ray packs it: 2 GPUs hold 4 trials of 0.4, not 5
    assert gpu_fits(2, 0.4) == 4 and gpu_fits(1, 0.1) == 10 and gpu_fits(3, 1) == 3
    assert trial_slots({"CPU": 64.0, "GPU": 2.0}, cpus_per_trial=1, gpus_per_trial=0.4) == 4


def test_asking_for_gpus_a_cluster_lacks_is_one_clear_error() -> None:
    for cluster in ({"CPU": 8.0}, {"CPU": 8.0, "GPU": 0.0}):
        with pytest.raises(ValueError) as err:
            trial_slots(cluster, cpus_per_trial=1, gpus_per_trial=0.5)
        text = str(err.value)
        assert "--gpus-per-trial 0.5 asks for GPUs, but the Ray cluster has none" in text
        assert "Fix:" in text and "leave --gpus-per-trial out" in text
    with pytest.raises(ValueError, match=r"has 1 GPUs; a trial asks for 2 \(--gpus-per-trial\)"):
        trial_slots({"CPU": 8.0, "GPU": 1.0}, cpus_per_trial=1, gpus_per_trial=2)
    with pytest.raises(ValueError, match=r"has 2 CPUs; a trial asks for 4"):
        trial_slots({"CPU": 2.0, "GPU": 1.0}, cpus_per_trial=4, gpus_per_trial=1)
    with pytest.raises(ValueError, match="must be 0 or more"):
        trial_slots({"CPU": 2.0}, cpus_per_trial=1, gpus_per_trial=-1)
    with pytest.raises(ValueError, match="whole number of GPUs"):
        trial_slots({"CPU": 2.0, "GPU": 4.0}, cpus_per_trial=1, gpus_per_trial=1.5)


def test_actors_reserve_gpus_only_when_asked() -> None:
    assert actor_resources(2) == {"num_cpus": 2.0}
    assert actor_resources(1, 0.0) == {"num_cpus": 1.0}
    assert actor_resources(1, 0.25) == {"num_cpus": 1.0, "num_gpus": 0.25}


def test_make_executor_takes_gpus_per_trial() -> None:
    make_executor("local")  # the signature a caller used before GPUs still works
    make_executor("local", gpus_per_trial=0.0)
    with pytest.raises(ValueError, match="--gpus-per-trial reserves GPUs for Ray workers"):
        make_executor("local", gpus_per_trial=1)
    with pytest.raises(ValueError, match="must be 0 or more"):
        make_executor("ray", gpus_per_trial=-0.5)
    pytest.importorskip("ray")
    ex = make_executor("ray", workers=2, gpus_per_trial=0.5)
    assert (ex.gpus_per_trial, ex.cpus_per_trial, ex.workers) == (0.5, 1.0, 2)
    assert make_executor("ray").gpus_per_trial == 0.0


# ---------------------------------------------------------------------- one small local Ray
@pytest.fixture(scope="module")
def ray_with_a_gpu() -> Iterator[Any]:
    """One local Ray with 2 CPUs and one declared GPU (none is used)."""
    ray = pytest.importorskip("ray")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tmp = tempfile.mkdtemp(prefix="ap-rg-")  # short: Ray's socket paths have a length limit
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             _temp_dir=tmp,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}})
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


class _Proposal:
    def __init__(self, i: int) -> None:
        self.id = i
        self.config = {"i": i}


class _Session:
    """The three members an executor uses: ``n`` trials, outcomes kept."""

    def __init__(self, n: int) -> None:
        self.todo = [_Proposal(i) for i in range(n)]
        self.outcomes: dict[int, Mapping[str, float] | BaseException] = {}
        self.n = n

    @property
    def finished(self) -> bool:
        return len(self.outcomes) == self.n

    def propose(self, n: int) -> list[_Proposal]:
        out, self.todo = self.todo[:n], self.todo[n:]
        return out

    def complete(self, proposal: _Proposal, outcome: Any) -> None:
        self.outcomes[proposal.id] = outcome


def _where(config: Mapping[str, int]) -> dict[str, float]:
    """A trial that reports the GPU Ray gave its actor (-1: none)."""
    import ray

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return {"visible": float(visible) if visible.isdigit() else -1.0,
            "gpu_ids": float(len(ray.get_gpu_ids())), "pid": float(os.getpid())}


def test_trials_hold_their_share_of_the_gpu(ray_with_a_gpu: Any) -> None:
    from autoprune.executors.ray_tune import RayExecutor

    ex = RayExecutor(gpus_per_trial=0.5)
    assert ex.slots() == 2  # two halves of the one GPU, two CPUs
    assert RayExecutor(gpus_per_trial=1).slots() == 1  # the GPU binds: one trial at a time
    assert RayExecutor(gpus_per_trial=0.25).slots() == 2  # the CPUs bind
    assert RayExecutor().slots() == 2  # no GPUs asked: as before
    session = _Session(4)
    ex.execute(session, _where)
    outcomes = list(session.outcomes.values())
    assert len(outcomes) == 4 and all(isinstance(o, dict) for o in outcomes), outcomes
    # inside the actor the GPU it holds is the only one visible: torch's cuda:0
    assert {o["visible"] for o in outcomes} == {0.0}
    assert {o["gpu_ids"] for o in outcomes} == {1.0}
    # the plain fan-out reserves the same share
    results = dict(RayExecutor(gpus_per_trial=0.5).run(_where, [{}, {}]))
    assert {r["visible"] for r in results.values()} == {0.0}


def test_a_gpu_request_the_cluster_cannot_meet_names_the_fix(ray_with_a_gpu: Any) -> None:
    from autoprune.executors.ray_tune import RayExecutor

    with pytest.raises(ValueError, match=r"has 1 GPUs; a trial asks for 2"):
        RayExecutor(gpus_per_trial=2).execute(_Session(1), _where)
