"""AMC's layer-by-layer pruning environment (He et al., "AMC: AutoML for Model Compression and
Acceleration on Mobile Devices", ECCV 2018), as a gymnasium environment over search units.

One step per unit, in the space's order. The observation is the unit's embedding, every
feature in [0, 1]: index, kind, input and output channels, stride, kernel, input positions,
weights, its own share of the budgeted cost, the cost already removed, the cost of the later
units, the previous action and the largest coordinate the budget still allows (AMC sec. 3.1
lists all but the last; min-max normalised across units as AMC's release does). The action is a
number in [-1, 1]; ``(a + 1) / 2`` is the unit's coordinate, i.e. its kept channels from the
unit's lower bound (``min_ratio``, AMC's 0.2) up to all of them.

**Action bound** (AMC sec. 3.3, "we limit the action space"): before unit ``t`` acts, every
later unit is assumed cut to its lower bound; the largest coordinate unit ``t`` may keep is the
largest for which that network still meets every budget, and the action is ``min(action,
bound)``. AMC solves for it in closed form for FLOPs; here costs come from any cost model
(FLOPs, params, a latency lookup table), so the bound is found by bisection over the unit's
allowed channel counts: costs are monotone in every coordinate, and the all-lower-bound network
meets the budget (budgets below it are refused before any search). Every episode therefore
ends on a configuration that meets every budget.

The reward comes at the last step. Inside a search the evaluation happens outside the
environment (the search loop prunes and scores the proposed point, possibly in parallel), so
``evaluate`` is optional: without it the last reward is 0 and the agent attaches the real one
when the result is told (``agents/rl.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from .base import PointCosts, UnitFacts

__all__ = ["FEATURES", "PruningEnv"]

#: Names of the observation's features, in order.
FEATURES = ("index", "kind", "in_channels", "out_channels", "stride", "kernel", "in_size",
            "params", "cost", "removed", "later", "previous", "bound")
_KIND = {"conv": 0.0, "depthwise": 0.5, "linear": 1.0}


def _min_max(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


class PruningEnv(gymnasium.Env):
    """Walks the units one by one; each step chooses one unit's kept channels (see module)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, *, choices: Sequence[Sequence[int]], units: Sequence[UnitFacts],
                 budget: PointCosts,
                 evaluate: Callable[[np.ndarray], float] | None = None) -> None:
        super().__init__()
        self.choices = tuple(tuple(int(c) for c in ch) for ch in choices)
        self.dim = len(self.choices)
        if self.dim < 1 or len(units) != self.dim:
            raise ValueError(f"need one UnitFacts per unit: {len(units)} facts, {self.dim} units")
        self.budget = budget
        self.evaluate = evaluate
        self.levels = np.array([len(c) - 1 for c in self.choices], dtype=int)
        # The cost the features speak of: the first budgeted one (AMC: FLOPs), else MACs.
        self.metric = next(iter(budget.limits), "macs" if "macs" in budget.dense else
                           next(iter(budget.dense)))
        self.dense_cost = float(budget.dense[self.metric])
        # What each unit alone can remove: dense minus that unit at its lower bound.
        ones = np.ones(self.dim)
        own = np.empty(self.dim)
        for i in range(self.dim):
            x = ones.copy()
            x[i] = 0.0
            own[i] = max(0.0, self.dense_cost - self._cost(x))
        total = float(own.sum()) or 1.0
        later = np.array([own[i + 1:].sum() / total for i in range(self.dim)])
        facts = np.array([[i, _KIND.get(u.kind, 0.0), u.in_channels, u.out_channels, u.stride,
                           u.kernel, u.in_size, u.params, own[i]]
                          for i, u in enumerate(units)], dtype=float)
        static = np.column_stack([_min_max(facts[:, j]) for j in range(facts.shape[1])])
        static[:, 1] = facts[:, 1]  # the kind is already in [0, 1]
        self.static = np.column_stack([static, later])
        self.observation_space = spaces.Box(0.0, 1.0, shape=(len(FEATURES),), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.bounded = True
        self.t = 0
        self.x = np.ones(self.dim)
        self.bound = 0

    # ------------------------------------------------------------------ costs and the bound
    def _cost(self, x: np.ndarray) -> float:
        return float(self.budget.costs(x)[self.metric])

    def _bound(self, t: int) -> int:
        """The largest level of unit ``t`` that still lets every budget be met with the chosen
        units before it and every later unit at its lower bound (AMC's action bound); -1 when
        even its lowest level cannot (only for replayed points that broke the budget)."""
        if not self.budget.limits:
            return int(self.levels[t])
        x = np.zeros(self.dim)
        x[:t] = self.x[:t]

        def ok(level: int) -> bool:
            x[t] = level / self.levels[t]
            return self.budget.feasible(x)

        if ok(int(self.levels[t])):
            return int(self.levels[t])
        if not ok(0):
            return -1
        lo, hi = 0, int(self.levels[t])  # ok(lo), not ok(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo

    def _observe(self) -> np.ndarray:
        t = min(self.t, self.dim - 1)
        done = self.t >= self.dim
        rest = self.x.copy()
        rest[self.t:] = 1.0
        removed = max(0.0, self.dense_cost - self._cost(rest)) / self.dense_cost
        previous = self.x[self.t - 1] if self.t > 0 else 1.0
        bound = 0.0 if done else max(0, self.bound) / self.levels[t]
        obs = np.concatenate([self.static[t], [removed, previous, bound]])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------ gymnasium
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        self.x = np.ones(self.dim)
        self.bound = self._bound(0)
        return self._observe(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.t >= self.dim:
            raise RuntimeError("the episode is over; call reset()")
        a = float(np.clip(np.asarray(action, dtype=float).reshape(-1)[0], -1.0, 1.0))
        n = int(self.levels[self.t])
        level = int(round(0.5 * (a + 1.0) * n))
        if self.bounded:  # AMC: min(action, bound), then never below the lower bound
            level = max(0, min(level, self.bound))
        self.x[self.t] = level / n
        self.t += 1
        done = self.t >= self.dim
        self.bound = 0 if done else self._bound(self.t)
        info: dict[str, Any] = {"level": level}
        reward = 0.0
        if done:
            info["point"] = self.x.copy()
            if self.evaluate is not None:
                reward = float(self.evaluate(self.x.copy()))
        return self._observe(), reward, done, False, info

    # ------------------------------------------------------------------ for the agent
    def replay(self, point: Sequence[float]
               ) -> list[tuple[np.ndarray, np.ndarray, float, np.ndarray, bool]]:
        """The transitions ``(obs, action, reward=0, next_obs, done)`` of the episode that ends
        on ``point`` exactly (snapped to the allowed channel counts, not bounded): what the
        search evaluated may differ from what the agent proposed (the loop's repair grows a
        point to the budget), and the agent learns from what was evaluated."""
        point = np.clip(np.asarray(point, dtype=float), 0.0, 1.0)
        obs, _ = self.reset()
        out = []
        self.bounded, evaluate, self.evaluate = False, self.evaluate, None
        try:
            for t in range(self.dim):
                action = np.array([2.0 * round(point[t] * self.levels[t]) / self.levels[t] - 1.0],
                                  dtype=np.float32)
                nxt, reward, done, _, _ = self.step(action)
                out.append((obs, action, reward, nxt, done))
                obs = nxt
        finally:
            self.bounded, self.evaluate = True, evaluate
        return out
