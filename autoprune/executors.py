"""Executors run trials: in this process (``local``, the default) or on Ray Tune (``ray``,
``autoprune.ray_executor``, imported only when asked for so the local path never loads ray)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoprune.loop import PruneAndEvaluate, SearchSession

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "make_executor"]


class Executor(ABC):
    """Runs ``fn`` on each item; yields ``(index, result or the exception it raised)`` as trials
    finish (in any order). A failing trial never stops the others.

    ``execute`` drives a whole search: by default batch after batch through ``run`` (propose
    ``batch`` candidates, run them all, complete them); an executor that can keep candidates
    in flight (Ray) overrides it and proposes a new one whenever one finishes."""

    name: str = "abstract"

    def start(self) -> None:  # noqa: B027 - nothing to start by default
        """Acquire workers early (so a bad cluster address fails before a baseline trains)."""

    def execute(self, session: SearchSession, work: PruneAndEvaluate, *, batch: int = 1) -> None:
        """Run ``session`` to its end, ``work(config)`` per candidate."""
        while not session.finished:
            props = session.propose(max(1, batch))
            if not props:
                break
            for j, out in self.run(work, [p.config for p in props]):
                session.complete(props[j], out)

    @abstractmethod
    def run(self, fn: Callable[[Any], Any], items: Sequence[Any]
            ) -> Iterator[tuple[int, Any | BaseException]]:
        """Evaluate ``fn(item)`` for every item."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release workers."""


class LocalExecutor(Executor):
    """In this process, one trial after another: no start-up cost (the default)."""

    name = "local"

    def run(self, fn: Callable[[Any], Any], items: Sequence[Any]
            ) -> Iterator[tuple[int, Any | BaseException]]:
        for i, item in enumerate(items):
            try:
                yield i, fn(item)
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001 - recorded as a failed trial with its reason
                yield i, err


def _local(*, workers: int | None, address: str | None, cpus_per_trial: float) -> Executor:
    if workers not in (None, 1) or address is not None:
        raise ValueError("the local executor runs one trial at a time in this process; "
                         "--workers and --ray-address need --executor ray")
    return LocalExecutor()


def _ray(*, workers: int | None, address: str | None, cpus_per_trial: float) -> Executor:
    try:  # lazily: `autoprune --help` and local searches never import ray
        from autoprune.ray_executor import RayExecutor
    except ImportError as err:
        raise ValueError(f"--executor ray needs Ray Tune ({err}); install it with "
                         "pip install 'ray[tune]'") from None
    return RayExecutor(workers=workers, address=address, cpus_per_trial=cpus_per_trial)


#: Executor name -> factory taking the command line's --workers, --ray-address and
#: --cpus-per-trial.
EXECUTORS: dict[str, Callable[..., Executor]] = {"local": _local, "ray": _ray}


def make_executor(name: str, *, workers: int | None = None, address: str | None = None,
                  cpus_per_trial: float = 1.0) -> Executor:
    """The executor registered as ``name`` (``--executor``). ``workers=None``: one for the
    local executor; for Ray, as many trials as the cluster's CPUs hold."""
    try:
        factory = EXECUTORS[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; available: "
                         f"{', '.join(sorted(EXECUTORS))}") from None
    if (workers is not None and workers < 1) or cpus_per_trial <= 0:
        raise ValueError(f"--workers must be >= 1 and --cpus-per-trial > 0 (got {workers}, "
                         f"{cpus_per_trial})")
    return factory(workers=workers, address=address, cpus_per_trial=cpus_per_trial)
