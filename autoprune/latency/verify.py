"""Latency after a search: measure the choice for real and repair it to the measured speed.

A latency search costs candidates with a lookup table (microseconds each) but never tells
anyone a network meets the budget without timing it: HELP (Lee et al., NeurIPS 2021) reports
latency-constrained searches overshooting when they trust predictions. ``measure_and_repair``
is the one loop that does it, for a search's trials (``verify_latency``) and for
once-for-all extraction (``autoprune.ofa.search``): measure candidates in rank order; if none
meets the budget, ask for one predicted at the budget scaled by the slowdown measured
(:func:`repair_target`), measure it, and so on, a bounded number of times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from rich.console import Console
from torch import nn

from autoprune.latency.device import Device
from autoprune.latency.measure import LatencyMeasurement, measure_latency
from autoprune.problem import PruningProblem
from autoprune.study import TrialRecord

__all__ = ["MAX_CHECKS", "MAX_REPAIRS", "REPAIR_SAFETY", "LatencyCheck", "Reading",
           "check_summary", "measure_and_repair", "repair_target",
           "verify_latency"]

# Candidates measured after the search before repairing to the measured speed.
MAX_CHECKS = 8
# Repairs of the best candidate to the speed measured now, and the extra room each leaves.
MAX_REPAIRS = 5
REPAIR_SAFETY = 0.02

C = TypeVar("C")


@dataclass(frozen=True)
class Reading(Generic[C]):
    """One candidate measured: what the table predicted and what the clock said."""

    candidate: C
    predicted_ms: float
    measured: LatencyMeasurement
    repaired: bool


def repair_target(limit_ms: float, readings: Sequence[Reading[Any]]) -> tuple[float, float]:
    """``(predicted latency to aim for, slowdown)`` after ``readings`` all missed ``limit_ms``.

    The slowdown is measured / predicted of the last network, or the median over every reading
    if that is larger (one reading can be lucky: the median keeps a repair from aiming at a
    speed the machine showed only once), never below 1; the aim leaves ``REPAIR_SAFETY`` more
    room."""
    ratios = [r.measured.median_ms / r.predicted_ms for r in readings]
    slow = max(1.0, ratios[-1], float(np.median(ratios)))
    return limit_ms / (slow * (1 + REPAIR_SAFETY)), slow


def measure_and_repair(ranked: Sequence[C], *, limit_ms: float,
                       measure: Callable[[C], LatencyMeasurement],
                       predict: Callable[[C], float],
                       repair: Callable[[float, float], C | None], max_repairs: int
                       ) -> tuple[C | None, list[Reading[C]]]:
    """Measure ``ranked`` candidates in order until one meets ``limit_ms``; if none does,
    ``repair(aim_ms, slowdown)`` proposes a candidate predicted at ``aim_ms`` (``None``: no
    other candidate), which is measured in turn, at most ``max_repairs`` times. Returns the
    candidate that met the limit (``None`` if none did) and every reading."""
    readings: list[Reading[C]] = []

    def ok(c: C, repaired: bool) -> bool:
        readings.append(Reading(c, predict(c), measure(c), repaired))
        return readings[-1].measured.median_ms <= limit_ms

    for c in ranked:
        if ok(c, False):
            return c, readings
    for _ in range(max_repairs if readings else 0):
        c = repair(*repair_target(limit_ms, readings))
        if c is None:
            break
        if ok(c, True):
            return c, readings
    return None, readings


# ---------------------------------------------------------------------- a search's trials
@dataclass(frozen=True, kw_only=True)
class LatencyCheck:
    """The outcome of measuring a latency search's choice: the chosen trial (the best-ranked
    one that met the budget when measured, else the best-ranked one), every measurement."""

    chosen: TrialRecord
    met: bool
    limit_ms: float
    dense: LatencyMeasurement
    dense_predicted_ms: float
    measured: Mapping[int, LatencyMeasurement]
    predicted: Mapping[int, float]
    rank: Mapping[int, int] = field(default_factory=dict)
    repaired: tuple[int, ...] = ()

    def best_measurement(self) -> LatencyMeasurement:
        return self.measured[self.chosen.number]


def verify_latency(problem: PruningProblem, records: Sequence[TrialRecord], *,
                   model: nn.Module, example: torch.Tensor | Sequence[torch.Tensor],
                   device: Device, record: Callable[[np.ndarray], TrialRecord] | None = None,
                   console: Console | None = None, max_checks: int = MAX_CHECKS,
                   max_repairs: int = MAX_REPAIRS) -> LatencyCheck:
    """Measure the best feasible trials in rank order until one meets the latency budget.

    If none of them does (the machine runs slower now than when the table was built, or the
    table is off for these networks), the best trial is shrunk along the repair path to the
    speed measured (:func:`repair_target`) and ``record`` (prune, score and store a point as a
    new trial) turns it into a candidate, which is measured in turn; at most ``max_repairs``
    times (:func:`measure_and_repair`).
    """
    budget = next(b for b in problem.budgets if b.metric == "latency_ms")
    say = console.print if console else (lambda *a, **k: None)

    ranked, seen = [], set()
    for r in sorted((r for r in records if not r.failed and math.isfinite(r.objective)
                     and problem.feasible(r.costs)), key=lambda r: (-r.objective, r.number)):
        key = tuple(sorted(r.config.items()))
        if key not in seen:  # a configuration proposed twice is measured once
            seen.add(key)
            ranked.append(r)
    if not ranked:
        raise ValueError("no feasible trial to measure")
    # The cheapest predicted trial is a last resort, should every better one miss.
    fastest = min(ranked, key=lambda r: r.costs["latency_ms"])
    queue = ranked[:max_checks] + ([fastest] if fastest not in ranked[:max_checks] else [])
    dense = measure_latency(model, example, device=device)
    base = ranked[0]

    def measure(r: TrialRecord) -> LatencyMeasurement:
        net = problem.space.deployable(problem.space.apply(model, r.config))  # masks baked
        m = measure_latency(net, example, device=device)
        ok = m.median_ms <= budget.limit
        say(f"measured trial {r.number}: {m.median_ms:.2f} ms (predicted "
            f"{r.costs['latency_ms']:.2f} ms, budget {budget.limit:.2f} ms) "
            + ("[green]meets it[/]" if ok else "[yellow]misses it[/]"))
        return m

    def repair(want: float, slow: float) -> TrialRecord | None:
        tight = problem.with_margin("latency_ms", 1 - want / budget.limit)
        x = tight.repair(np.asarray(base.point), grow=False)
        if tuple(sorted(problem.space.decode(x).items())) in seen:
            x = tight.repair(np.asarray(base.point) * 0.97, grow=False)
        say(f"repairing trial {base.number} to the measured speed ({slow:.2f}x the "
            f"prediction): predicted {want:.2f} ms or less")
        rec = record(x)  # type: ignore[misc]
        seen.add(tuple(sorted(rec.config.items())))
        repaired.append(rec.number)
        return None if rec.failed else rec

    repaired: list[int] = []
    chosen, readings = measure_and_repair(
        queue, limit_ms=budget.limit, measure=measure,
        predict=lambda r: r.costs["latency_ms"], repair=repair,
        max_repairs=max_repairs if record is not None else 0)
    return LatencyCheck(chosen=chosen or ranked[0], met=chosen is not None,
                        limit_ms=budget.limit, dense=dense,
                        dense_predicted_ms=problem.dense_costs["latency_ms"],
                        measured={r.candidate.number: r.measured for r in readings},
                        predicted={r.candidate.number: r.predicted_ms for r in readings},
                        rank={r.number: i + 1 for i, r in enumerate(ranked)},
                        repaired=tuple(repaired))


def check_summary(check: LatencyCheck) -> dict[str, Any]:
    """The check as JSON: the chosen and the dense network, predicted and measured."""
    best = check.best_measurement()
    return {"met": check.met, "limit_ms": check.limit_ms, "device": dict(check.dense.device),
            "chosen_trial": check.chosen.number,
            "predicted_ms": check.predicted[check.chosen.number],
            "measured": {"latency_ms": best.median_ms, "p10_ms": best.p10_ms,
                         "p90_ms": best.p90_ms, "wall_median_ms": best.wall_median_ms},
            "dense": {"predicted_ms": check.dense_predicted_ms,
                      "measured": {"latency_ms": check.dense.median_ms,
                                   "p10_ms": check.dense.p10_ms, "p90_ms": check.dense.p90_ms,
                                   "wall_median_ms": check.dense.wall_median_ms}},
            "checked": [{"trial": n, "rank": check.rank.get(n), "repaired": n in check.repaired,
                         "predicted_ms": check.predicted[n], "latency_ms": m.median_ms,
                         "p10_ms": m.p10_ms, "p90_ms": m.p90_ms}
                        for n, m in check.measured.items()]}
