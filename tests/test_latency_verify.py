"""The check after a latency search (``autoprune.latency.verify``): from the dense network
measured when it starts, and after each measured miss, it estimates the machine's level and
measures only candidates whose corrected prediction meets the budget, so a table that is a few
percent too fast costs at most two misses (none when the dense network already shows it); and
its report fits an 80-column terminal.

The device is simulated: a network "measures" what the table predicts for it times a factor
(with noise where the test says so), so no assertion depends on this host's speed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from autoprune.latency import verify as latency_jobs
from autoprune.latency.device import Device, device_fingerprint
from autoprune.latency.measure import LatencyMeasurement
from autoprune.latency.table import LatencyTable
from autoprune.latency.verify import (REPAIR_SAFETY, LatencyCheck, check_summary,
                                      measure_and_repair, verify_latency)
from autoprune.problem import PruningProblem
from autoprune.report import latency_check_view
from autoprune.search_spaces import ChannelSpace
from autoprune.study import TrialRecord
from autoprune.targets import parse_targets
from test_latency import QUICK, ConvNet, _simulated_device

SLOW = 1.05  # the table predicts every network 5% too fast (the host: 4-6%)


def _reading(ms: float) -> LatencyMeasurement:
    return LatencyMeasurement(median_ms=ms, p10_ms=0.98 * ms, p90_ms=1.03 * ms,
                              wall_median_ms=1.01 * ms, device=device_fingerprint(
                                  torch.zeros(1, 1, 80, 80), threads=1, backend="torch"))


@dataclass(frozen=True)
class Cand:
    score: float
    predicted_ms: float


def _walk(ranked: list[Cand], *, limit: float, noise: float, seed: int,
          repair: Callable[[float, float], Cand | None] = lambda aim, slow: None,
          max_repairs: int = 0) -> tuple[Cand | None, list[latency_jobs.Reading[Cand]]]:
    rng = np.random.default_rng(seed)
    return measure_and_repair(
        ranked, limit_ms=limit, predict=lambda c: c.predicted_ms, repair=repair,
        max_repairs=max_repairs, score=lambda c: c.score,
        measure=lambda c: _reading(c.predicted_ms * SLOW * (1 + rng.uniform(-noise, noise))))


def _candidates(seed: int, limit: float = 10.0, n: int = 30) -> list[Cand]:
    """A search's trials, best first, every one predicted within 10% under the limit (the
    search fills the budget), so most of them miss when the device is 5% slower."""
    rng = np.random.default_rng(seed)
    preds = rng.uniform(0.9 * limit, 0.99 * limit, n)
    return [Cand(float(s), float(p)) for s, p in zip(np.linspace(1.0, 0.5, n), preds)]


def test_after_one_miss_the_offset_is_learnt_and_the_best_candidate_that_passes_it_is_measured(
) -> None:
    ranked = _candidates(0)
    would_miss = sum(SLOW * c.predicted_ms > 10.0 for c in ranked[:8])
    assert would_miss >= 3  # walking them in rank order would miss several times
    chosen, readings = _walk(ranked, limit=10.0, noise=0.0, seed=0)
    misses = [r for r in readings if r.measured.median_ms > 10.0]
    assert chosen is not None and len(misses) == 1 and len(readings) == 2
    # the offset measured on the first miss, with the safety the repair leaves
    aim = 10.0 / (readings[0].measured.median_ms / readings[0].predicted_ms
                  * (1 + REPAIR_SAFETY))
    assert chosen == next(c for c in ranked[1:] if c.predicted_ms <= aim)


@pytest.mark.parametrize("seed", range(12))
def test_a_noisy_device_costs_at_most_two_misses(seed: int) -> None:
    # Each reading is off by up to 1.5% on top of the 5% offset (what the same network showed
    # between passes on a quiet 2-core host); the learnt offset still settles within two misses.
    for repairs in (0, 5):
        made: list[Cand] = []

        def repair(aim: float, slow: float) -> Cand:
            made.append(Cand(-1.0 - len(made), aim))  # scored below every trial
            return made[-1]

        chosen, readings = _walk(_candidates(seed), limit=10.0, noise=0.015, seed=seed,
                                 repair=repair, max_repairs=repairs)
        misses = sum(r.measured.median_ms > 10.0 for r in readings)
        assert chosen is not None and misses <= 2, [
            (r.predicted_ms, r.measured.median_ms) for r in readings]


def test_without_a_candidate_that_passes_the_corrected_prediction_the_best_is_repaired() -> None:
    # every trial is predicted above what the offset allows: none is measured after the first
    # miss, and the repair (aimed at the corrected prediction) meets the budget at once
    ranked = [Cand(1.0 - i / 10, 9.6 + i / 100) for i in range(8)]
    aims: list[float] = []

    def repair(aim: float, slow: float) -> Cand:
        aims.append(aim)
        return Cand(0.95, aim)

    chosen, readings = _walk(ranked, limit=10.0, noise=0.0, seed=0, repair=repair,
                             max_repairs=5)
    assert [r.repaired for r in readings] == [False, True] and chosen == Cand(0.95, aims[0])
    assert aims == [pytest.approx(10.0 / (SLOW * (1 + REPAIR_SAFETY)))]


def test_a_repair_that_scores_better_than_the_trials_left_is_measured_first() -> None:
    ranked = [Cand(1.0, 9.9), Cand(0.6, 9.0)]  # the second passes, but scores far lower
    chosen, readings = _walk(ranked, limit=10.0, noise=0.0, seed=0,
                             repair=lambda aim, slow: Cand(0.97, aim), max_repairs=5)
    assert chosen is not None and chosen.score == 0.97 and len(readings) == 2


# ---------------------------------------------------------------- a search's trials, checked
@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, torch.Tensor, ChannelSpace, LatencyTable]:
    torch.manual_seed(0)
    net, x = ConvNet().eval(), torch.randn(1, 3, 16, 16)
    space = ChannelSpace.from_model(net, x, round_to=8)
    return net, x, space, LatencyTable.build(net, x, space=space, plan=QUICK)


@pytest.mark.parametrize("repair_score", [0.0, 1.0])
def test_a_table_five_percent_too_fast_costs_one_miss_not_one_per_trial(
        setup: tuple[nn.Module, torch.Tensor, ChannelSpace, LatencyTable], repair_score: float,
        monkeypatch: pytest.MonkeyPatch) -> None:
    net, x, space, table = setup
    target = 0.8 * table.predict({})
    problem = PruningProblem(space, parse_targets(f"latency={target!r}ms"),
                             cost_models=[table.cost_model()], margins={"latency_ms": 0.01})
    records: list[TrialRecord] = []

    def record(point: np.ndarray, objective: float = repair_score) -> TrialRecord:
        config = space.decode(point)
        records.append(TrialRecord(number=len(records), point=tuple(point), config=config,
                                   costs=problem.costs(config), metrics={}, objective=objective))
        return records[-1]

    # the search's trials: distinct networks predicted within 15% under the budget, the
    # slower the more accurate (the best one is the one that fills the budget)
    rng, found = np.random.default_rng(0), {}
    for _ in range(400):
        point = rng.random(space.dim)
        config = space.decode(point)
        ms = problem.costs(config)["latency_ms"]
        if 0.85 * target <= ms <= problem.budgets[0].search_limit:
            found.setdefault(tuple(sorted(config.items())), (point, ms))
    for point, ms in found.values():
        record(point, ms / target)  # in (0.85, 0.99]: a repair scores 0 or 1, worse or better
    trials = list(records)
    assert len(trials) >= 4
    assert sum(SLOW * r.costs["latency_ms"] > target for r in trials) >= 3  # they would miss
    # the dense network, measured first, runs as predicted; the machine slows down after it
    monkeypatch.setattr(latency_jobs, "measure_latency", _simulated_device(
        table, space, x, lambda call, ms: SLOW * ms if call else ms))
    check = verify_latency(problem, trials, model=net, example=x, device=Device(),
                           record=record)
    assert check.met and 1 <= check.misses <= 2
    assert check_summary(check)["misses"] == check.misses
    assert check.best_measurement().median_ms <= target
    if repair_score:  # the repair of the best trial scores best: it is what gets measured
        assert check.chosen.number in check.repaired
    else:  # the best trial whose corrected prediction passes
        assert check.chosen.number not in check.repaired
        aim = target / (SLOW * (1 + REPAIR_SAFETY))
        passing = [r for r in trials if r.costs["latency_ms"] <= aim * (1 + 1e-9)]
        assert check.chosen.number == max(passing, key=lambda r: r.objective).number


def test_a_lucky_reading_costs_at_most_one_more_miss(
        setup: tuple[nn.Module, torch.Tensor, ChannelSpace, LatencyTable],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine runs every network 50% slower than the table says, but the best candidate
    # happened to be timed at a moment when it barely missed, so the offset learnt from it is
    # too small and the next candidate (a trial left, or the first repair: which one depends on
    # the table built here) misses too. The repair after that aims at the slowdown measured since
    # (never below the last reading's), and meets the budget: two misses, not one per trial.
    # The check is driven directly, on candidates filled up to the budget, so the table's own
    # noise cannot make one of them fast enough to pass.
    net, x, space, table = setup
    target = 0.8 * table.predict({})
    problem = PruningProblem(space, parse_targets(f"latency={target!r}ms"),
                             cost_models=[table.cost_model()], margins={"latency_ms": 0.05})
    records: list[TrialRecord] = []

    def record(point: np.ndarray, objective: float = 0.0) -> TrialRecord:
        config = space.decode(point)
        records.append(TrialRecord(number=len(records), point=tuple(point), config=config,
                                   costs=problem.costs(config), metrics={}, objective=objective))
        return records[-1]

    rng = np.random.default_rng(0)
    for score in (0.9, 0.8, 0.7, 0.6):  # the search's trials, best first
        record(problem.repair(rng.random(space.dim)), score)
    assert all(1.5 * r.costs["latency_ms"] > target for r in records)  # none can pass at 1.5x
    # call 0 times the dense network (as predicted: the machine slows down after it), call 1
    # the best-ranked candidate (the lucky one)
    monkeypatch.setattr(latency_jobs, "measure_latency", _simulated_device(
        table, space, x, lambda call, ms: ms if call == 0 else
        (1.01 * target if call == 1 else 1.5 * ms)))
    check = verify_latency(problem, list(records), model=net, example=x, device=Device(),
                           record=record)
    assert check.met and check.misses == 2 and check.chosen.number == check.repaired[-1]
    assert check.measured[0].median_ms == pytest.approx(1.01 * target)
    assert check.predicted[check.chosen.number] * 1.5 * (1 + REPAIR_SAFETY) <= target * 1.001


# ---------------------------------------------------------------- the report, 80 columns
def _check(scale: float) -> LatencyCheck:
    def trial(n: int) -> TrialRecord:
        return TrialRecord(number=n, point=(), config={}, costs={}, metrics={}, objective=0.5)

    numbers = [17, 23, 118, 131]
    predicted = {n: scale * (9.61 + i / 10) for i, n in enumerate(numbers)}
    measured = {n: _reading(scale * (10.2 - i / 3)) for i, n in enumerate(numbers)}
    return LatencyCheck(chosen=trial(131), met=True, limit_ms=10.0 * scale,
                        dense=_reading(scale * 12.17), dense_predicted_ms=scale * 12.6,
                        measured=measured, predicted=predicted,
                        rank={17: 1, 23: 12, 118: 27}, repaired=(131,))


@pytest.mark.parametrize("scale", [1.0, 12.0, 150.0])
def test_the_latency_report_fits_80_columns_without_cutting_a_cell(scale: float) -> None:
    check = _check(scale)
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(latency_check_view(check))
    text = out.getvalue()
    assert "…" not in text and max(map(len, text.splitlines())) <= 80, text
    for n, m in check.measured.items():  # every number is there whole
        assert f"{m.p10_ms:.1f}"[:4] in text and str(n) in text
    assert "trial 131 (repair) *" in text and "rank 27" in text and "dense" in text


def test_the_trials_table_of_a_latency_search_fits_80_columns() -> None:
    from autoprune.report import trials_table

    dense = {"latency_ms": 24.05, "macs": 947.41e6, "params": 9.227e6}
    records = [TrialRecord(number=n, point=(), config={}, metrics={}, objective=0.9861,
                           costs={k: v * (0.3 + n / 1000) for k, v in dense.items()})
               for n in (7, 118, 131)]
    out = io.StringIO()
    Console(file=out, width=80, color_system=None).print(
        trials_table([*records, TrialRecord(number=200, point=(), config={}, metrics={},
                                            objective=0.9861, costs=dense)],
                     dense_costs=dense, objective="accuracy"))
    text = out.getvalue()
    assert "…" not in text and "latency" in text and "24.05 ms" in text and "100.0%" in text


def _budget(space: ChannelSpace, table: LatencyTable) -> tuple[float, PruningProblem]:
    """A latency budget of 80% of the dense prediction, and its problem (a 1% margin)."""
    target = 0.8 * table.predict({})
    return target, PruningProblem(space, parse_targets(f"latency={target!r}ms"),
                                  cost_models=[table.cost_model()],
                                  margins={"latency_ms": 0.01})


def _filling(problem: PruningProblem, space: ChannelSpace, target: float, *, seed: int,
             draws: int) -> list[TrialRecord]:
    """A search's trials that fill the budget: random configurations predicted between 85%
    of ``target`` and the search limit, each once, scored by how much of it they use."""
    rng, trials, seen = np.random.default_rng(seed), [], set()
    for _ in range(draws):
        point = rng.random(space.dim)
        config = space.decode(point)
        costs = problem.costs(config)
        key = tuple(sorted(config.items()))
        if 0.85 * target <= costs["latency_ms"] <= problem.budgets[0].search_limit and \
                key not in seen:
            seen.add(key)
            trials.append(TrialRecord(number=len(trials), point=tuple(point), config=config,
                                      costs=costs, metrics={},
                                      objective=costs["latency_ms"] / target))
    return trials


def test_a_dense_network_measured_slow_at_the_start_spares_the_miss(
        setup: tuple[nn.Module, torch.Tensor, ChannelSpace, LatencyTable],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine already runs 5% slower than the table when the check starts: the dense
    # network, measured first, shows it, and the candidates that would miss are skipped before
    # any is measured (the online level, autoprune.latency.level).
    from autoprune.latency.verify import repair_target

    net, x, space, table = setup
    target, problem = _budget(space, table)
    trials = _filling(problem, space, target, seed=1, draws=400)
    assert sum(SLOW * r.costs["latency_ms"] > target for r in trials) >= 3  # they would miss
    monkeypatch.setattr(latency_jobs, "measure_latency", _simulated_device(
        table, space, x, lambda call, ms: SLOW * ms))
    check = verify_latency(problem, trials, model=net, example=x, device=Device())
    assert check.met and check.misses == 0
    aim, slow = repair_target(target, [], [(table.predict({}), SLOW * table.predict({}))])
    assert 1.0 < slow < SLOW  # one reading moves the level most of the way, not all of it
    passing = [r for r in trials if r.costs["latency_ms"] <= aim * (1 + 1e-9)]
    assert check.chosen.number == max(passing, key=lambda r: r.objective).number


def test_when_the_dense_network_shows_every_candidate_would_miss_the_best_is_still_measured(
        setup: tuple[nn.Module, torch.Tensor, ChannelSpace, LatencyTable],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A machine twice as slow as its table when the check starts (another job began): the
    # dense network shows it, every candidate is skipped unmeasured, and with no repair to
    # try the check reports a miss -- measured on the best-ranked trial, not a trial it never
    # timed (a busy CI host raised KeyError here).
    net, x, space, table = setup
    target, problem = _budget(space, table)
    trials = _filling(problem, space, target, seed=2, draws=200)
    assert len(trials) >= 2
    monkeypatch.setattr(latency_jobs, "measure_latency", _simulated_device(
        table, space, x, lambda call, ms: 2.0 * ms))
    check = verify_latency(problem, trials, model=net, example=x, device=Device())
    best = max(trials, key=lambda r: r.objective)
    assert not check.met and check.chosen.number == best.number
    assert list(check.measured) == [best.number] and check.misses == 1
    summary = check_summary(check)
    assert summary["measured"]["latency_ms"] > target and summary["chosen_trial"] == best.number
