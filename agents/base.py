"""The agent contract: propose points of the unit cube, learn from their results.

Agents never see torch modules or costs models: only the dimension of the space, points in
``[0, 1]^dim`` and result dictionaries. Heuristics, random search, Bayesian optimization,
evolution and reinforcement learning all sit behind this one ask/tell loop, so every method is
compared under the same loop, budgets and evaluations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

__all__ = ["Agent", "AgentContext", "PointCosts", "Probe", "UnitFacts", "is_probe", "probe"]


class Probe(np.ndarray):
    """A point an agent asks to have evaluated *as it is*, outside the budget: a sensitivity
    probe (one unit thinned, every other unit dense) measures that unit's curve, which a point
    repaired to the budget cannot. The search loop does not repair it; its trial is recorded
    with its true costs and marked as a probe (the result has ``probe`` = 1.0), so it counts
    as an evaluation but is never a search's best unless it happens to meet the budget. A
    chain tells a probe only to the stage that asked for it. Make one with ``probe(x)``."""


def probe(x: np.ndarray | Sequence[float]) -> Probe:
    """``x`` (a point of the cube) marked as a probe (see ``Probe``)."""
    return np.array(x, dtype=float).view(Probe)


def is_probe(point: object) -> bool:
    """Whether an asked point is a ``Probe`` (evaluated as it is, outside the budget)."""
    return isinstance(point, Probe)


@dataclass(frozen=True, kw_only=True)
class UnitFacts:
    """The shape of a unit's first conv or linear layer (the layer it is named after), dense.

    ``kind`` is ``conv``, ``depthwise`` (a conv with one group per channel) or ``linear``;
    ``kernel`` and ``stride`` the largest side; ``in_size`` the input's spatial positions
    (h x w, 1 for a linear layer); ``params`` the weights of every conv/linear layer whose
    output channels the unit owns. What AMC embeds per layer (He et al., ECCV 2018, sec. 3.1).
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    in_size: int = 1
    params: int = 0


@dataclass(frozen=True, kw_only=True)
class PointCosts:
    """What candidates cost, for agents that keep to the budget themselves (AMC's action bound).

    ``costs(x)`` gives, for a point of the cube, the cost of the configuration it decodes to:
    at least every metric of ``limits`` (``macs``, ``params``, ``latency_ms`` through the lookup
    table, ...). ``limits``: the most a candidate may cost per budgeted metric (the search
    limit, margins applied; empty when the search has no budget). ``dense``: the dense model's
    costs. Costs are monotone in every coordinate.
    """

    costs: Callable[[np.ndarray], Mapping[str, float]]
    limits: Mapping[str, float]
    dense: Mapping[str, float]

    def feasible(self, x: np.ndarray) -> bool:
        if not self.limits:
            return True
        c = self.costs(x)
        return all(c[m] <= lim * (1 + 1e-9) for m, lim in self.limits.items())


@dataclass(frozen=True, kw_only=True)
class AgentContext:
    """What the search loop may tell an agent about the units of its space: plain numbers, no
    torch. Heuristic agents (global magnitude, LAMP, ERK, OWL) allocate from it; others ignore
    it.

    ``granularity``: what a unit's elements are: ``channels`` (the channel space: channel groups
    and attention heads) or, on the weight-sparsity spaces, ``unstructured`` or ``nm`` (single
    weights of one conv/linear layer; for ``nm`` the counts below N:M patterns).
    ``choices``: per unit, the element counts it may keep (channels, or weights on a weight
    space; ascending, the last is all of them); coordinate ``x[i]`` decodes to
    ``choices[i][round(x[i] * (len(choices[i]) - 1))]``.
    ``scores``: per unit, one importance per element; empty when not computed. On the channel
    space a tuple of floats per unit: the L2 magnitude of the channel's whole coupled group
    (Torch-Pruning's ``GroupMagnitudeImportance``, un-normalised), the scores by which pruning
    keeps channels. On a weight space a read-only 1-D numpy array per unit: ``|w|`` of every
    weight of the unit's layer, flattened in storage order, in the model's dtype (whatever the
    space's criterion; Wanda and SparseGPT rank on data in ``apply``). Every weight, not a
    sample, so that one global threshold is the method's own; at the model's own 4 bytes a
    weight (36 MB for a VGG-11), never Python floats. Read them with ``np.asarray``.
    ``layers``: per unit, ``(in_channels, out_channels, kernel_h, kernel_w)`` of every conv or
    linear layer whose output channels the unit owns (linear layers have a 1x1 kernel); on a
    weight space the unit's one layer, ``in_channels`` per conv group.
    ``units``: per unit, its ``UnitFacts`` (the RL agents' layer embedding).
    ``budget``: the ``PointCosts`` of the search (costs of points and the budgets), for agents
    that bound their own proposals; ``None`` when not computed.
    ``kinds``: per unit, what its elements are (``Unit.kind``: ``channels`` of a CNN, MLP
    ``neurons``, the ``residual`` width, attention ``heads``, ``head_dim``, ``weights``).
    ``trials``: the evaluations the search may spend in all (``None``: not bounded), for agents
    that plan their measurements (the sensitivity agent's probes per unit).
    """

    choices: tuple[tuple[int, ...], ...]
    scores: tuple[Sequence[float] | np.ndarray, ...] = ()
    layers: tuple[tuple[tuple[int, int, int, int], ...], ...] = ()
    units: tuple[UnitFacts, ...] = ()
    budget: PointCosts | None = None
    granularity: str = "channels"
    kinds: tuple[str, ...] = ()
    trials: int | None = None

    @property
    def weights(self) -> bool:
        """Whether units are single weights (the ``unstructured`` and ``nm`` spaces)."""
        return self.granularity != "channels"

    @property
    def dim(self) -> int:
        return len(self.choices)

    def point_for_fractions(self, keep: Sequence[float]) -> np.ndarray:
        """The point whose units keep the allowed count nearest to ``keep[i]`` of their elements
        (channels or weights; fractions below a unit's lowest choice give its lowest choice)."""
        keep = np.asarray(keep, dtype=float)
        if keep.shape != (self.dim,):
            raise ValueError(f"expected {self.dim} fractions, got shape {keep.shape}")
        x = np.empty(self.dim)
        for i, (choices, k) in enumerate(zip(self.choices, keep)):
            c = np.asarray(choices, dtype=float)
            j = int(np.argmin(np.abs(c - k * c[-1])))
            x[i] = j / (len(c) - 1) if len(c) > 1 else 1.0
        return x


class Agent(ABC):
    """Proposes points; told what each evaluated point scored.

    ``tell`` receives the point that was *actually* evaluated (after the search loop repaired
    it to meet the budget) and a result with at least ``objective`` (higher is better; NaN for a
    failed trial) plus the trial's costs and metrics. An agent searching ``objectives > 1``
    objectives (a Pareto front) also finds ``objective.1``, ``objective.2``, ... (all higher is
    better); only agents with ``multi_objective`` accept that. ``repeat`` (1.0) marks a point
    whose configuration had been scored before: the result is the known one, and no trial was
    spent (an agent that keeps proposing known configurations may explore instead).
    """

    name: str = "abstract"
    #: The ``AgentContext`` fields (``scores``, ``layers``, ``units``, ``budget``) the agent
    #: cannot work without; the search loop computes them (only when asked for) and calls
    #: ``set_context`` before ``ask``.
    context_needs: ClassVar[frozenset[str]] = frozenset()
    #: Whether the agent can search several objectives at once (``make_agent(objectives=2)``).
    multi_objective: ClassVar[bool] = False
    #: Options the agent takes through ``make_agent(options=...)``: name -> allowed values, the
    #: first being the default. ``family`` names the agents that share them in messages.
    options: ClassVar[Mapping[str, Sequence[str]]] = {}
    family: ClassVar[str] = ""

    def __init__(self, dim: int, *, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"an agent needs at least one dimension, got {dim}")
        self.dim = dim
        self.seed = seed
        self.objectives = 1
        self.context: AgentContext | None = None
        #: Set by a chain on every stage but the last: an agent that could go on refining
        #: for ever (sensitivity) stops where its own method ends, so the next stage starts.
        self.hands_over = False

    @property
    def waiting(self) -> bool:
        """Whether an empty ``ask`` means "not now, results are pending" rather than "done"
        (a chain does not hand over to its next stage while its stage waits)."""
        return False

    def set_option(self, name: str, value: str) -> None:
        """Apply one of ``options`` (``make_agent`` has checked the value)."""
        raise ValueError(f"agent {self.name!r} takes no option {name!r}")

    def objective_values(self, result: Mapping[str, float]) -> list[float]:
        """The ``objectives`` values of a result, first ``objective`` then ``objective.1``, ...
        (NaN where missing)."""
        keys = ["objective"] + [f"objective.{k}" for k in range(1, self.objectives)]
        return [float(result.get(k, float("nan"))) for k in keys]

    def set_context(self, context: AgentContext) -> None:
        """Facts about the units (see ``AgentContext``); not part of the saved state, so the
        search loop sets it again on resume, before ``load_state_dict``."""
        if context.dim != self.dim:
            raise ValueError(f"the context describes {context.dim} units; this agent searches "
                             f"{self.dim}")
        for need in sorted(self.context_needs):
            value = getattr(context, need)
            if value is None:
                raise ValueError(f"agent {self.name!r} needs the context's {need!r}; it is "
                                 "missing")
            if isinstance(value, Sequence) and len(value) != self.dim:
                raise ValueError(f"agent {self.name!r} needs the context's {need!r} for every "
                                 f"unit, got {len(value)} of {self.dim}")
        self.context = context

    def _require_context(self) -> AgentContext:
        if self.context is None:
            raise RuntimeError(
                f"agent {self.name!r} allocates from facts about the model "
                f"({', '.join(sorted(self.context_needs))}); call set_context(...) first "
                "(autoprune's search loop and API do this for you)")
        return self.context

    @abstractmethod
    def ask(self, n: int) -> list[np.ndarray]:
        """Up to ``n`` new points; an empty list means the agent has nothing more to propose."""

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:  # noqa: B027
        """Learn from one evaluated point (stateless agents ignore it)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, enough to resume the search where it stopped. Large texts
        that change rarely (networks) go under the key ``blobs`` (name -> str): the search
        loop stores those apart and rewrites them only when they change."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
