"""Latency after a search: measure the choice for real and repair it to the measured speed.

A latency search costs candidates with a lookup table (microseconds each) but never tells
anyone a network meets the budget without timing it: HELP (Lee et al., NeurIPS 2021) reports
latency-constrained searches overshooting when they trust predictions. ``measure_and_repair``
is the one loop that does it, for a search's trials (``verify_latency``) and for
once-for-all extraction (``autoprune.ofa.search``): measure the best candidate; after a miss,
learn the table's offset from the networks measured (:func:`repair_target`), skip every
candidate whose corrected prediction misses, and measure the best one left or one predicted
at the corrected aim (a repair), a bounded number of times.
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
from autoprune.latency.level import OnlineLevel
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


def repair_target(limit_ms: float, readings: Sequence[Reading[Any]],
                  before: Sequence[tuple[float, float]] = ()) -> tuple[float, float]:
    """``(predicted latency to aim for, slowdown)`` from the networks measured so far: the
    candidates' ``readings`` and the ``(predicted_ms, measured_ms)`` taken ``before`` them (the
    dense network, measured when the check starts).

    The slowdown is the machine's level estimated from all of them
    (:class:`~autoprune.latency.level.OnlineLevel`), or the last candidate's measured /
    predicted if that is larger (the speed may have just changed), never below 1 (a network
    predicted within the budget stays a candidate); the aim leaves ``REPAIR_SAFETY`` more
    room."""
    level = OnlineLevel([*before, *((r.predicted_ms, r.measured.median_ms) for r in readings)])
    last = readings[-1].measured.median_ms / readings[-1].predicted_ms if readings else 1.0
    slow = max(1.0, last, level.factor())
    return limit_ms / (slow * (1 + REPAIR_SAFETY)), slow


def measure_and_repair(ranked: Sequence[C], *, limit_ms: float,
                       measure: Callable[[C], LatencyMeasurement],
                       predict: Callable[[C], float],
                       repair: Callable[[float, float], C | None], max_repairs: int,
                       score: Callable[[C], float] | None = None,
                       max_checks: int | None = None,
                       before: Sequence[tuple[float, float]] = ()
                       ) -> tuple[C | None, list[Reading[C]]]:
    """Measure candidates until one meets ``limit_ms``; return it (``None`` if none did) and
    every reading.

    ``ranked[0]`` is measured first. After a miss the table's offset is known: the slowdown
    of the networks measured so far (:func:`repair_target`). From then on a candidate is
    measured only if its prediction, corrected by that offset, meets the limit with
    ``REPAIR_SAFETY`` to spare; the others are skipped unmeasured, so a table that predicts
    every network 5% too fast costs one miss, not one per candidate. The next candidate is
    the best-ranked one that passes (at most ``max_checks`` of ``ranked`` are measured) or
    ``repair(aim_ms, slowdown)``: a candidate predicted at the corrected aim (``None``: there
    is no other), at most ``max_repairs`` of them. A repair is proposed when no ranked
    candidate passes or, given ``score`` (higher is better), after every miss; then the
    better scored of the two is measured, and the other stays a candidate."""
    readings: list[Reading[C]] = []
    pending: list[tuple[C, bool]] = [(c, False) for c in ranked]  # (candidate, repaired)
    checks = repairs = 0
    while True:
        if readings or before:  # every prediction corrected by the level measured so far
            aim, slow = repair_target(limit_ms, readings, before)
            pending = [(c, fixed) for c, fixed in pending if predict(c) <= aim]
            if repairs < max_repairs and ((readings and score is not None) or not pending):
                repairs += 1
                c = repair(aim, slow)
                if c is None:
                    repairs = max_repairs
                else:
                    at = len(pending) if score is None else next(
                        (i for i, (p, _) in enumerate(pending) if score(p) < score(c)),
                        len(pending))
                    pending.insert(at, (c, True))
        if not pending:
            return None, readings
        c, fixed = pending.pop(0)
        readings.append(Reading(c, predict(c), measure(c), fixed))
        if readings[-1].measured.median_ms <= limit_ms:
            return c, readings
        checks += not fixed
        if max_checks is not None and checks >= max_checks:
            pending = [(p, f) for p, f in pending if f]


# ---------------------------------------------------------------------- a search's trials
@dataclass(frozen=True, kw_only=True)
class LatencyCheck:
    """The outcome of measuring a latency search's choice: the chosen trial (the best-ranked
    one that met the budget when measured, else the best-ranked one measured), every
    measurement."""

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

    @property
    def misses(self) -> int:
        """How many candidates were measured over the budget."""
        return sum(m.median_ms > self.limit_ms for m in self.measured.values())


def verify_latency(problem: PruningProblem, records: Sequence[TrialRecord], *,
                   model: nn.Module, example: torch.Tensor | Sequence[torch.Tensor],
                   device: Device, record: Callable[[np.ndarray], TrialRecord] | None = None,
                   console: Console | None = None, max_checks: int = MAX_CHECKS,
                   max_repairs: int = MAX_REPAIRS) -> LatencyCheck:
    """Measure the best feasible trial; if it misses the latency budget (the machine runs
    slower now than when the table was built, or the table is off for these networks), go on
    with :func:`measure_and_repair`: the other trials are corrected by the offset measured and
    skipped where the corrected prediction misses, and the best trial is shrunk along the
    repair path to the corrected aim, ``record`` (prune, score and store a point as a new
    trial) turning it into a candidate; the better scored of the best trial left and the
    repair is measured next. At most ``max_checks`` of the search's trials and ``max_repairs``
    repairs are measured.
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
        ranked, limit_ms=budget.limit, measure=measure,
        predict=lambda r: r.costs["latency_ms"], repair=repair,
        max_repairs=max_repairs if record is not None else 0,
        score=lambda r: r.objective, max_checks=max_checks,
        before=[(problem.dense_costs["latency_ms"], dense.median_ms)])
    rank = {r.number: i + 1 for i, r in enumerate(ranked)}
    if chosen is None:
        if not readings:  # every candidate was skipped on the level the dense network showed:
            # the best one is measured anyway, so that the miss is reported as measured
            readings.append(Reading(base, base.costs["latency_ms"], measure(base), False))
        chosen = min((r.candidate for r in readings),
                     key=lambda c: rank.get(c.number, len(rank) + 1))  # best-ranked measured
        met = False
    else:
        met = True
    return LatencyCheck(chosen=chosen, met=met,
                        limit_ms=budget.limit, dense=dense,
                        dense_predicted_ms=problem.dense_costs["latency_ms"],
                        measured={r.candidate.number: r.measured for r in readings},
                        predicted={r.candidate.number: r.predicted_ms for r in readings},
                        rank=rank, repaired=tuple(repaired))


def check_summary(check: LatencyCheck) -> dict[str, Any]:
    """The check as JSON: the chosen and the dense network, predicted and measured."""
    best = check.best_measurement()
    return {"met": check.met, "limit_ms": check.limit_ms, "device": dict(check.dense.device),
            "chosen_trial": check.chosen.number, "misses": check.misses,
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
