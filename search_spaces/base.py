"""The search-space contract: what can be searched, as points in the unit cube.

A search space turns a point ``x`` in ``[0, 1]^dim`` into a concrete configuration, turns a
configuration into a *layer table* (the shapes of every costed layer, which is all a cost model
needs), and applies a configuration to a model. It knows nothing of agents or costs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

__all__ = ["SPACES", "CountedSpace", "LayerRow", "LayerTable", "PruningBrokeModel", "SearchSpace", "Unit",
           "UnitFactsError", "UntraceableModelError", "call_name", "make_space", "register_space"]


class UnitFactsError(ValueError):
    """A space cannot give the per-unit facts (scores, layer shapes) an agent asked for."""


class UntraceableModelError(ValueError):
    """The model could not be analysed (traced) into prunable units."""


class PruningBrokeModel(RuntimeError):
    """A pruned network fails in forward; ``units`` names the units that break it."""

    def __init__(self, units: Sequence[str], error: BaseException) -> None:
        self.units = tuple(units)
        super().__init__(
            f"pruning breaks the model: with {', '.join(self.units) or 'these widths'} pruned "
            f"it fails in forward ({type(error).__name__}: {error})")


@dataclass(frozen=True, kw_only=True)
class Unit:
    """One prunable decision: a group of coupled elements that are kept or removed together.

    ``kind`` says what the elements are: ``channels`` (of a Torch-Pruning channel group) or
    ``heads`` (whole attention heads of one layer). ``choices`` are the counts the unit may
    keep (ascending, the last one is ``full``). ``members`` names every layer whose outputs
    it shrinks.
    """

    name: str
    full: int
    choices: tuple[int, ...]
    members: tuple[str, ...]
    kind: str = "channels"

    @property
    def minimum(self) -> int:
        return self.choices[0]


def call_name(module: str, call: int) -> str:
    """The layer-table name of call ``call`` (from 0) of ``module``: the module's own name for
    the first call, ``name#2``, ``name#3``... for later ones (:attr:`LayerRow.module` reads it
    back)."""
    return module if call == 0 else f"{module}#{call + 1}"


@dataclass(frozen=True, kw_only=True)
class LayerRow:
    """One costed layer call under a configuration, with its exact MACs and parameters.

    ``kind`` is ``conv``, ``conv_transpose``, ``linear``, ``norm``, ``embedding``,
    ``recurrent``, ``attention`` (``nn.MultiheadAttention``'s own weights), ``param`` (free
    parameters of another module), ``matmul`` (a matmul between activations, e.g. attention's
    scores) or ``op`` (any other counted operation). ``rows`` is how many input vectors a
    linear layer sees per batch (batch x tokens). A layer called more than once in a forward
    pass has a row per call: ``call`` counts from 0, ``name`` is the module's name with
    ``#2``, ``#3``... added for later calls, and only the first call's row counts the (shared)
    parameters. ``macs`` counts multiply-accumulates as ``torch.utils.flop_counter`` does
    (half its FLOPs) plus recurrent gate matmuls; ``params`` every parameter the row holds.
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    groups: int = 1
    in_size: tuple[int, ...] = ()
    out_size: tuple[int, ...] = ()
    batch: int = 1
    rows: int = 1
    bias: bool = False
    call: int = 0
    macs: int = 0
    params: int = 0
    # Weight-granularity spaces (unstructured, N:M, channel+unstructured) only; zero
    # elsewhere. ``weight_elements``: elements of the row's pruned weight tensor, dense;
    # ``weight_nonzero``: those kept (then ``params`` counts them, not the dense elements, and
    # in unstructured and N:M spaces ``macs`` the MACs of non-zero weights; channel+unstructured
    # keeps dense MACs, which steer its channels); ``weight_rows``: the rows it is stored as
    # (output channels: CSR's row pointers); ``dense_macs``: the MACs with the weight dense.
    weight_elements: int = 0
    weight_nonzero: int = 0
    weight_rows: int = 0
    dense_macs: int = 0

    @property
    def module(self) -> str:
        """The name of the module this row is a call of."""
        return self.name.split("#", 1)[0]


LayerTable = tuple[LayerRow, ...]


class SearchSpace(ABC):
    """A map between points of ``[0, 1]^dim`` and configurations of one model.

    A space is made from a model by ``from_model`` (through :func:`make_space` by its
    registered name) and lists its decisions as ``units``."""

    name: ClassVar[str] = "abstract"
    units: Sequence[Unit]
    #: What ``from_model`` was given: the traced inputs and the unit grid's rounding and floor.
    example_inputs: tuple[Any, ...]
    round_to: int
    min_ratio: float | None  # None: a floor per kind of unit (channel.FLOORS)
    #: How ``make_space`` built it (name, rounding, floor, output, plain options): what a saved
    #: choice records so the same units are built again on the same model.
    recipe: dict[str, Any] | None = None

    @classmethod
    @abstractmethod
    def from_model(cls, model: nn.Module, example_inputs: Any, *, round_to: int = 8,
                   min_ratio: float | None = None, output: str | int | None = None) -> SearchSpace:
        """Find the units of ``model`` (left untouched) by tracing it on ``example_inputs``;
        ``output`` names the output tensor that must keep its shape (default: the first)."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Number of coordinates of a point."""

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of a point (the unit cube)."""
        return np.zeros(self.dim), np.ones(self.dim)

    @abstractmethod
    def decode(self, x: Sequence[float]) -> Mapping[str, int]:
        """The configuration a point stands for (monotone: a larger coordinate never keeps less)."""

    @abstractmethod
    def encode(self, config: Mapping[str, int]) -> np.ndarray:
        """A point that decodes to ``config``."""

    @abstractmethod
    def dense_config(self) -> Mapping[str, int]:
        """The configuration of the unpruned model."""

    @abstractmethod
    def layer_table(self, config: Mapping[str, int]) -> LayerTable:
        """Shapes of every costed layer under ``config``; cost models read only this."""

    def ratios(self, config: Mapping[str, int]) -> dict[str, float]:
        """Readable per-decision values in ``[low, 1]`` (kept fractions for channel spaces);
        the study stores these as a trial's params. Defaults to the point's coordinates."""
        return {f"x{i}": float(v) for i, v in enumerate(self.encode(config))}

    def ratio_lower_bounds(self) -> dict[str, float]:
        """The smallest value of each entry of ``ratios``."""
        return {f"x{i}": 0.0 for i in range(self.dim)}

    @abstractmethod
    def apply(self, model: nn.Module, config: Mapping[str, int]) -> nn.Module:
        """A pruned copy of ``model`` (the argument is left untouched)."""

    def prepare(self, model: nn.Module) -> None:
        """Work done once per search on the dense ``model`` before its trials, so that each
        trial costs its network alone: the weight-sparse spaces prune every unit's levels into
        their level store. Nothing for a channel space."""

    def keep_in(self, folder: str | Path) -> None:
        """Keep what ``prepare`` makes in ``folder`` (a run folder's ``levels/``), so that a
        resumed run, ``pick`` and Ray workers read it instead of making it again. Nothing
        for a channel space."""

    def deployable(self, model: nn.Module) -> nn.Module:
        """``model`` (what ``apply`` returned, perhaps fine-tuned since) as it is delivered:
        saved, exported and rebuilt from a run folder. A channel space's network is already
        plain; a weight-sparsity space bakes its masks into the weights."""
        return model

    def trainable(self, model: nn.Module) -> nn.Module:
        """``model`` as ``deployable`` delivered it, ready to train further without losing
        what was pruned (the inverse of ``deployable``): a channel network as it is; a
        weight-sparse one with its zeros masked again."""
        return model

    def min_config(self) -> Mapping[str, int]:
        """The thinnest configuration the space allows (the origin of the cube)."""
        return self.decode(np.zeros(self.dim))

    def broken_units(self, model: nn.Module, config: Mapping[str, int]) -> list[str] | None:
        """``None`` if ``model`` pruned to ``config`` runs on the example inputs, else the units
        that make it fail (each pruned alone to its width in ``config``; empty when only
        together). Spaces that cannot run a model return ``None``."""
        return None

    def channel_scores(self, model: nn.Module) -> list[np.ndarray]:
        """Per unit, one importance per prunable element, the scores by which ``apply`` chooses
        what a unit keeps. Agents that rank across units (global magnitude, LAMP) read them; a
        space that has none raises :class:`UnitFactsError`."""
        raise UnitFactsError(f"{type(self).__name__} has no per-unit importance scores")

    def unit_layers(self) -> list[list[tuple[int, int, int, int]]]:
        """Per unit, the dense weight shape ``(fan_in, out, kernel_h, kernel_w)`` of every layer
        it prunes (ERK and AMC's embedding read them); a space that has none raises
        :class:`UnitFactsError`."""
        raise UnitFactsError(f"{type(self).__name__} does not list the layers of its units")



class CountedSpace(SearchSpace):
    """A space whose units keep counts of elements (channels, heads or weights) among their
    ``Unit.choices``: its dense and thinnest configurations, kept fractions and their floors
    follow from the units alone. ``complete_config`` fills and checks a configuration."""

    @abstractmethod
    def complete_config(self, config: Mapping[str, int]) -> dict[str, int]:
        """``config`` with every unit present (dense where missing), every count checked."""

    def dense_config(self) -> dict[str, int]:
        return {u.name: u.full for u in self.units}

    def min_config(self) -> dict[str, int]:
        return {u.name: u.minimum for u in self.units}

    def ratios(self, config: Mapping[str, int]) -> dict[str, float]:
        """Kept fraction of elements per unit."""
        full = self.complete_config(config)
        return {u.name: full[u.name] / u.full for u in self.units}

    def ratio_lower_bounds(self) -> dict[str, float]:
        return {u.name: u.minimum / u.full for u in self.units}


SPACES: dict[str, type[SearchSpace]] = {}


def register_space(name: str) -> Callable[[type[SearchSpace]], type[SearchSpace]]:
    """Class decorator: make a space available by ``name`` (``--space NAME``)."""

    def deco(cls: type[SearchSpace]) -> type[SearchSpace]:
        if name in SPACES:
            raise ValueError(f"search space {name!r} is registered twice")
        cls.name = name
        SPACES[name] = cls
        return cls

    return deco


def make_space(name: str, model: nn.Module, example_inputs: Any, *, round_to: int = 8,
               min_ratio: float | None = None, output: str | int | None = None,
               criterion: Any = None, **options: Any) -> SearchSpace:
    """The registered space ``name`` over ``model``: what every caller outside this package
    uses, so a new space plugs in without edits elsewhere. ``criterion`` (a pruning
    criterion's name or object) and a space's own ``options`` (the weight-sparsity spaces'
    ``levels``, ``nm``, ``include_ends``, ``calibration``) are passed on only when given."""
    try:
        cls = SPACES[name]
    except KeyError:
        raise ValueError(f"unknown search space {name!r}; available: "
                         f"{', '.join(sorted(SPACES))}") from None
    extra = {"criterion": criterion} if criterion is not None else {}
    space = cls.from_model(model, example_inputs, round_to=round_to, min_ratio=min_ratio,
                           output=output, **extra, **options)
    # How to build it again on the same model: what a saved choice records (the units' shapes
    # depend on these; the criterion and its data only rank, and saved weights replace that).
    space.recipe = {"space": name, "round_to": round_to, "min_ratio": min_ratio,
                    "output": output, "space_options": {
                        k: list(v) if isinstance(v, tuple) else v for k, v in options.items()
                        if _plain(v)}}
    return space


def _plain(value: Any) -> bool:
    """A JSON value of numbers, strings and lists (what a space's recipe may record)."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))
