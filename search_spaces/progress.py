"""Progress of a space's long phases, for whoever shows it.

Building a channel space probes every unit with a forward pass, and a weight-sparse search
prunes each unit's levels the first time a trial asks for them; on a model of a billion
weights either takes minutes. The spaces call :func:`report`; the library's caller (the CLI's
progress bars, ``allocate(progress=True)``) listens with :func:`reporting`. Nothing is shown
otherwise, and this package never imports a user interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["Reporter", "report", "reporting"]

#: ``(phase, done, total)``; ``total`` is ``None`` when not known in advance.
Reporter = Callable[[str, int, "int | None"], None]

_LISTENER: ContextVar[Reporter | None] = ContextVar("space_progress", default=None)


@contextmanager
def reporting(listener: Reporter) -> Iterator[None]:
    """Within it, every :func:`report` goes to ``listener``."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def report(phase: str, done: int, total: int | None = None) -> None:
    """``done`` of ``total`` steps of ``phase`` are finished."""
    listener = _LISTENER.get()
    if listener is not None:
        listener(phase, done, total)
