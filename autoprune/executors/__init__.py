"""Executors run a search's trials: in this process (``local``, the default) or on Ray Tune
(``ray``; ``autoprune.executors.ray_tune``, imported only when asked for so the local path
never loads ray). ``make_executor`` is the registry the CLI's ``--executor`` reads."""

from __future__ import annotations

from collections.abc import Callable

from autoprune.executors.base import Executor, LocalExecutor, TrialSource, TrialWork
from autoprune.executors.capacity import check_request

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "TrialSource", "TrialWork",
           "make_executor"]


def _local(*, workers: int | None, address: str | None, cpus_per_trial: float,
           gpus_per_trial: float = 0.0) -> Executor:
    if workers not in (None, 1) or address is not None:
        raise ValueError("the local executor runs one trial at a time in this process; "
                         "--workers and --ray-address need --executor ray")
    if gpus_per_trial:
        raise ValueError("the local executor runs trials in this process, on its --device; "
                         "--gpus-per-trial reserves GPUs for Ray workers: use it with "
                         "--executor ray, or leave it out")
    return LocalExecutor()


def _ray(*, workers: int | None, address: str | None, cpus_per_trial: float,
         gpus_per_trial: float = 0.0) -> Executor:
    try:  # lazily: `autoprune --help` and local searches never import ray
        from autoprune.executors.ray_tune import RayExecutor
    except ImportError as err:
        raise ValueError(f"--executor ray needs Ray Tune ({err}); install it with "
                         "pip install 'ray[tune]'") from None
    return RayExecutor(workers=workers, address=address, cpus_per_trial=cpus_per_trial,
                       gpus_per_trial=gpus_per_trial)


#: Executor name -> factory taking the command line's --workers, --ray-address and
#: --cpus-per-trial (and --gpus-per-trial, passed only when not 0, so a factory registered
#: before GPUs keeps working).
EXECUTORS: dict[str, Callable[..., Executor]] = {"local": _local, "ray": _ray}


def make_executor(name: str, *, workers: int | None = None, address: str | None = None,
                  cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0) -> Executor:
    """The executor registered as ``name`` (``--executor``). ``workers=None``: one for the
    local executor; for Ray, as many trials as the cluster's CPUs (and, with
    ``gpus_per_trial``, GPUs) hold. ``gpus_per_trial``: GPUs each Ray trial reserves (0: none;
    a fraction such as 0.5 shares a GPU)."""
    try:
        factory = EXECUTORS[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; available: "
                         f"{', '.join(sorted(EXECUTORS))}") from None
    if (workers is not None and workers < 1) or cpus_per_trial <= 0:
        raise ValueError(f"--workers must be >= 1 and --cpus-per-trial > 0 (got {workers}, "
                         f"{cpus_per_trial})")
    check_request(cpus_per_trial, gpus_per_trial)
    extra = {"gpus_per_trial": gpus_per_trial} if gpus_per_trial else {}
    return factory(workers=workers, address=address, cpus_per_trial=cpus_per_trial, **extra)
