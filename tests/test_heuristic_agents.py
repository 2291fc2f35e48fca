"""Heuristic allocation agents: their scores, their allocations, and their search for the
member of their family that fits the budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import autoprune
from autoprune.agents import AgentContext, is_probe, make_agent
from autoprune.agents.allocation import threshold_fractions
from autoprune.agents.erk import erk_factors
from autoprune.agents.global_magnitude import global_scores
from autoprune.agents.lamp import lamp_scores
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_agent_search import DIM
from autoprune.testing.landscape import BudgetLandscape, run_agent


def test_lamp_scores_follow_the_paper() -> None:
    # w^2 = 1, 4, 9: scores 1/(1+4+9), 4/(4+9), 9/9 (Lee et al., eq. 2), in the input order.
    got = lamp_scores(np.array([2.0, 3.0, 1.0]))
    assert np.allclose(got, [4 / 13, 1.0, 1 / 14])
    # Scale-free: a layer's LAMP scores do not change when its weights are scaled.
    assert np.allclose(lamp_scores(np.array([2.0, 3.0, 1.0]) * 50), got)


def test_one_global_threshold_removes_the_weak_channels_first() -> None:
    dispersed = np.concatenate([np.full(8, 0.01), np.full(8, 2.0)])  # half its channels ~dead
    even = np.full(16, 5.0)
    for scores in (global_scores((tuple(dispersed), tuple(even))),
                   [lamp_scores(dispersed), lamp_scores(even)]):
        # A quarter of all channels go: exactly the 8 dead ones.
        assert np.array_equal(threshold_fractions(scores, 0.75), [0.5, 1.0])
    assert np.array_equal(threshold_fractions([dispersed, even], 1.0), [1.0, 1.0])


def test_erk_keeps_small_layers_denser() -> None:
    f = erk_factors((((3, 16, 3, 3),), ((64, 64, 3, 3),), ((16, 64, 1, 1), (64, 64, 3, 3))))
    assert f[0] > f[2] > f[1]


def _continuous_context(dim: int) -> AgentContext:
    rng = np.random.default_rng(3)
    return AgentContext(
        choices=tuple(tuple(range(1, 257)) for _ in range(dim)),  # ~continuous coordinates
        scores=tuple(tuple(rng.random(64) * (1 + i)) for i in range(dim)),
        layers=tuple(((16 * (1 + i % 3), 32 * (1 + i % 2), 3, 3),) for i in range(dim)))


@pytest.mark.parametrize("name", ["global", "lamp", "erk"])
def test_knob_agents_find_the_member_of_their_family_that_fits_the_budget(name: str) -> None:
    land = BudgetLandscape(DIM, 0)
    agent = make_agent(name, DIM)
    agent.set_context(_continuous_context(DIM))
    moves = []
    for _ in range(50):
        points = agent.ask(4)
        if not points:
            break
        assert len(points) == 1  # a bisection proposes one point at a time
        r = land.repair(points[0])
        moves.append(float(np.abs(r - points[0]).max()))
        agent.tell(r, {"objective": land.value(r)})
    assert 3 <= len(moves) <= agent.max_steps
    # The last members meet the budget nearly as they are: the repair hardly moves them.
    assert max(moves[-3:]) < 0.01 < max(moves[:3])


def _landscape_context(land: BudgetLandscape, trials: int | None) -> AgentContext:
    return AgentContext(choices=tuple(tuple(range(1, 65)) for _ in range(land.dim)),
                        budget=land.point_costs(), trials=trials)


def test_sensitivity_measures_curves_then_allocates_within_the_budget() -> None:
    land = BudgetLandscape(DIM, 0)
    agent = make_agent("sensitivity", DIM)
    agent.set_context(_landscape_context(land, trials=60))
    asked = []
    while len(asked) < 60 and (points := agent.ask(1)):
        x = points[0]
        probing = is_probe(x)
        r = np.asarray(x, dtype=float) if probing else land.repair(x)
        asked.append((probing, r, land.value(r)))
        agent.tell(r, {"objective": land.value(r), **({"probe": 1.0} if probing else {})})
    uniform = asked[0][2]
    assert not asked[0][0]  # the uniform allocation first: a network within the budget at once
    probes = [r for probing, r, _ in asked if probing]
    # The dense point, then every unit thinned alone: one coordinate below 1 in each probe.
    assert np.all(probes[0] == 1.0)
    assert all(np.sum(p < 1.0) == 1 for p in probes[1:])
    assert {int(np.flatnonzero(p < 1.0)[0]) for p in probes[1:]} == set(range(DIM))
    assert len(probes) <= 0.7 * 60  # the curves take at most their share of the trials
    after = [(r, v) for probing, r, v in asked[len(probes) + 1:]]
    assert len(asked) == 60  # alone it goes on refining until the trials run out
    assert all(land.feasible(r) for r, _ in after)
    # The knapsack over the measured curves beats the uniform allocation at once, and the
    # refinement closes most of what remains to the optimum.
    assert after[0][1] > uniform
    assert land.optimum - max(v for _, v in after) < 0.25 * (land.optimum - uniform)


def test_sensitivity_in_a_chain_hands_over_after_its_allocations() -> None:
    land = BudgetLandscape(DIM, 1)
    agent = make_agent("sensitivity+tpe", DIM, seed=0)
    agent.set_context(_landscape_context(land, trials=80))
    regrets = run_agent(agent, land, evaluations=80)
    assert agent.stage == 1  # TPE took over after the probes and the allocations
    sens = agent.stages[0]
    assert sens.asked <= 1 + len(sens.plan) + 2
    assert regrets[-1] < regrets[sens.asked - 1] or regrets[-1] < 0.05


def test_sensitivity_resumes_from_its_saved_state() -> None:
    land = BudgetLandscape(DIM, 2)
    first = make_agent("sensitivity", DIM)
    first.set_context(_landscape_context(land, trials=40))
    run_agent(first, land, evaluations=25)
    again = make_agent("sensitivity", DIM)
    again.set_context(_landscape_context(land, trials=40))
    again.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert again.measured == first.measured
    assert np.allclose(again.ask(1)[0], first.ask(1)[0])


def _width(model: nn.Module) -> dict[str, float]:
    n = sum(p.numel() for p in model.parameters())
    return {"accuracy": n / (n + 5000.0)}


@pytest.mark.parametrize("name", ["global", "lamp", "erk"])
def test_heuristics_run_in_the_search_loop_and_stop_by_themselves(user_model: nn.Module,
                                                                   name: str) -> None:
    x = torch.randn(1, 1, 16, 16)
    alloc = autoprune.allocate(user_model, example_inputs=x, target="flops=50%",
                               evaluate=_width, agent=name, trials=40, round_to=4)
    assert 1 <= len(alloc.trials) < 40
    for r in alloc.trials:
        assert r.costs["macs"] <= 0.5 * alloc.dense_costs["macs"] + 1e-6


def test_a_sensitivity_search_records_its_probes_and_picks_within_the_budget(
        user_model: nn.Module) -> None:
    x = torch.randn(1, 1, 16, 16)
    alloc = autoprune.allocate(user_model, example_inputs=x, target="flops=50%",
                               evaluate=_width, agent="sensitivity", trials=30, round_to=4)
    probes = [r for r in alloc.trials if r.extra.get("probe")]
    # The uniform allocation, then the dense point and each unit thinned alone (scored as they
    # are, outside the budget), then allocations within it.
    assert not alloc.trials[0].extra.get("probe")
    assert probes[0].costs["macs"] == alloc.dense_costs["macs"]
    assert {sum(p < 1.0 for p in r.point) for r in probes[1:]} == {1}
    assert len(alloc.trials) > len(probes) + 1
    for r in alloc.trials:
        if not r.extra.get("probe"):
            assert r.costs["macs"] <= 0.5 * alloc.dense_costs["macs"] + 1e-6
    assert alloc.costs["macs"] <= 0.5 * alloc.dense_costs["macs"] + 1e-6
    assert alloc.chosen.objective == max(r.objective for r in alloc.trials
                                       if r.costs["macs"] <= 0.5 * alloc.dense_costs["macs"])
