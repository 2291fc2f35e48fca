"""Heuristic allocation agents: their scores, their allocations, and their search for the
member of their family that fits the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import autoprune
from autoprune.agents import AgentContext, make_agent
from autoprune.agents.allocation import threshold_fractions
from autoprune.agents.erk import erk_factors
from autoprune.agents.global_magnitude import global_scores
from autoprune.agents.lamp import lamp_scores
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_agent_search import DIM
from autoprune.testing.landscape import BudgetLandscape


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
