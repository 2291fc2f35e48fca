"""Both granularities in one search: channels pruned, then single weights of what remains.

``channel+unstructured`` composes a :class:`~.channel.ChannelSpace` (its units exactly as
``ChannelSpace.from_model`` finds them, ranked by a channel criterion) with one *weight unit*
per prunable conv/linear weight (the selection the ``unstructured`` space makes: first and
last layers, embeddings and tied weights left dense unless ``include_ends``). Units are the
channel units first, then the weight units, named ``<module>:weights`` (``kind="weights"``).

A weight unit's value is the **share of the layer's weights kept after channel pruning, in
permille** (an int from ``round(1000 * (1 - level))`` over ``levels``; 1000 is dense), so its
choices never depend on the channel part. The layer keeps ``max(1, floor(permille / 1000 *
elements))`` weights of largest |w|, ``elements`` being the channel-pruned weight's element
count.

Costs differ from the weight-only spaces on purpose: the rows are the channel space's rows,
with each weight unit's rows told ``weight_elements`` (channel-pruned), ``weight_nonzero``
(kept) and ``weight_rows`` (output channels), and ``params`` less the removed weights on the
first call's row, while ``macs`` and ``dense_macs`` stay the channel-pruned network's *dense*
MACs. So ``flops=`` and a latency budget steer the channels (zeros buy no speed on dense
kernels), ``sparsity=`` and ``size=`` the fine-grained part (and the channels, which shrink
the weights too), and ``params=`` counts the non-zeros of the channel-pruned network. In the
``unstructured``/``nm`` spaces ``macs`` counts the MACs of non-zero weights instead.

A latency table sees only the channel part (:attr:`ChannelWeightSpace.latency_space`): the
masks change no width, and a table for the channel space costs this space's rows unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import CountedSpace, LayerRow, LayerTable, Unit, UnitFactsError, register_space
from .channel import ChannelSpace
from .masks import baked_copy, canonical, magnitude_mask, mask_weight, masks_of
from .sparse import DEFAULT_LEVELS, UnstructuredSparsitySpace
from .tracing import Output

__all__ = ["ChannelWeightSpace", "kept_weights"]

_WEIGHT_KINDS = ("conv", "conv_transpose", "linear")


def kept_weights(permille: int, elements: int) -> int:
    """The weights a layer of ``elements`` (channel-pruned) keeps at ``permille``: at least 1."""
    return max(1, min(int(elements), math.floor(int(permille) * int(elements) / 1000 + 1e-9)))


def weight_elements(row: LayerRow) -> int:
    """Elements of the weight of a conv / transposed conv / linear row, from its channels,
    groups and kernel (``in / groups * out * prod(kernel)``; linear: ``in * out``)."""
    n = (row.in_channels // max(1, row.groups)) * row.out_channels
    if row.kind in ("conv", "conv_transpose"):
        for k in row.kernel:
            n *= int(k)
    return int(n)


@dataclass(frozen=True)
class _WeightLayer:
    """A weight unit's module and the indices of its rows (every call) in the layer table."""

    module: str
    rows: tuple[int, ...]


@register_space("channel+unstructured")
class ChannelWeightSpace(CountedSpace):
    """Channels kept per channel unit and, per weight unit, the permille of the channel-pruned
    layer's weights kept (magnitude); see the module's docstring for the costs."""

    def __init__(self, *, channels: ChannelSpace, units: Sequence[Unit],
                 layers: Sequence[_WeightLayer], notes: Sequence[str],
                 levels: tuple[float, ...], include_ends: bool) -> None:
        self.channels = channels
        self.weight_units: tuple[Unit, ...] = tuple(units)
        self._layers = tuple(layers)
        self.units: tuple[Unit, ...] = tuple(channels.units) + self.weight_units
        self._weight_index = {u.name: i for i, u in enumerate(self.weight_units)}
        self.example_inputs = channels.example_inputs
        self.round_to = channels.round_to
        self.min_ratio = channels.min_ratio
        self.output = channels.output
        self.criterion = channels.criterion
        self.notes: tuple[str, ...] = tuple(notes)
        self.levels = levels
        self.include_ends = include_ends

    @property
    def latency_space(self) -> ChannelSpace:
        """The space a latency table profiles and predicts: the channel part (masks change no
        width; this space's rows have the channel space's widths)."""
        return self.channels

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
                   round_to: int = 8, min_ratio: float | None = None, output: Output = None,
                   criterion: Any = "l2", levels: Sequence[float] = DEFAULT_LEVELS,
                   include_ends: bool = False,
                   calibration: Sequence[tuple[Any, Any]] | None = None) -> ChannelWeightSpace:
        """The channel units of ``model`` as ``ChannelSpace.from_model`` finds them (ranked by
        ``criterion``, a channel criterion's name or object: ``criteria.make_criterion``; a data
        criterion takes ``calibration``), then a weight unit per conv/linear weight the
        ``unstructured`` space would search (``include_ends``), its choices the permilles
        ``round(1000 * (1 - level))`` over ``levels`` (0, dense, always one). The weights
        are chosen by magnitude."""
        if isinstance(criterion, str) and calibration is not None:
            from .criteria import make_criterion  # noqa: PLC0415 - only for a data criterion

            criterion = make_criterion(criterion, calibration=calibration)
        channels = ChannelSpace.from_model(model, example_inputs, round_to=round_to,
                                           min_ratio=min_ratio, output=output,
                                           criterion=criterion)
        weights = UnstructuredSparsitySpace.from_model(model, example_inputs, output=output,
                                                       levels=levels, include_ends=include_ends)
        choices = tuple(sorted({int(round(1000 * (1 - lv))) for lv in weights.levels}))
        notes = list(channels.notes) + list(weights.notes)
        dense = channels.layer_table(channels.dense_config())
        thin_model = channels.apply(model, channels.min_config())
        thin = channels.layer_table(channels.min_config())
        units: list[Unit] = []
        layers: list[_WeightLayer] = []
        for w in weights.units:
            rows = tuple(i for i, r in enumerate(dense) if r.module == w.name
                         and r.kind in _WEIGHT_KINDS)
            first = [i for i in rows if dense[i].call == 0]
            module = model.get_submodule(w.name)
            ok = bool(first) and weight_elements(dense[first[0]]) == module.weight.numel() \
                and weight_elements(thin[first[0]]) == \
                thin_model.get_submodule(w.name).weight.numel()
            if not ok or len(choices) < 2:
                notes.append(f"{w.name} is kept dense: its weight's size under channel pruning "
                             "could not be read off the channel space's rows")
                continue
            units.append(Unit(name=f"{w.name}:weights", full=1000, choices=choices,
                              members=(w.name,), kind="weights"))
            layers.append(_WeightLayer(module=w.name, rows=rows))
        return cls(channels=channels, units=units, layers=layers, notes=notes,
                   levels=tuple(weights.levels), include_ends=include_ends)

    # ------------------------------------------------------------------ the contract
    @property
    def dim(self) -> int:
        return len(self.units)

    def _split(self, config: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
        """``config`` as (the channel part, checked by the channel space; the weight part,
        every weight unit present, dense where missing, each value one of its choices)."""
        ch = {k: v for k, v in config.items() if k not in self._weight_index}
        ch = self.channels.complete_config(ch)
        out = {}
        for u in self.weight_units:
            c = config.get(u.name, u.full)
            if int(c) != c or int(c) not in u.choices:
                raise ValueError(f"unit {u.name!r} keeps {c} permille of its weights, not one "
                                 f"of its choices {list(u.choices)}. Fix: take a value from "
                                 "space.units")
            out[u.name] = int(c)
        return ch, out

    def complete_config(self, config: Mapping[str, int]) -> dict[str, int]:
        """``config`` with every unit present (dense where missing) and every value checked."""
        ch, wt = self._split(config)
        return {**ch, **wt}

    def decode(self, x: Sequence[float]) -> dict[str, int]:
        x = np.asarray(x, dtype=float)
        if x.shape != (self.dim,):
            raise ValueError(f"a point of this space has {self.dim} coordinates, got shape {x.shape}")
        n = self.channels.dim
        out = dict(self.channels.decode(x[:n]))
        for u, xi in zip(self.weight_units, np.clip(x[n:], 0.0, 1.0)):
            out[u.name] = u.choices[int(round(float(xi) * (len(u.choices) - 1)))]
        return out

    def encode(self, config: Mapping[str, int]) -> np.ndarray:
        ch, wt = self._split(config)
        tail = [u.choices.index(wt[u.name]) / (len(u.choices) - 1) for u in self.weight_units]
        return np.concatenate([self.channels.encode(ch), np.asarray(tail, dtype=float)])

    def ratios(self, config: Mapping[str, int]) -> dict[str, float]:
        """Kept fraction per unit: of the channels, of the (channel-pruned) weights."""
        ch, wt = self._split(config)
        return {**self.channels.ratios(ch), **{k: v / 1000 for k, v in wt.items()}}

    def ratio_lower_bounds(self) -> dict[str, float]:
        return {**self.channels.ratio_lower_bounds(),
                **{u.name: u.minimum / 1000 for u in self.weight_units}}

    def layer_table(self, config: Mapping[str, int]) -> LayerTable:
        """The channel space's rows of the channel part; every row of a weight unit's layer
        (each call) carries ``weight_elements`` (the channel-pruned weight's elements),
        ``weight_nonzero`` (kept), ``weight_rows`` (output channels) and ``dense_macs`` (its
        MACs), and the first call's row ``params`` less the removed weights. ``macs`` stays
        the channel-pruned dense MACs (unlike the weight-only spaces)."""
        ch, wt = self._split(config)
        rows = list(self.channels.layer_table(ch))
        for u, layer in zip(self.weight_units, self._layers):
            first = next(rows[i] for i in layer.rows if rows[i].call == 0)
            elements = weight_elements(first)
            kept = kept_weights(wt[u.name], elements)
            for i in layer.rows:
                r = rows[i]
                rows[i] = replace(r, params=r.params - (elements - kept) if r.call == 0
                                  else r.params, weight_elements=elements,
                                  weight_nonzero=kept, weight_rows=r.out_channels,
                                  dense_macs=r.macs)
        return tuple(rows)

    def apply(self, model: nn.Module, config: Mapping[str, int]) -> nn.Module:
        """The channel space's physically smaller copy, then on each weight unit's layer a
        ``Mask`` parametrization keeping its ``kept_weights`` of largest |w| (ties: the first
        in storage order; the stored weights are zeroed where masked too). A masked ``model``
        is pruned as its masked weights."""
        ch, wt = self._split(config)
        if any(masks_of(m) for m in model.modules()):
            model = baked_copy(model)
        work = self.channels.apply(model, ch)
        for u, layer in zip(self.weight_units, self._layers):
            module = work.get_submodule(layer.module)
            elements = int(module.weight.numel())
            keep = kept_weights(wt[u.name], elements)
            if keep >= elements:
                continue
            with torch.no_grad():
                mask = magnitude_mask(canonical(module, module.weight), keep=keep)
                mask = canonical(module, mask)  # back to the stored layout
                module.weight.mul_(mask)
            mask_weight(module, mask)  # (no cycle: a dropped network is freed without gc)
        return work

    def deployable(self, model: nn.Module) -> nn.Module:
        """A copy with the masks baked into plain weights (zeros in place), at the channel-
        pruned shapes: what is saved, exported and rebuilt from a run folder. ``model`` keeps
        working (unlike a plain ``remove_masks`` of a deep copy)."""
        return baked_copy(model)

    def trainable(self, model: nn.Module) -> nn.Module:
        """A copy whose weight units' zero weights are masked again (what ``deployable``
        baked), so fine-tuning keeps them zero."""
        work = copy.deepcopy(model)
        for layer in self._layers:
            module = work.get_submodule(layer.module)
            if masks_of(module):
                continue
            mask = module.weight.detach() != 0
            if int(mask.sum()) < mask.numel():
                mask_weight(module, mask)
        return work

    def broken_units(self, model: nn.Module, config: Mapping[str, int]) -> list[str] | None:
        """The channel part's (masks never change a shape)."""
        ch, _ = self._split(config)
        return self.channels.broken_units(model, ch)

    def channel_scores(self, model: nn.Module) -> list[np.ndarray]:
        """Not given: channel counts and weight shares cannot be ranked on one scale."""
        raise UnitFactsError("the channel+unstructured space mixes channel units and weight "
                             "units, whose scores cannot be ranked together; use a search agent "
                             "(random, tpe, ...)")

    def unit_layers(self) -> list[list[tuple[int, int, int, int]]]:
        """Not given: a weight unit's layer shape depends on the channel part."""
        raise UnitFactsError("the channel+unstructured space's weight units prune layers whose "
                             "shapes the channel units set; use a search agent (random, tpe, "
                             "...)")

    def describe(self) -> list[dict[str, object]]:
        """The channel space's rows, then one per weight unit (``permille`` of its weights)."""
        return [*self.channels.describe(),
                *({"unit": u.name, "kind": u.kind, "permille": u.full, "min": u.minimum,
                   "choices": len(u.choices), "layers": 1} for u in self.weight_units)]
