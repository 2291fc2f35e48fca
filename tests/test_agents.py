"""Conformance: every registered agent proposes in-bounds points, accepts tell, saves and
restores its state, and is deterministic under a seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autoprune.agents import AGENTS, agent_descriptions, make_agent

DIM = 6


def _result(x: np.ndarray) -> dict[str, float]:
    return {"objective": float(-np.sum((x - 0.3) ** 2)), "cost.macs": float(x.sum())}


def _drive(name: str, seed: int, rounds: int) -> list[np.ndarray]:
    agent = make_agent(name, DIM, seed=seed)
    seen = []
    for _ in range(rounds):
        points = agent.ask(2)
        for x in points:
            seen.append(np.asarray(x))
            agent.tell(np.asarray(x), _result(np.asarray(x)))
    return seen


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_points_are_in_bounds(name: str) -> None:
    for x in _drive(name, seed=0, rounds=5):
        assert x.shape == (DIM,)
        assert np.all(x >= 0.0) and np.all(x <= 1.0)


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_deterministic_under_a_seed(name: str) -> None:
    a, b = _drive(name, 3, 4), _drive(name, 3, 4)
    assert len(a) == len(b)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_state_round_trips_through_json(name: str) -> None:
    agent = make_agent(name, DIM, seed=1)
    for x in agent.ask(3):
        agent.tell(x, _result(x))
    state = json.loads(json.dumps(agent.state_dict()))
    resumed = make_agent(name, DIM, seed=99)
    resumed.load_state_dict(state)
    expected = agent.ask(3)
    got = resumed.ask(3)
    assert len(expected) == len(got)
    assert all(np.array_equal(x, y) for x, y in zip(expected, got))


def test_unknown_agent_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="available: .*random"):
        make_agent("nope", DIM)


def test_every_agent_has_a_one_line_description() -> None:
    assert all(text for text in agent_descriptions().values())
