"""OWL: Outlier-Weighted Layerwise sparsity (Yin et al., "Outlier Weighed Layerwise Sparsity
(OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity", ICML 2024; arXiv 2310.05175).

A layer whose scores hold many outliers is pruned less. Per unit ``l``, from the context's
scores ``a_l`` (one per element of the unit):

1. outlier ratio ``D_l = mean(a_l > M * mean(a_l))`` (``M = 5``);
2. normalised ``n_l = (D_l - min D) / (max D - min D)`` (all 0 when every ``D_l`` is equal);
3. sparsity ``s_l = S - 2 * lam * (n_l - mean(n))`` (``lam = 0.08``): the paper's code, spread
   ``2 * lam`` and mean-centred so that the layers' average is the target ``S``; then clipped
   to ``[S - lam, S + lam]`` (the paper's bound) and to ``[0, 1]``;
4. on the unit's grid of counts: every unit keeps the largest choice not above its density
   ``1 - s_l``, then, in order of ``D_l`` (most outliers first; ties: nearest to its next
   choice first, then unit order), each unit is raised to the next choice if the point still
   meets the budget. So the most outlier-rich layers get the denser choices and the point
   meets the budget on its own; the search loop's repair then spends what is left.

On an ``nm`` space step 4 is the per-layer N: the layers with most outliers get the denser
pattern (or dense), the others the sparser, with the mean kept share what the budget allows.

``S`` is the target sparsity: ``1 - limit / dense`` of the search's budget (``sparsity=80%``
gives 0.8; with several budgets the tightest). Where the grid-floored allocation at that ``S``
does not fit (a budget on another cost than the weights, such as ``flops=``), ``S`` is raised
by bisection until it does. Without a budget nothing is pruned.

The scores are the context's: on the weight spaces (``unstructured``, ``nm``) ``|w|`` of every
weight, whatever the space's criterion (the paper scores with Wanda's ``|W| * ||X||``, which
the context does not give, so this is OWL on magnitudes); on the channel space the channels'
group magnitudes (the same rule on channels, not the paper's setting).

One proposal, like ``uniform``: the allocation above. ``M`` and ``lam`` are agent options
(``make_agent("owl", dim, options={"M": "5", "lam": "0.08"})``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .base import Agent, AgentContext
from .registry import register_agent

__all__ = ["OWLAgent", "owl_allocation", "owl_sparsities", "outlier_ratios"]

_TOL = 1e-9


def outlier_ratios(scores: Sequence[np.ndarray | Sequence[float]], M: float = 5.0) -> np.ndarray:
    """Per unit, the share of its scores above ``M`` times the unit's mean score (0 for a unit
    with no score or a zero mean)."""
    out = []
    for u in scores:
        a = np.asarray(u, dtype=float).reshape(-1)
        mean = float(a.mean()) if a.size else 0.0
        out.append(float(np.mean(a > M * mean)) if mean > 0 else 0.0)
    return np.asarray(out, dtype=float)


def owl_sparsities(ratios: np.ndarray, target: float, lam: float = 0.08) -> np.ndarray:
    """OWL's layer sparsities for outlier ratios ``ratios`` and target sparsity ``target``:
    ``clip(target - 2 lam (n_l - mean n), target - lam, target + lam)``, ``n`` the ratios
    normalised to [0, 1], clipped to [0, 1] too."""
    d = np.asarray(ratios, dtype=float)
    span = float(d.max() - d.min()) if d.size else 0.0
    n = (d - d.min()) / span if span > 0 else np.zeros_like(d)
    s = target - 2.0 * lam * (n - n.mean())
    return np.clip(np.clip(s, target - lam, target + lam), 0.0, 1.0)


def _floor_index(choices: Sequence[int], keep: float) -> int:
    """Index of the largest choice not above ``keep`` (a count; half an element over counts as
    on it, since grids round their counts: level 0.8 of 2304 weights keeps 461); 0 when every
    choice is above."""
    c = np.asarray(choices, dtype=float)
    below = np.nonzero(c <= keep + 0.5 + _TOL * c[-1])[0]
    return int(below[-1]) if below.size else 0


def _coordinate(choices: Sequence[int], j: int) -> float:
    return j / (len(choices) - 1) if len(choices) > 1 else 1.0


def owl_allocation(context: AgentContext, *, M: float = 5.0, lam: float = 0.08) -> np.ndarray:
    """The point of OWL's allocation on ``context`` (see the module's docstring)."""
    budget = context.budget
    if budget is None:
        raise ValueError("OWL needs the context's budget")
    ratios = outlier_ratios(context.scores, M)
    if not budget.limits:
        return np.ones(context.dim)  # no budget: nothing to prune
    target = 1.0 - min(lim / budget.dense[m] if budget.dense.get(m) else 1.0
                       for m, lim in budget.limits.items())
    target = float(np.clip(target, 0.0, 1.0))

    def floored(S: float) -> tuple[np.ndarray, np.ndarray]:
        keep = 1.0 - owl_sparsities(ratios, S, lam)
        idx = np.array([_floor_index(c, k * c[-1]) for c, k in zip(context.choices, keep)])
        return idx, keep

    def point(idx: np.ndarray) -> np.ndarray:
        return np.array([_coordinate(c, int(j)) for c, j in zip(context.choices, idx)])

    idx, keep = floored(target)
    if not budget.feasible(point(idx)):  # a budget on another cost: raise S until it fits
        lo, hi = target, 1.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if budget.feasible(point(floored(mid)[0])) else (mid, hi)
        idx, keep = floored(hi)
    # Raise units to their next choice, most outliers first, while the point fits.
    gap = []
    for c, j, k in zip(context.choices, idx, keep):
        nxt = min(int(j) + 1, len(c) - 1)
        gap.append((c[nxt] - k * c[-1]) / max(1.0, c[nxt] - c[int(j)]))
    order = sorted(range(context.dim), key=lambda i: (-ratios[i], gap[i], i))
    for i in order:
        c = context.choices[i]
        if idx[i] + 1 >= len(c) or c[idx[i]] >= keep[i] * c[-1] - 0.5:
            continue  # dense already, or its density is on the grid
        trial = idx.copy()
        trial[i] += 1
        if budget.feasible(point(trial)):
            idx = trial
    return point(idx)


@register_agent("owl")
class OWLAgent(Agent):
    """Outlier-weighted layerwise sparsity: layers with more outlier scores are pruned less."""

    context_needs: ClassVar[frozenset[str]] = frozenset({"scores", "budget"})
    options: ClassVar[Mapping[str, Sequence[str]]] = {
        "M": ("5", "3", "4", "6", "7", "8", "10"),
        "lam": ("0.08", "0.02", "0.04", "0.05", "0.06", "0.1", "0.12", "0.15", "0.2")}
    family: ClassVar[str] = "OWL agent"

    def __init__(self, dim: int, *, seed: int = 0) -> None:
        super().__init__(dim, seed=seed)
        self.M = 5.0
        self.lam = 0.08
        self.proposed = False

    def set_option(self, name: str, value: str) -> None:
        if name == "M":
            self.M = float(value)
        elif name == "lam":
            self.lam = float(value)
        else:
            super().set_option(name, value)

    def ask(self, n: int) -> list[np.ndarray]:
        context = self._require_context()
        if self.proposed or n < 1:
            return []
        self.proposed = True
        return [owl_allocation(context, M=self.M, lam=self.lam)]

    def state_dict(self) -> dict[str, Any]:
        return {"proposed": self.proposed, "M": self.M, "lam": self.lam}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.proposed = bool(state["proposed"])
        self.M = float(state.get("M", self.M))
        self.lam = float(state.get("lam", self.lam))
