"""The one Executor contract: run a search's trials until the session is finished.

An executor never sees agents or budgets: it takes candidates from a session (``propose``),
runs the trial function on each candidate's configuration and hands back its metrics or the
exception it raised (``complete``). The session (``autoprune.session.SearchSession``) is typed
here by the three members an executor uses, so this module imports nothing of the session and
the session can default to :class:`LocalExecutor` without an import cycle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

__all__ = ["Executor", "LocalExecutor", "TrialSource", "TrialWork"]

#: One trial's work: a configuration (unit -> channels) in, metrics out.
TrialWork = Callable[[Mapping[str, int]], Mapping[str, float]]


class TrialSource(Protocol):
    """What an executor drives (``SearchSession`` is the implementation)."""

    @property
    def finished(self) -> bool: ...

    def propose(self, n: int) -> Sequence[Any]: ...

    def complete(self, proposal: Any, outcome: Mapping[str, float] | BaseException) -> None: ...


class Executor(ABC):
    """Runs a search's trials: ``execute(session, work)`` until ``session.finished``. A failing
    trial never stops the others; it is completed with the exception it raised."""

    name: str = "abstract"

    def start(self) -> None:  # noqa: B027 - nothing to start by default
        """Acquire workers early (so a bad cluster address fails before a baseline trains)."""

    @abstractmethod
    def execute(self, session: TrialSource, work: TrialWork, *, batch: int = 1) -> None:
        """Run ``session`` to its end, ``work(proposal.config)`` per candidate."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release workers."""


class LocalExecutor(Executor):
    """In this process, one batch of candidates after another: no start-up cost (the
    default)."""

    name = "local"

    def execute(self, session: TrialSource, work: TrialWork, *, batch: int = 1) -> None:
        while not session.finished:
            props = session.propose(max(1, batch))
            if not props:
                break
            for prop in props:
                try:
                    out: Mapping[str, float] | BaseException = work(prop.config)
                except KeyboardInterrupt:
                    raise
                except Exception as err:  # noqa: BLE001 - a failed trial, with its reason
                    out = err
                session.complete(prop, out)
