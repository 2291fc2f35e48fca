"""Structured channel pruning: units are Torch-Pruning dependency groups.

Torch-Pruning's DepGraph (Fang et al., CVPR 2023) finds which layers must lose the same
channels together: a conv's outputs, its BatchNorm, the next layers' inputs, every branch of a
residual add, a depthwise conv's inputs and outputs. Each such group is one *unit* here; a
configuration gives the number of channels each unit keeps. We wrap Torch-Pruning rather than
re-implementing it; the rest of autoprune only sees our types.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .base import (LayerRow, LayerTable, SearchSpace, Unit, UntraceableModelError, call_name,
                   register_space)

__all__ = ["ChannelSpace", "channel_choices"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def channel_choices(full: int, *, round_to: int, min_ratio: float) -> tuple[int, ...]:
    """Channel counts a unit of ``full`` channels may keep: multiples of ``round_to`` from the
    lower bound up, plus ``full`` itself. The lower bound is ``min_ratio`` of the channels
    rounded up (AMC clips preserve ratios to [0.2, 1] so no layer vanishes)."""
    step = max(1, round_to)
    lowest = max(step, math.ceil(min_ratio * full / step) * step)
    lowest = min(lowest, full)
    return tuple(sorted(set(range(lowest, full, step)) | {full}))


@dataclass(frozen=True, kw_only=True)
class _RowTemplate:
    """Everything about a costed layer that does not depend on the configuration."""

    name: str
    kind: str
    in_full: int
    out_full: int
    in_unit: str | None
    out_unit: str | None
    depthwise: bool
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    groups: int
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    batch: int
    rows: int
    bias: bool
    params_per_channel: int
    fixed_params: int
    call: int = 0


def _as_tuple(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def _traceable_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode (tracing must not touch BN statistics) whose parameters require
    grad (Torch-Pruning traces through autograd)."""
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(True)
    return work


def _build_graph(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tp.DependencyGraph:
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)
    except Exception as err:  # noqa: BLE001 - any tracing failure becomes one clear error
        raise UntraceableModelError(
            f"Torch-Pruning could not trace {type(model).__name__} with the example inputs "
            f"({type(err).__name__}: {err}). Fix: make forward() run on the example inputs using "
            "differentiable tensor operations only (no .numpy(), .item() or .detach() on the "
            "feature path) and return a tensor, or pass example inputs of the right shape."
        ) from err


@register_space("channel")
class ChannelSpace(SearchSpace):
    """Channels kept per coupled group, rounded to a multiple, bounded below."""


    def __init__(self, *, units: Sequence[Unit], rows: Sequence[_RowTemplate],
                 example_inputs: tuple[torch.Tensor, ...], round_to: int, min_ratio: float) -> None:
        if not units:
            raise UntraceableModelError(
                "No prunable channel groups were found (every conv/linear feeds the model output "
                "directly or has too few channels for the rounding). Fix: use a model with "
                "hidden conv/linear layers, or lower --round-to / --min-ratio."
            )
        self.units: tuple[Unit, ...] = tuple(units)
        self._rows = tuple(rows)
        self._index = {u.name: i for i, u in enumerate(self.units)}
        self.example_inputs = example_inputs
        self.round_to = round_to
        self.min_ratio = min_ratio

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
                   round_to: int = 8, min_ratio: float = 0.2,
                   ignored_layers: Sequence[str] = ()) -> ChannelSpace:
        """Find the units of ``model`` (left untouched) by tracing it on ``example_inputs``."""
        if not 0.0 < min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in (0, 1], got {min_ratio}")
        if round_to < 1:
            raise ValueError(f"round_to must be a positive integer, got {round_to}")
        inputs = _as_tuple(example_inputs)
        work = _traceable_copy(model)
        name_of = {m: n for n, m in work.named_modules()}
        unknown = set(ignored_layers) - set(name_of.values())
        if unknown:
            raise ValueError(f"ignored_layers names no layer of the model: {sorted(unknown)}")
        shapes = _record_shapes(work, inputs)
        graph = _build_graph(work, inputs)
        module_of = {n: m for m, n in name_of.items()}
        ignored = [module_of[n] for n in ignored_layers]

        order = {n: i for i, n in enumerate(name_of.values())}
        units: list[Unit] = []
        out_owner: dict[str, str] = {}
        in_owner: dict[str, str] = {}
        for group in graph.get_all_groups(ignored_layers=ignored):
            outs, ins, touches_output = [], [], False
            for dep, _ in group:
                node = dep.target
                is_out = dep.handler.__name__ == "prune_out_channels"
                if is_out and not node.outputs:
                    touches_output = True  # pruning it would change the model's output shape
                if not isinstance(node.module, nn.Module) or node.module not in name_of:
                    continue
                (outs if is_out else ins).append(name_of[node.module])
            if touches_output or not outs:
                continue
            full = len(group[0].idxs)
            choices = channel_choices(full, round_to=round_to, min_ratio=min_ratio)
            if len(choices) < 2:
                continue
            members = tuple(sorted(set(outs), key=order.__getitem__))
            primary = [n for n in members if isinstance(module_of[n], (*_CONVS, nn.Linear))]
            unit = Unit(name=(primary or list(members))[0], full=full, choices=choices,
                        members=members)
            units.append(unit)
            for n in members:
                out_owner[n] = unit.name
            for n in ins:
                in_owner[n] = unit.name
        units.sort(key=lambda u: order[u.name])
        rows = _row_templates(work, shapes, out_owner, in_owner)
        return cls(units=units, rows=rows, example_inputs=inputs, round_to=round_to,
                   min_ratio=min_ratio)

    # ------------------------------------------------------------------ the contract
    @property
    def dim(self) -> int:
        return len(self.units)

    def decode(self, x: Sequence[float]) -> dict[str, int]:
        x = np.asarray(x, dtype=float)
        if x.shape != (self.dim,):
            raise ValueError(f"a point of this space has {self.dim} coordinates, got shape {x.shape}")
        config = {}
        for u, xi in zip(self.units, np.clip(x, 0.0, 1.0)):
            config[u.name] = u.choices[int(round(float(xi) * (len(u.choices) - 1)))]
        return config

    def encode(self, config: Mapping[str, int]) -> np.ndarray:
        full = self.complete_config(config)
        x = np.empty(self.dim)
        for i, u in enumerate(self.units):
            k = int(np.argmin([abs(c - full[u.name]) for c in u.choices]))
            x[i] = k / (len(u.choices) - 1)
        return x

    def dense_config(self) -> dict[str, int]:
        return {u.name: u.full for u in self.units}

    def min_config(self) -> dict[str, int]:
        return {u.name: u.minimum for u in self.units}

    def ratios(self, config: Mapping[str, int]) -> dict[str, float]:
        """Kept fraction of channels per unit."""
        full = self.complete_config(config)
        return {u.name: full[u.name] / u.full for u in self.units}

    def ratio_lower_bounds(self) -> dict[str, float]:
        return {u.name: u.minimum / u.full for u in self.units}

    def layer_table(self, config: Mapping[str, int]) -> LayerTable:
        ch = self.complete_config(config)
        table = []
        for r in self._rows:
            out_c = ch[r.out_unit] if r.out_unit else r.out_full
            in_c = out_c if r.depthwise else (ch[r.in_unit] if r.in_unit else r.in_full)
            table.append(LayerRow(
                name=r.name, kind=r.kind, in_channels=in_c, out_channels=out_c, kernel=r.kernel,
                stride=r.stride, groups=out_c if r.depthwise else r.groups, in_size=r.in_size,
                out_size=r.out_size, batch=r.batch, rows=r.rows, bias=r.bias,
                params_per_channel=r.params_per_channel, fixed_params=r.fixed_params,
                call=r.call))
        return tuple(table)

    def apply(self, model: nn.Module, config: Mapping[str, int]) -> nn.Module:
        """A physically smaller copy: each unit keeps its channels of largest L2 magnitude
        (summed over the whole coupled group, Torch-Pruning's GroupMagnitudeImportance)."""
        ch = self.complete_config(config)
        was_training = model.training
        grad_flags = [p.requires_grad for p in model.parameters()]
        work = _traceable_copy(model)
        graph = _build_graph(work, self.example_inputs)
        module_of = dict(work.named_modules())
        importance = tp.importance.GroupMagnitudeImportance(p=2)
        for u in self.units:
            keep = ch[u.name]
            if keep >= u.full:
                continue
            root = module_of[u.name]
            prune_fn = graph.get_pruner_of_module(root).prune_out_channels
            group = graph.get_pruning_group(root, prune_fn, list(range(u.full)))
            with torch.no_grad():
                scores = importance(group)
            order = torch.argsort(scores, descending=True)
            drop = sorted(order[keep:].tolist())
            graph.get_pruning_group(root, prune_fn, drop).prune()
        for p, flag in zip(work.parameters(), grad_flags):
            p.requires_grad_(flag)
        return work.train(was_training)

    # ------------------------------------------------------------------ helpers
    def complete_config(self, config: Mapping[str, int]) -> dict[str, int]:
        """``config`` with every unit present and every count checked."""
        unknown = set(config) - set(self._index)
        if unknown:
            raise ValueError(f"configuration names unknown units {sorted(unknown)}; "
                             f"units are {[u.name for u in self.units]}")
        out = {}
        for u in self.units:
            c = int(config.get(u.name, u.full))
            if not 1 <= c <= u.full:
                raise ValueError(f"unit {u.name!r} keeps {c} channels; it must keep 1..{u.full}")
            out[u.name] = c
        return out

    def channel_scores(self, model: nn.Module) -> list[np.ndarray]:
        """Per unit, one importance per channel: the L2 magnitude of the channel's whole coupled
        group (``GroupMagnitudeImportance(p=2)`` without normalisation), the scores by which
        ``apply`` chooses the channels a unit keeps."""
        work = _traceable_copy(model)
        graph = _build_graph(work, self.example_inputs)
        module_of = dict(work.named_modules())
        importance = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
        scores = []
        for u in self.units:
            root = module_of[u.name]
            prune_fn = graph.get_pruner_of_module(root).prune_out_channels
            group = graph.get_pruning_group(root, prune_fn, list(range(u.full)))
            with torch.no_grad():
                scores.append(importance(group).detach().cpu().double().numpy())
        return scores

    def unit_layers(self) -> list[list[tuple[int, int, int, int]]]:
        """Per unit, the weight shape ``(in_channels / groups, out_channels, kernel_h,
        kernel_w)`` of every conv or linear layer whose output channels it owns (dense sizes;
        linear layers and 1-D kernels fill the missing sizes with 1)."""
        out: dict[str, list[tuple[int, int, int, int]]] = {u.name: [] for u in self.units}
        for r in self._rows:
            if r.kind not in ("conv", "linear") or r.out_unit not in out or r.call:
                continue  # (a module called again has no weights of its own)
            kernel = (tuple(r.kernel) + (1, 1))[:2] if r.kind == "conv" else (1, 1)
            fan_in = 1 if r.depthwise else r.in_full // max(1, r.groups)
            out[r.out_unit].append((fan_in, r.out_full, int(kernel[0]), int(kernel[1])))
        return [out[u.name] for u in self.units]

    def describe(self) -> list[dict[str, object]]:
        """One row per unit, for tables and JSON."""
        return [{"unit": u.name, "channels": u.full, "min": u.minimum, "choices": len(u.choices),
                 "layers": len(u.members)} for u in self.units]


def _record_shapes(model: nn.Module, inputs: tuple[torch.Tensor, ...]
                   ) -> dict[str, list[tuple[torch.Size, torch.Size]]]:
    """Input and output shape of every call of every leaf module with parameters (a module
    called more than once, weights shared, does work at each call)."""
    shapes: dict[str, list[tuple[torch.Size, torch.Size]]] = {}
    hooks = []
    for name, m in model.named_modules():
        if next(m.children(), None) is None and any(True for _ in m.parameters(recurse=False)):
            def hook(mod: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
                if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    shapes.setdefault(name, []).append((args[0].shape, out.shape))
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as err:  # noqa: BLE001
        raise UntraceableModelError(
            f"{type(model).__name__} failed on the example inputs ({type(err).__name__}: {err}). "
            "Fix: pass example inputs of the shape the model expects."
        ) from err
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _row_templates(model: nn.Module, shapes: Mapping[str, list[tuple[torch.Size, torch.Size]]],
                   out_owner: Mapping[str, str], in_owner: Mapping[str, str]) -> list[_RowTemplate]:
    """One row per parameterised leaf module; a conv or linear layer called more than once gets
    one row per call (``name``, ``name#2``, ...), each with its own shapes, the later ones
    marked by ``call`` so their shared weights are counted once."""
    rows = []
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if not own or next(m.children(), None) is not None:
            continue
        n_params = sum(p.numel() for p in own)
        common = dict(name=name, kernel=(), stride=(), groups=1, in_size=(), out_size=(), batch=1,
                      rows=1, bias=False, params_per_channel=0, fixed_params=0, depthwise=False,
                      in_unit=in_owner.get(name), out_unit=out_owner.get(name))
        calls = shapes.get(name, [])
        if isinstance(m, _CONVS) and calls:
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            for k, (x_shape, y_shape) in enumerate(calls):
                rows.append(_RowTemplate(**{
                    **common, "name": call_name(name, k), "call": k,
                    "kernel": tuple(m.kernel_size), "stride": tuple(m.stride),
                    "groups": m.groups, "in_size": tuple(x_shape[2:]),
                    "out_size": tuple(y_shape[2:]), "batch": int(x_shape[0]),
                    "rows": int(x_shape[0]), "bias": m.bias is not None,
                    "depthwise": depthwise}, kind="conv", in_full=m.in_channels,
                    out_full=m.out_channels))
        elif isinstance(m, nn.Linear) and calls:
            for k, (x_shape, _) in enumerate(calls):
                rows.append(_RowTemplate(**{
                    **common, "name": call_name(name, k), "call": k,
                    "rows": int(np.prod(x_shape[:-1])), "batch": int(x_shape[0]),
                    "bias": m.bias is not None}, kind="linear", in_full=m.in_features,
                    out_full=m.out_features))
        elif isinstance(m, _NORMS) and name in out_owner:
            channels = own[0].shape[0]
            common.update(params_per_channel=n_params // channels)
            rows.append(_RowTemplate(kind="norm", in_full=channels, out_full=channels, **common))
        else:
            common.update(fixed_params=n_params, in_unit=None, out_unit=None)
            rows.append(_RowTemplate(kind="fixed", in_full=0, out_full=0, **common))
    return rows
