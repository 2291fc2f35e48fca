"""The conformance suites (see ``autoprune.testing``)."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.agents import Agent
from autoprune.costs import CostModel
from autoprune.executors.base import Executor
from autoprune.problem import build_problem
from autoprune.search_spaces import SearchSpace
from autoprune.session import SearchSession
from autoprune.study import StudyStore
from autoprune.targets import parse_targets

__all__ = ["check_agent", "check_cost_model", "check_executor", "check_space"]


def check_agent(make: Callable[[int], Agent], *, dim: int = 4, rounds: int = 6) -> None:
    """``make(dim)`` builds a fresh agent. Its points lie in the cube, it survives failed
    results, its state is JSON and a restored copy proposes what the original would."""
    agent = make(dim)
    rng = np.random.default_rng(0)
    for i in range(rounds):
        points = agent.ask(2)
        if not points:
            break
        for p in points:
            p = np.asarray(p, dtype=float)
            assert p.shape == (dim,), f"{agent.name}: a point of shape {p.shape}, not ({dim},)"
            assert np.all((p >= 0) & (p <= 1)), f"{agent.name}: a point outside [0, 1]^{dim}"
            value = float("nan") if i == 1 else float(-np.sum((p - 0.5) ** 2) + 0.01 * rng.random())
            agent.tell(p, {"objective": value})
    state = agent.state_dict()
    json.dumps(state)  # must be JSON, never a pickle
    twin = make(dim)
    if agent.context is not None:
        twin.set_context(agent.context)
    twin.load_state_dict(json.loads(json.dumps(state)))
    a, b = agent.ask(1), twin.ask(1)
    assert len(a) == len(b), f"{agent.name}: a restored agent proposes a different number"
    for p, q in zip(a, b):
        assert np.allclose(p, q), f"{agent.name}: a restored agent proposes another point"


def check_space(space: SearchSpace, model: nn.Module, example: torch.Tensor, *,
                seed: int = 0) -> None:
    """Decoding is monotone and inverted by encoding, the dense configuration keeps the model's
    outputs, and applied configurations run forward without touching ``model``."""
    rng = np.random.default_rng(seed)
    before = copy.deepcopy(model.state_dict())
    dense = space.dense_config()
    assert dict(space.decode(np.ones(space.dim))) == dict(dense), "decode(1) is not dense"
    for _ in range(4):
        x = rng.random(space.dim)
        config = space.decode(x)
        assert dict(space.decode(space.encode(config))) == dict(config), "encode/decode differ"
        hi = space.decode(np.minimum(1.0, x + 0.2))
        assert all(hi[k] >= v for k, v in config.items()), "decode is not monotone"
        pruned = space.apply(model, config).eval()
        with torch.no_grad():
            out = pruned(example)
        assert torch.all(torch.isfinite(out if isinstance(out, torch.Tensor) else out[0]))
        rows = space.layer_table(config)
        assert rows, "an empty layer table"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), "apply changed the model it was given"


def check_cost_model(cost: CostModel, space: SearchSpace, *, seed: int = 0) -> None:
    """Estimates are finite, positive and monotone in the kept widths (what repair needs)."""
    rng = np.random.default_rng(seed)
    dense = cost.estimate(space.layer_table(space.dense_config()))
    low = cost.estimate(space.layer_table(space.min_config()))
    assert math.isfinite(dense) and dense > 0, f"{cost.name}: dense cost {dense}"
    assert low <= dense * (1 + 1e-9), f"{cost.name}: the thinnest network costs more than dense"
    for _ in range(4):
        x = rng.random(space.dim)
        a = cost.estimate(space.layer_table(space.decode(x)))
        b = cost.estimate(space.layer_table(space.decode(np.minimum(1.0, x + 0.2))))
        assert a <= b * (1 + 1e-9), f"{cost.name}: keeping more channels costs less"


def check_executor(executor: Executor, space: SearchSpace, make_agent: Callable[[int], Agent],
                   *, trials: int = 4) -> None:
    """The executor runs a session to its end: every trial recorded once, failures recorded
    with their reason, never stopping the others."""
    problem = build_problem(space, parse_targets("flops=80%"))
    store = StudyStore.in_memory()
    session = SearchSession(problem, agent=make_agent(space.dim), store=store, trials=trials)
    calls: list[Mapping[str, int]] = []

    def work(config: Mapping[str, int]) -> dict[str, Any]:
        calls.append(config)
        if len(calls) == 2:
            raise RuntimeError("a failing trial")
        return {"accuracy": sum(config.values()) / 1e3}

    executor.execute(session, work)
    assert session.finished, f"{executor.name}: the session did not finish"
    assert len(session.records) == trials, f"{executor.name}: {len(session.records)} trials"
    failed = [r for r in session.records if r.failed]
    assert len(failed) == 1 and "a failing trial" in failed[0].reason, \
        f"{executor.name}: a failed trial was not recorded with its reason"
