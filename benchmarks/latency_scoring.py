"""What ``latency_model.py`` and ``latency_device.py`` score with: the random configurations
networks are drawn at, the share within 5% and 10%, the median error and rank correlation of a
predictor, and the table's predictions levelled online as the check after a search makes them.
"""

from __future__ import annotations

import os

import numpy as np
from scipy.stats import spearmanr

from autoprune.latency.level import OnlineLevel
from autoprune.search_spaces import SearchSpace

__all__ = ["MAX_PASSES_FACTOR", "MEASURE_NOISE", "configs_for", "load", "online_predictions",
           "scores"]


#: A measurement whose two halves disagree by more than this (median over the networks) gets
#: more passes (on this host two at a time; on the device ``--passes`` more rounds), up to
#: ``MAX_PASSES_FACTOR`` times ``--passes``: the host's speed moves in phases of seconds, and
#: more passes average more of them.
MEASURE_NOISE = 0.05
MAX_PASSES_FACTOR = 2


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def configs_for(space: SearchSpace, n: int, rng: np.random.Generator) -> list[dict[str, int]]:
    """Random configurations over the whole width range: a level per network plus per-unit noise
    (uniform points in the cube alone cluster around half width)."""
    out = []
    for _ in range(n):
        level = rng.uniform(0, 1)
        out.append(space.decode(np.clip(level + rng.normal(0, 0.3, space.dim), 0, 1)))
    return out


def online_predictions(pred: np.ndarray, meas: np.ndarray, rng: np.random.Generator,
                       orders: int = 20) -> np.ndarray:
    """Each network's prediction as the check after a search makes it: the table's, scaled by
    the machine's level estimated from the networks measured before it
    (:class:`~autoprune.latency.level.OnlineLevel`); the dense network (row 0) first, as the
    check measures it first, then the others in a random order. Per network the geometric
    mean over ``orders`` orders (its error is scored against the same measurement)."""
    logs = np.zeros(len(pred))
    for _ in range(orders):
        level = OnlineLevel()
        for i in [0, *(1 + rng.permutation(len(pred) - 1))]:
            logs[i] += np.log(level.predict(float(pred[i])))
            level.add(float(pred[i]), float(meas[i]))
    return np.exp(logs / orders)


def scores(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    rel = pred / meas - 1.0
    return {"within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
            "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
            "median_abs_pct": float(100 * np.median(np.abs(rel))),
            "spearman": float(spearmanr(pred, meas).statistic) if len(pred) > 2 else float("nan")}
