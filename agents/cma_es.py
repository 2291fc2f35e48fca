"""CMA-ES over the unit cube, through the ``cmaes`` library (the one optuna's CmaEsSampler wraps).

Why not ``optuna.samplers.CmaEsSampler`` itself: it keeps its optimizer as a *pickle* in trial
system attributes and restores it from there, and it ignores trials that lack its own
generation attributes. An agent state that is JSON (and never unpickled on resume) could not
carry it, and a study rebuilt from points and values would restart CMA-ES from scratch. Driving
``cmaes.CMA`` directly gives the same algorithm (Hansen's CMA-ES with optuna's defaults: mean at
the centre, sigma0 = 1/6 of the range, default population 4 + 3 ln d, bounds handled by
resampling) with a state that is the seeds and the told values: a resume replays the asks and
tells, which reproduces the optimizer exactly.

CMA-ES's update assumes the told points are its own samples, so it learns the asked point with
the value of the point the search loop evaluated after repairing it (the objective it sees is
``f(repair(x))``, a function of its own proposals).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import Agent
from .registry import register_agent

if TYPE_CHECKING:
    import cmaes

__all__ = ["CMAESAgent"]

_SIGMA0 = 1.0 / 6.0  # optuna's CmaEsSampler default: min(high - low) / 6


@register_agent("cmaes")
class CMAESAgent(Agent):
    """Covariance matrix adaptation evolution strategy (CMA-ES, as optuna's CmaEsSampler)."""

    def __init__(self, dim: int, *, seed: int = 0, population_size: int | None = None) -> None:
        super().__init__(dim, seed=seed)
        self.population_size = population_size
        self._gen_asks: list[int] = [0]  # proposals made in each generation
        self._told: list[dict[str, Any]] = []  # {"x", "value", "gen"} in the order told
        self._pending: list[tuple[np.ndarray, int]] = []
        self._cma = self._new_optimizer()
        self._buffer: list[tuple[np.ndarray, float | None]] = []

    def _new_optimizer(self) -> cmaes.CMA:
        import cmaes

        bounds = np.tile([0.0, 1.0], (self.dim, 1))
        return cmaes.CMA(mean=np.full(self.dim, 0.5), sigma=_SIGMA0, bounds=bounds,
                         seed=self.seed, population_size=self.population_size,
                         n_max_resampling=10 * self.dim)

    @property
    def generation(self) -> int:
        return len(self._gen_asks) - 1

    def ask(self, n: int) -> list[np.ndarray]:
        points = []
        for _ in range(max(0, n)):
            x = np.clip(self._cma.ask(), 0.0, 1.0)
            self._gen_asks[-1] += 1
            self._pending.append((x, self.generation))
            points.append(x.copy())
        return points

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:
        if not self._pending:
            return  # not one of our samples (e.g. replayed from an old study): CMA cannot use it
        x, gen = self._pending.pop(0)
        value = float(result.get("objective", math.nan))
        self._learn(x, value if math.isfinite(value) else None, gen)

    def _learn(self, x: np.ndarray, value: float | None, gen: int) -> None:
        self._told.append({"x": [float(v) for v in x], "value": value, "gen": gen})
        if gen != self.generation:
            return  # a late result of a finished generation: recorded, not learnt
        self._buffer.append((x, value))
        if len(self._buffer) == self._cma.population_size:
            self._cma.tell(_minimisation(self._buffer))
            self._buffer = []
            self._gen_asks.append(0)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "population_size": self.population_size,
                "gen_asks": list(self._gen_asks), "told": self._told}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.population_size = state["population_size"]
        gen_asks = [int(a) for a in state["gen_asks"]]
        told = list(state["told"])
        # Replay: the same asks (which advance the optimizer's random state exactly as before)
        # and the same tells, generation by generation.
        self._cma = self._new_optimizer()
        self._gen_asks, self._told, self._pending, self._buffer = [0], [], [], []
        for gen, asks in enumerate(gen_asks):
            for _ in range(asks):
                self._cma.ask()
            self._gen_asks[-1] = asks
            for t in told:
                if t["gen"] == gen:
                    self._learn(np.asarray(t["x"], dtype=float), t["value"], gen)
        # Results that arrived after their generation had closed were recorded, not learnt.
        self._told = told


def _minimisation(buffer: list[tuple[np.ndarray, float | None]]) -> list[tuple[np.ndarray, float]]:
    """cmaes minimises: negate the objective; a failed trial ranks below every finished one
    (CMA-ES only uses the ranking)."""
    finite = [-v for _, v in buffer if v is not None]
    worst = (max(finite) + 1.0) if finite else 0.0
    return [(x, -v if v is not None else worst) for x, v in buffer]
