"""Executors run trial functions: in-process now; Ray Tune plugs in behind the same contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "make_executor"]


class Executor(ABC):
    """Runs ``fn`` on each item; yields ``(index, result or the exception it raised)`` as trials
    finish (in any order). A failing trial never stops the others."""

    name: str = "abstract"

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


EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor}


def make_executor(name: str) -> Executor:
    try:
        return EXECUTORS[name]()
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; available: {sorted(EXECUTORS)}") from None
