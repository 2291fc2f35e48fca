"""Conformance: every registered agent proposes in-bounds points, accepts tell, saves and
restores its state, and is deterministic under a seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autoprune.agents import (AGENTS, Agent, AgentContext, PointCosts, UnitFacts,
                              agent_descriptions, make_agent)

DIM = 6
# Chains (``a+b``) obey the same contract as the registered agents they are made of.
CHAINS = ["erk+tpe", "erk+evolution", "uniform+random"]
NAMES = sorted(AGENTS) + CHAINS


def _context() -> AgentContext:
    """Facts about DIM made-up units, for agents that allocate from them."""
    rng = np.random.default_rng(0)
    full = [16, 32, 32, 64, 64, 128][:DIM]
    weights = np.asarray(full, dtype=float)

    def costs(x: np.ndarray) -> dict[str, float]:  # a linear MACs model: 20% + 80% x widths
        return {"macs": float(weights @ (0.2 + 0.8 * np.asarray(x)))}

    return AgentContext(
        choices=tuple(tuple(range(8, f, 8)) + (f,) for f in full),
        scores=tuple(tuple(float(v) for v in rng.random(f) * (i + 1)) for i, f in enumerate(full)),
        layers=tuple(((max(1, f // 2), f, 3, 3),) for f in full),
        units=tuple(UnitFacts(kind="conv", in_channels=max(1, f // 2), out_channels=f, kernel=3,
                              stride=1 + i % 2, in_size=64 // (1 + i), params=9 * f * f // 2)
                    for i, f in enumerate(full)),
        budget=PointCosts(costs=costs, limits={"macs": 0.5 * float(weights.sum())},
                          dense={"macs": float(weights.sum())}))


def _make(name: str, seed: int) -> Agent:
    agent = make_agent(name, DIM, seed=seed)
    if agent.context_needs:
        agent.set_context(_context())
    return agent


def _result(x: np.ndarray) -> dict[str, float]:
    return {"objective": float(-np.sum((x - 0.3) ** 2)), "cost.macs": float(x.sum())}


def _drive(name: str, seed: int, rounds: int) -> list[np.ndarray]:
    agent = _make(name, seed)
    seen = []
    for _ in range(rounds):
        points = agent.ask(2)
        for x in points:
            seen.append(np.asarray(x))
            agent.tell(np.asarray(x), _result(np.asarray(x)))
    return seen


@pytest.mark.parametrize("name", NAMES)
def test_points_are_in_bounds(name: str) -> None:
    for x in _drive(name, seed=0, rounds=5):
        assert x.shape == (DIM,)
        assert np.all(x >= 0.0) and np.all(x <= 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed(name: str) -> None:
    a, b = _drive(name, 3, 4), _drive(name, 3, 4)
    assert len(a) == len(b)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_through_json(name: str) -> None:
    agent = _make(name, 1)
    for x in agent.ask(3):
        agent.tell(x, _result(x))
    state = json.loads(json.dumps(agent.state_dict()))
    resumed = _make(name, 99)
    resumed.load_state_dict(state)
    expected = agent.ask(3)
    got = resumed.ask(3)
    assert len(expected) == len(got)
    assert all(np.array_equal(x, y) for x, y in zip(expected, got))


def test_unknown_agent_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="available: .*random"):
        make_agent("nope", DIM)


@pytest.mark.parametrize("name", sorted(n for n, c in AGENTS.items() if c.context_needs))
def test_agents_that_need_context_say_so_without_it(name: str) -> None:
    with pytest.raises(RuntimeError, match="set_context"):
        make_agent(name, DIM).ask(1)


def test_every_agent_has_a_one_line_description() -> None:
    assert all(text for text in agent_descriptions().values())


def test_a_chain_hands_over_with_what_the_first_stage_learnt() -> None:
    chain = _make("erk+evolution", 0)
    first = chain.stages[0]
    asked = []
    while chain.stage == 0:
        points = chain.ask(1)
        assert points, "the chain ended before its last stage"
        asked.extend(points)
        for x in points:
            chain.tell(x, _result(x))
    assert first.done and len(asked) >= 2  # ERK bisected its knob, then stopped
    # Evolution was told every ERK candidate: its population starts with them.
    population = chain.stages[1].population
    assert [list(p) for p, _ in population[:len(asked) - 1]] == \
        [list(x) for x in asked[:len(asked) - 1]]
    more = chain.ask(3)
    assert len(more) == 3 and all(x.shape == (DIM,) for x in more)


def test_a_chain_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unknown agent 'tpee'"):
        make_agent("erk+tpee", DIM)
    with pytest.raises(ValueError, match="optimises one objective"):
        make_agent("erk+nsga2", DIM, objectives=2)
