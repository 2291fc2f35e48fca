"""Structured pruning: units are Torch-Pruning channel groups and attention heads.

Torch-Pruning's DepGraph (Fang et al., CVPR 2023) finds which layers must lose the same
channels together: a conv's outputs, its BatchNorm, the next layers' inputs, every branch of a
residual add or a concatenation, a depthwise conv's inputs and outputs, both halves of a
chunked gate. Each such group is one *unit*; a group that runs through an attention layer's
projections becomes a unit of whole heads (``attention.py``). A configuration gives the number
of elements (channels, heads) each unit keeps: a unit's channels are ranked by the space's
criterion (``criteria.py``; L2 group magnitude by default), heads by their L2 magnitude.

Costs are exact by construction (``exact.py``, ``layers.py``): every size is measured as an
affine function of the units' widths on a probed copy, and the space checks itself against
direct counts at further widths before it is handed out. A unit that breaks the model when
pruned, or that cannot be costed exactly, is kept dense and named in ``notes``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from itertools import chain

import numpy as np
import torch
from torch import nn

from .base import CountedSpace, LayerTable, Unit, UntraceableModelError, register_space
from .criteria import Criterion, L2Magnitude, as_criterion
from .gather import build_trial, decide, plannable
from .expert_lists import find_list_counts, tie_routed, vanishing
from .experts import find_expert_counts, find_experts, routed_shares, sync_hidden
from .experts_pruner import ExpertsPruner as Pruner
from .exact import ProbeError, RunLog, ShortProbeMismatch, probe, run_log, short_inputs
from .importance import dense_squares
from .layers import LayerPlan, plan_rows
from .memory import release
from .pruner import Candidate, Template, tensor_key
from .reference import recurrent_macs, reference_params
from .moe import template as traced_template
from .tied_embeddings import couple_tied_embeddings
from .tracing import (Output, as_inputs, call_model, inner_outputs_note, prefix_views,
                      traceable_copy)
from .units import FLOORS, channel_choices, find_candidates, floor_of

__all__ = ["FLOORS", "ChannelSpace", "channel_choices", "floor_of"]

@register_space("channel")
class ChannelSpace(CountedSpace):
    """Elements kept per unit (channels rounded to a multiple, whole heads), bounded below;
    ``criterion`` ranks the channels of each unit (``criteria.py``)."""

    def __init__(self, *, candidates: Sequence[Candidate], plan: LayerPlan,
                 example_inputs: tuple[torch.Tensor, ...], round_to: int,
                 min_ratio: float | None, output: Output = None, notes: Sequence[str] = (),
                 criterion: Criterion | None = None) -> None:
        if not candidates:
            raise _nothing_prunable(notes)
        self._candidates = tuple(candidates)
        self.units: tuple[Unit, ...] = tuple(c.unit for c in candidates)
        self._plan = plan
        self._index = {u.name: i for i, u in enumerate(self.units)}
        self.example_inputs = example_inputs
        self.round_to = round_to
        self.min_ratio = min_ratio
        self.output = output
        self.notes: tuple[str, ...] = tuple(notes)
        self.criterion: Criterion = criterion if criterion is not None else L2Magnitude()
        self._scored: tuple | None = None  # a data criterion's dense scores: (model, key, scores)
        self._template: Template | None = None  # the dense model traced once (one process)
        heads = any(c.heads is not None for c in self._candidates)
        if heads and self.criterion.name not in ("l1", "l2"):
            self.notes += (f"attention heads and head positions are ranked by their L2 "
                           f"magnitude: criterion {self.criterion.name!r} ranks channel groups "
                           "only",)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_scored"] = None  # held for one model of this process only
        state["_template"] = None
        return state

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
                   round_to: int = 8, min_ratio: float | None = None,
                   ignored_layers: Sequence[str] = (), output: Output = None,
                   prune_head_dims: bool = False,
                   criterion: str | Criterion = "l2") -> ChannelSpace:
        """Find the units of ``model`` (left untouched) by tracing it on ``example_inputs``;
        ``output`` names the model's value among its outputs (default: the first tensor).
        Attention heads are pruned whole; ``prune_head_dims`` adds a unit per attention
        layer for the positions inside its heads (the same number kept in every head).
        ``criterion`` (a registered name or a :class:`Criterion`; a data criterion made by
        ``make_criterion(name, calibration=...)``) ranks each unit's channels. ``min_ratio``
        is the fewest elements every unit keeps, as a fraction; ``None`` (the default) gives
        each kind of unit its own floor (``FLOORS``: CNN channels 0.2, MLP neurons 0.05, the
        residual width 0.5, heads 0.2, a MoE layer's experts 0.2)."""
        criterion = as_criterion(criterion)
        if min_ratio is not None and not 0.0 < min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in (0, 1], got {min_ratio}")
        if round_to < 1:
            raise ValueError(f"round_to must be a positive integer, got {round_to}")
        inputs = as_inputs(example_inputs)
        names = {n for n, _ in model.named_modules()}
        unknown = set(ignored_layers) - names
        if unknown:
            raise ValueError(f"ignored_layers names no layer of the model: {sorted(unknown)}")
        try:
            dense = run_log(traceable_copy(model), inputs, output)
        except UntraceableModelError:
            raise
        except Exception as err:  # noqa: BLE001
            raise UntraceableModelError(
                f"{type(model).__name__} failed on the example inputs ({type(err).__name__}: "
                f"{err}). Fix: pass example inputs of the shape the model expects.") from err
        template = traced_template(model, inputs, output)
        couple_tied_embeddings(template.graph)
        pruner = Pruner(template)
        candidates, notes = find_candidates(pruner, dense.sequence, round_to, min_ratio,
                                             set(ignored_layers), prune_head_dims)
        notes += inner_outputs_note(template.graph, output)
        if type(criterion).check is not Criterion.check:  # (a group search per unit)
            criterion.check({c.unit.name: pruner.group_of(c) for c in candidates
                             if c.heads is None})
        candidates = tie_routed(pruner.model, dense, candidates, notes)
        candidates += find_experts(pruner.model, set(ignored_layers), lambda n, step: channel_choices(
            n, round_to=math.lcm(step, round_to), min_ratio=floor_of("neurons", min_ratio)))
        candidates += find_expert_counts(pruner.model, set(ignored_layers),
                                         floor_of("experts", min_ratio),
                                         routed_shares(pruner.model, inputs))
        candidates += find_list_counts(pruner.model, dense, candidates, set(ignored_layers),
                                       floor_of("experts", min_ratio), notes)
        with prefix_views():  # sizes only: the probed copies are views of the dense weights
            space = cls._probed(model, inputs, output, template, candidates, notes, dense,
                                round_to, min_ratio, criterion)
        del pruner
        release()  # the probed copies' memory, back to the system
        return space

    @classmethod
    def _probed(cls, model: nn.Module, inputs: tuple[torch.Tensor, ...], output: Output,
                template: Template, candidates: list[Candidate], notes: list[str],
                dense: RunLog, round_to: int, min_ratio: float | None,
                criterion: Criterion) -> ChannelSpace:
        """The space of ``candidates`` whose sizes probe exactly: a unit that breaks the model
        or disagrees with a direct count is kept dense with a note."""
        pruner = Pruner(template)
        check_each = False
        short = short_inputs(inputs)  # per-unit passes on a few tokens, where that is exact
        while True:
            try:
                found = probe(pruner.model, inputs, [_step(c) for c in candidates],
                              lambda _, u, n: pruner.remove_last(candidates[u], n), output,
                              check_each=check_each, products=_products(candidates),
                              dense=dense, short=short,
                              vanish=vanishing(pruner.model, candidates))
            except ShortProbeMismatch:
                short, pruner = None, Pruner(template)
                continue
            except ProbeError as err:
                if err.unit is not None:
                    notes.append(_kept_dense(candidates.pop(err.unit), str(err)))
                elif check_each and short is None:  # (cannot happen: each unit is checked)
                    raise _uncostable(err, notes) from err
                else:  # find the unit: a pass after each, on the whole example if need be
                    short = None if check_each else short
                    check_each = True
                pruner = Pruner(template)
                continue
            except Exception as err:  # noqa: BLE001 - not one unit's: one clear error
                raise _uncostable(err, notes) from err
            try:
                plan = plan_rows(model, found)
            except Exception as err:  # noqa: BLE001
                raise _uncostable(err, notes) from err
            space = cls(candidates=candidates, plan=plan,
                        example_inputs=inputs, round_to=round_to, min_ratio=min_ratio,
                        output=output, notes=notes, criterion=criterion) if candidates else None
            if space is not None:
                space._template = template
            bad = space._disagreements(model) if space is not None else {}
            if not bad:
                break
            for u in sorted(bad, reverse=True):
                notes.append(_kept_dense(candidates.pop(u), bad[u]))
            pruner = Pruner(template)
        if space is None:
            raise _nothing_prunable(notes)
        return space

    def _disagreements(self, model: nn.Module) -> dict[int, str]:
        """Units whose costs disagree with a direct count, checked at a configuration with each
        unit at its minimum or at a random width; each unit alone when that disagrees."""
        rng = np.random.default_rng(0)  # every unit at its minimum or at a random width
        x = np.where(rng.random(self.dim) < 0.5, 0.0, rng.random(self.dim))
        x[rng.integers(self.dim)] = 0.0
        if self._agrees(model, self.decode(x)) is None:
            return {}
        out = {}
        for i, u in enumerate(self.units):
            reason = self._agrees(model, {u.name: u.minimum})
            if reason is not None:
                out[i] = reason
        return out or {i: "its costs disagree with a direct count together with other units"
                       for i in range(len(self.units))}

    def _agrees(self, model: nn.Module, config: Mapping[str, int]) -> str | None:
        try:  # sizes do not depend on which channels go: no data pass for this check
            pruned = self._prune(model, config, data=False).eval()
            log = run_log(pruned, self.example_inputs, self.output)
        except Exception as err:  # noqa: BLE001
            return f"the pruned network fails ({type(err).__name__}: {err})"
        try:
            table = self.layer_table(config)
        except Exception as err:  # noqa: BLE001 - a unit the layer table cannot size
            return f"its layer sizes cannot be computed ({type(err).__name__}: {err})"
        modules = dict(pruned.named_modules())
        macs = sum(o.macs for o in log.ops) + sum(
            recurrent_macs(modules[name], steps) for name, steps in log.recurrent)
        want = (sum(r.macs for r in table), sum(r.params for r in table))
        got = (macs, reference_params(pruned))
        if want != got:
            return (f"its MACs / parameters are {got[0]:,} / {got[1]:,} when pruned, "
                    f"predicted {want[0]:,} / {want[1]:,}")
        return None

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

    def layer_table(self, config: Mapping[str, int]) -> LayerTable:
        ch = self.complete_config(config)
        return self._plan.table([u.full - ch[u.name] for u in self.units])

    def cost_totals(self) -> Callable[[Mapping[str, int]], dict[str, float]]:
        """``config -> {"macs", "params"}``, what ``layer_table`` sums to, evaluated only
        where a configuration differs from the thinnest one (for fitting the cost forms)."""
        near = self._plan.totals_near([u.full - u.minimum for u in self.units])

        def totals(config: Mapping[str, int]) -> dict[str, float]:
            ch = self.complete_config(config)
            macs, params = near([u.full - ch[u.name] for u in self.units])
            return {"macs": float(macs), "params": float(params)}

        return totals

    def apply(self, model: nn.Module, config: Mapping[str, int]) -> nn.Module:
        """A physically smaller copy: each unit keeps its elements of largest score under the
        space's criterion (default: L2 magnitude summed over the whole coupled group,
        Torch-Pruning's GroupMagnitudeImportance); heads keep those of largest L2 magnitude
        over the head's projections. Weight-only criteria score each unit on the copy as it
        is pruned; data criteria score every unit once on the dense ``model`` (cached for it)."""
        return self._prune(model, config)

    def _prune(self, model: nn.Module, config: Mapping[str, int], data: bool = True) -> nn.Module:
        ch = self.complete_config(config)
        was_training = model.training
        grad_flags = [p.requires_grad for p in model.parameters()]
        template = self._template_of(model)
        if data and plannable(template, self._candidates, self.criterion):
            # decided on a view of the dense weights, built by one selection per tensor
            dense = self._dense_scores(model, lambda: Pruner(template, self.criterion))
            work = build_trial(decide(template, self._candidates, ch, self.criterion, dense))
            sync_hidden(work)
            for p, flag in zip(work.parameters(), grad_flags):
                p.requires_grad_(flag)
            return work.train(was_training)
        pruner = Pruner(template, self.criterion)
        dense = self._dense_scores(model, lambda: pruner) if data else {}
        # channel groups through Torch-Pruning's graph first, then heads, then head positions
        with dense_squares(pruner.template.pointers, pruner.template.squares):
            for c in sorted(self._candidates, key=lambda c: (c.heads is not None, c.dims)):
                if data:
                    pruner.keep(c, ch[c.unit.name], dense.get(c.unit.name))
                else:  # sizes only: which elements go does not change any size
                    pruner.remove_last(c, c.unit.full - ch[c.unit.name])
        work = pruner.own() if data else pruner.model  # (sizes only: counted, then dropped)
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
                raise ValueError(f"unit {u.name!r} keeps {c} {u.kind}; it must keep 1..{u.full}")
            out[u.name] = c
        return out

    def broken_units(self, model: nn.Module, config: Mapping[str, int]) -> list[str] | None:
        ch = self.complete_config(config)

        def fails(cfg: Mapping[str, int]) -> BaseException | None:
            try:
                with torch.no_grad():
                    call_model(self.apply(model, cfg).eval(), self.example_inputs)
            except Exception as err:  # noqa: BLE001 - what the caller asked about
                return err
            return None

        if fails(ch) is None:
            return None
        return [u.name for u in self.units
                if ch[u.name] < u.full and fails({u.name: ch[u.name]}) is not None]

    def channel_scores(self, model: nn.Module) -> list[np.ndarray]:
        """Per unit, one importance per element on the dense ``model``, the scores by which
        ``apply`` chooses what a unit keeps: the criterion's (default: the L2 magnitude of the
        element's whole coupled group, ``GroupMagnitudeImportance(p=2)`` unnormalised); heads
        and head positions by L2 magnitude."""
        pruner = Pruner(self._template_of(model), self.criterion)
        dense = self._dense_scores(model, lambda: pruner)
        return [dense[c.unit.name] if c.unit.name in dense else pruner.scores(c)
                for c in self._candidates]

    def _template_of(self, model: nn.Module) -> Template:
        """``model`` traced once for this space and kept while its tensors are unchanged."""
        held = self._template
        if held is None or held.dense is not model or held.key != tensor_key(model):
            held = self._template = traced_template(model, self.example_inputs, self.output)
            couple_tied_embeddings(held.graph)
        return held

    def _dense_scores(self, model: nn.Module, make_pruner: Callable[[], Pruner]
                      ) -> dict[str, np.ndarray]:
        """A data criterion's scores of every channel unit, measured once over the calibration
        batches on a pruner's copy of the dense ``model`` (still unpruned) and kept for
        ``model`` while its parameters and buffers are unchanged; ``{}`` for weight-only."""
        if not self.criterion.needs_data:
            return {}
        key = tuple((id(t), t._version, t.data_ptr())
                    for t in chain(model.parameters(), model.buffers()))
        held = getattr(self, "_scored", None)
        if held is not None and held[0]() is model and held[1] == key:
            return held[2]
        pruner = make_pruner()
        stats = self.criterion.measure(pruner.model, self.output)
        scores = {c.unit.name: pruner.scores(c, stats) for c in self._candidates if c.heads is None}
        self._scored = (weakref.ref(model), key, scores)
        return scores

    def unit_layers(self) -> list[list[tuple[int, int, int, int]]]:
        """Per unit, the weight shape ``(in_channels / groups, out_channels, kernel_h,
        kernel_w)`` of every conv or linear layer whose output channels it owns (dense sizes;
        linear layers and 1-D kernels fill the missing sizes with 1)."""
        out: list[list[tuple[int, int, int, int]]] = [[] for _ in self.units]
        for plan, r in zip(self._plan.rows, self.layer_table({})):
            if r.kind not in ("conv", "linear") or r.call or not plan.shape:
                continue  # (a module called again has no weights of its own)
            out_dim = plan.shape[1] if plan.layout in ("conv1d", "conv_transpose") else plan.shape[0]
            kernel = (tuple(r.kernel) + (1, 1))[:2] if r.kind == "conv" else (1, 1)
            fan_in = r.in_channels // max(1, r.groups)
            for u, _ in out_dim.slopes:
                out[u].append((fan_in, r.out_channels, int(kernel[0]), int(kernel[1])))
        return out

    def describe(self) -> list[dict[str, object]]:
        """One row per unit, for tables and JSON."""
        return [{"unit": u.name, "kind": u.kind, "channels": u.full, "min": u.minimum,
                 "choices": len(u.choices), "layers": len(u.members)} for u in self.units]


def _nothing_prunable(notes: Sequence[str]) -> UntraceableModelError:
    return UntraceableModelError(
        "No prunable channel groups or attention heads were found (every conv/linear feeds the "
        "model output directly, has too few channels for the rounding, or breaks the model when "
        "pruned). Fix: use a model with hidden conv/linear layers, or lower --round-to / "
        "--min-ratio." + "".join(f"\n  - {n}" for n in notes))


def _uncostable(err: BaseException, notes: Sequence[str]) -> UntraceableModelError:
    return UntraceableModelError(
        f"The costs of this model's units could not be measured ({type(err).__name__}: {err}). "
        "Fix: leave the layers named in the error out with ignored_layers, or use another "
        "--space" + "".join(f"\n  - {n}" for n in notes))


def _products(candidates: Sequence[Candidate]) -> list[tuple[int, int]]:
    """Pairs (heads, head positions) of one attention layer: their counts multiply."""
    heads = {c.heads.module: i for i, c in enumerate(candidates) if c.heads and not c.dims}
    return [(heads[c.heads.module], i) for i, c in enumerate(candidates)
            if c.dims and c.heads.module in heads]


def _step(c: Candidate) -> int:
    return c.unit.choices[-1] - c.unit.choices[-2]


def _kept_dense(c: Candidate, why: str) -> str:
    layers = ", ".join(c.unit.members[:4]) + (", ..." if len(c.unit.members) > 4 else "")
    return (f"{c.unit.name} ({c.unit.kind} of {layers}) is kept dense: {why}. The rest of the "
            f"model is searched; to leave these layers out on purpose, pass "
            f"ignored_layers=[{c.unit.members[0]!r}]")
