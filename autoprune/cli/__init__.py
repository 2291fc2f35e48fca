"""``autoprune`` on the command line: each command builds settings and makes one API call
(``main``: search, pick, train, profile, latency, models, agents; ``ofa``: the once-for-all
group). Heavy imports happen inside the commands, so ``--help`` is fast."""

from __future__ import annotations

from autoprune.cli.main import app, main

__all__ = ["app", "main"]
