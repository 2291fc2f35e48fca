"""Long phases shown and measured: progress bars for what a space reports while it builds or
fills its level store, and the time and memory a search spent where."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autoprune.search_spaces import reporting

__all__ = ["SearchCosts", "peak_rss_gb", "space_progress"]


@contextmanager
def space_progress(console: Console | None, enabled: bool = True) -> Iterator[None]:
    """A bar per phase a space reports (``search_spaces.progress``) while it holds."""
    if not enabled or console is None:
        with nullcontext():
            yield
        return
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=False)
    tasks: dict[str, int] = {}

    def listen(phase: str, done: int, total: int | None) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    with bar, reporting(listen):
        yield


def peak_rss_gb() -> float:
    """The process's peak resident memory so far (GB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024) / 1e9


@dataclass
class SearchCosts:
    """Where a search's time went (seconds): building the space, preparing it (a level store),
    setting the search up (the cost forms, the evaluator's first check), pruning the trials'
    networks and evaluating them (trials run in this process only: a Ray worker's are its
    own; the first check's evaluation counts as evaluating), and the process's peak memory
    at the end."""

    build_s: float = 0.0
    prepare_s: float = 0.0  # the space's once-per-search work (a level store)
    setup_s: float = 0.0  # the problem's cost forms and the evaluator's first check
    prune_s: float = 0.0
    evaluate_s: float = 0.0
    trials: int = 0
    started: float = field(default_factory=time.perf_counter)

    def summary(self) -> dict[str, float | int]:
        total = time.perf_counter() - self.started
        return {"build_s": round(self.build_s, 3), "prepare_s": round(self.prepare_s, 3),
                "setup_s": round(self.setup_s, 3), "prune_s": round(self.prune_s, 3),
                "evaluate_s": round(self.evaluate_s, 3), "trials_here": self.trials,
                "total_s": round(total, 3), "peak_rss_gb": round(peak_rss_gb(), 3)}
