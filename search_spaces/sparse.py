"""Weight sparsity: units are the prunable weight tensors, each kept to a count from a grid.

Two spaces share this class: ``unstructured`` (a layer keeps any ``floor((1 - level) * full)``
of its weights, ``level`` from ``levels``) and ``nm`` (a layer is dense or follows an N:M
pattern: N weights kept in every group of M consecutive weights along its input dimension,
the 2:4 of sparse tensor cores). A configuration gives the number of weights each unit keeps.

Units are the weights of every ``nn.Conv*d``, ``nn.ConvTranspose*d``, ``nn.Linear`` and HF
``Conv1D`` the model calls on the example inputs. Left dense, and named in ``notes``: the
first and last such layer in call order (unless ``include_ends``), every embedding (always),
a weight shared by several modules (tied), and a layer whose weight no grid level thins.

Shapes never change, so the layer table is the dense model's (``layers.plan_rows`` over one
traced run) with every unit's row told how many of its weights are non-zero: its ``macs``
count only the non-zero weights (each used once per output position per batch item in a
conv, once per input row in a linear layer), its ``params`` the kept weights.

``apply`` masks in place: a copy whose unit weights carry a ``torch.nn.utils.parametrize``
parametrization ``Mask`` (``weight * mask``), so masked weights stay zero while the copy is
fine-tuned; :func:`remove_masks` bakes them into plain weights for saving and export.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .base import CountedSpace, LayerRow, LayerTable, Unit, UntraceableModelError, register_space
from .exact import Affine, Probe, run_log
from .layers import plan_rows
from .levels import LevelStore, fingerprint, pack_mask, unpack_mask
from .memory import release, reuse_heap
from .progress import report
from .masks import (baked_copy, canonical, input_dim, layer_types, magnitude_mask,
                    magnitude_masks, mask_of, mask_weight, masked, masks_of, remove_masks)
from .sparse_options import (DEFAULT_LEVELS, WEIGHT_CRITERIA, WeightCriterion,
                             check_calibration, check_levels, check_nm, data_criteria,
                             model_key, parse_nm, stat_tensors, tied_modules)
from .tracing import Output, aliased_copy, as_inputs, own_tensors, traceable_copy

__all__ = ["NMSparsitySpace", "UnstructuredSparsitySpace", "WeightCriterion",
           "WeightSparsitySpace", "magnitude_mask", "mask_of", "parse_nm", "remove_masks"]

@dataclass(frozen=True)
class _Layer:
    """A unit's layer: its rows in the table (index, input vectors of its weight), the N:M
    pattern of each kept count, and its dense weight shape as ``unit_layers`` gives it."""

    rows: tuple[tuple[int, int], ...]
    patterns: Mapping[int, tuple[int, int]]
    shape: tuple[int, int, int, int]


class WeightSparsitySpace(CountedSpace):
    """Weights kept per layer, from a grid of sparsity levels (``unstructured``) or of N:M
    patterns (``nm``); registered under both names (``granularity`` tells them apart)."""

    granularity: ClassVar[str] = "unstructured"

    def __init__(self, *, units: Sequence[Unit], layers: Sequence[_Layer], rows: LayerTable,
                 example_inputs: tuple[torch.Tensor, ...], round_to: int, min_ratio: float | None,
                 output: Output, notes: Sequence[str], criterion: WeightCriterion,
                 calibration: list | None, levels: tuple[float, ...],
                 nm: tuple[tuple[int, int], ...]) -> None:
        self.units: tuple[Unit, ...] = tuple(units)
        self._layers = tuple(layers)
        self._rows = tuple(rows)
        self._index = {u.name: i for i, u in enumerate(self.units)}
        self.example_inputs = example_inputs
        self.round_to = round_to
        self.min_ratio = min_ratio
        self.output = output
        self.notes: tuple[str, ...] = tuple(notes)
        self.criterion = criterion
        self.calibration = calibration
        self.levels = levels
        self.nm = nm
        self._stats: tuple | None = None  # a data criterion's statistics: (model, key, stats)
        self._digests: dict[str, str] = {}  # per unit: its statistics' fingerprint
        self._levels: LevelStore | None = None  # the units' pruned levels (level_store)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_stats"] = None  # held for one model of this process only
        state["_digests"] = {}
        state.pop("_unit_rows", None)  # rebuilt where needed
        return state

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
                   round_to: int = 8, min_ratio: float | None = None, output: Output = None,
                   criterion: str | Any = "magnitude",
                   levels: Sequence[float] = DEFAULT_LEVELS,
                   nm: Sequence[str | Sequence[int]] = ("2:4", "1:4"),
                   include_ends: bool = False,
                   calibration: Sequence[tuple[Any, Any]] | None = None) -> WeightSparsitySpace:
        """The weight units of ``model`` (left untouched), found by running it once on
        ``example_inputs``. ``round_to`` and ``min_ratio`` are accepted for the contract and
        ignored: the grid is ``levels`` (shares of weights removed, in [0, 1); 0, dense, is
        always a choice; a unit keeps ``max(1, floor((1 - level) * full))``, so a layer at a
        level is at least that sparse) for ``unstructured`` and ``nm`` (patterns ``"N:M"``; dense is always
        a choice) for ``nm``; each space ignores the other's grid. ``include_ends`` makes the
        first and last conv/linear layers (in call order) units too; embeddings are never
        units, nor is a weight shared by several modules (tied). ``criterion`` (``magnitude``, ``wanda`` or ``sparsegpt``; a name or an object
        with ``.name``) chooses which weights ``apply`` keeps; the data criteria need
        ``calibration``, a list of ``(inputs, targets)`` batches from the training split."""
        name = criterion if isinstance(criterion, str) else getattr(criterion, "name", None)
        if name not in WEIGHT_CRITERIA:
            raise ValueError(f"unknown weight criterion {criterion!r} for the {cls.granularity} "
                             f"space; available: {', '.join(WEIGHT_CRITERIA)}")
        chosen = WeightCriterion(name)
        batches = None
        if chosen.needs_data:
            if calibration is None:
                calibration = getattr(criterion, "calibration", None)
            batches = check_calibration(calibration, name)
            data_criteria()
        grid_levels = check_levels(levels) if cls.granularity == "unstructured" else ()
        patterns = check_nm(nm) if cls.granularity == "nm" else ()
        inputs = as_inputs(example_inputs)
        work = remove_masks(traceable_copy(model))  # an already masked model: its plain weights
        try:
            log = run_log(work, inputs, output)
        except UntraceableModelError:
            raise
        except Exception as err:  # noqa: BLE001
            raise UntraceableModelError(
                f"{type(model).__name__} failed on the example inputs ({type(err).__name__}: "
                f"{err}). Fix: pass example inputs of the shape the model expects.") from err
        params = dict(work.named_parameters())
        found = Probe(params={n: tuple(Affine(int(d)) for d in p.shape) for n, p in params.items()},
                      functional=[(o, tuple(Affine(int(f)) for f in o.factors))
                                  for o in log.functional], dense=log)
        plan = plan_rows(work, found)
        rows = plan.table([])
        modules = dict(work.named_modules())
        types = layer_types()
        layers = [n for n in dict.fromkeys(log.sequence) if isinstance(modules[n], types)
                  and isinstance(getattr(modules[n], "weight", None), torch.Tensor)]
        notes: list[str] = []
        embeddings = [n for n, m in modules.items() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
        if embeddings:
            notes.append(f"embeddings are kept dense: {', '.join(embeddings)}")
        ends = {layers[0], layers[-1]} if layers and not include_ends else set()
        if ends:
            notes.append(f"the first and last layers ({', '.join(sorted(ends))}) are kept dense; "
                         "include_ends=True searches them too")
        tied = tied_modules(work)
        canon = {id(p): n for n, p in params.items()}
        units: list[Unit] = []
        info: list[_Layer] = []
        for name_ in layers:
            if name_ in ends:
                continue
            m = modules[name_]
            if name_ in tied:
                notes.append(f"{name_} is kept dense: its weight is shared with another module")
                continue
            wname = canon[id(m.weight)]
            mine = [(i, sum(v for v, dims in p.macs if dims is found.params[wname]))
                    for i, p in enumerate(plan.rows) if p.name.split("#", 1)[0] == name_
                    and p.kind in ("conv", "conv_transpose", "linear")]
            if not mine or any(v == 0 for _, v in mine):
                notes.append(f"{name_} is kept dense: its weight's MACs could not be read off "
                             "the traced run")
                continue
            full = int(m.weight.numel())
            kept: dict[int, tuple[int, int]] = {}
            if cls.granularity == "nm":
                fan = input_dim(m)
                for n, mm in patterns:
                    if fan % mm == 0:
                        kept[full * n // mm] = (n, mm)
                choices = tuple(sorted(set(kept) | {full}))
                why = (f"its input dimension ({fan}) is not divisible by "
                       f"{' or '.join(str(mm) for _, mm in patterns)}")
            else:
                choices = tuple(sorted({max(1, math.floor((1 - lv) * full + 1e-9))
                                        for lv in grid_levels}))
                why = "no sparsity level removes any of its weights"
            if len(choices) < 2:
                notes.append(f"{name_} is kept dense: {why}")
                continue
            r = rows[mine[0][0]]
            kernel = (tuple(r.kernel) + (1, 1))[:2] if r.kind in ("conv", "conv_transpose") else (1, 1)
            shape = (r.in_channels // max(1, r.groups), r.out_channels, int(kernel[0]), int(kernel[1]))
            units.append(Unit(name=name_, full=full, choices=choices, members=(name_,),
                              kind="weights"))
            info.append(_Layer(rows=tuple(mine), patterns=kept, shape=shape))
        if not units:
            raise UntraceableModelError(
                "No prunable weights were found (no conv/linear layer between the first and the "
                "last, or none the grid can thin). Fix: use a model with hidden conv/linear "
                "layers, or pass include_ends=True." + "".join(f"\n  - {n}" for n in notes))
        return cls(units=units, layers=info, rows=rows, example_inputs=inputs, round_to=round_to,
                   min_ratio=min_ratio, output=output, notes=notes, criterion=chosen,
                   calibration=batches, levels=grid_levels, nm=patterns)

    # ------------------------------------------------------------------ the contract
    @property
    def dim(self) -> int:
        return len(self.units)

    def decode(self, x: Sequence[float]) -> dict[str, int]:
        x = np.asarray(x, dtype=float)
        if x.shape != (self.dim,):
            raise ValueError(f"a point of this space has {self.dim} coordinates, got shape {x.shape}")
        return {u.name: u.choices[int(round(float(xi) * (len(u.choices) - 1)))]
                for u, xi in zip(self.units, np.clip(x, 0.0, 1.0))}

    def encode(self, config: Mapping[str, int]) -> np.ndarray:
        full = self.complete_config(config)
        return np.array([u.choices.index(full[u.name]) / (len(u.choices) - 1) for u in self.units])

    def complete_config(self, config: Mapping[str, int]) -> dict[str, int]:
        """``config`` with every unit present (dense where missing) and every count checked."""
        unknown = set(config) - set(self._index)
        if unknown:
            raise ValueError(f"configuration names unknown units {sorted(unknown)}; "
                             f"units are {[u.name for u in self.units]}")
        out = {}
        for u in self.units:
            c = config.get(u.name, u.full)
            if int(c) != c or int(c) not in u.choices:
                raise ValueError(f"unit {u.name!r} keeps {c} weights, not one of its choices "
                                 f"{list(u.choices)}. Fix: take a count from space.units")
            out[u.name] = int(c)
        return out

    def pattern(self, unit: str, keep: int) -> tuple[int, int] | None:
        """The ``(N, M)`` pattern of unit ``unit`` keeping ``keep`` weights (``None``: dense, or
        any count of the unstructured space)."""
        return self._layers[self._index[unit]].patterns.get(int(keep))

    def layer_table(self, config: Mapping[str, int]) -> LayerTable:
        """The dense model's rows; every row of a unit's layer (each call) carries
        ``weight_elements`` (dense weights), ``weight_nonzero`` (kept), ``weight_rows`` (output
        channels), ``dense_macs``, ``macs`` with only the kept weights' MACs and, on the first
        call's row, ``params`` less the removed weights."""
        kept = self.complete_config(config)
        rows = list(self._rows)
        # a unit's rows depend on its own count only: built once per (unit, count) and kept
        # (repair and the cost forms ask for thousands of tables; the rows are frozen)
        made = self.__dict__.setdefault("_unit_rows", {})
        for k, (u, layer) in enumerate(zip(self.units, self._layers)):
            mine = made.get((k, kept[u.name]))
            if mine is None:
                mine = made[(k, kept[u.name])] = self._unit_rows_at(u, layer, kept[u.name])
            for i, r in mine:
                rows[i] = r
        return tuple(rows)

    def _unit_rows_at(self, u: Unit, layer: _Layer, keep: int) -> tuple[tuple[int, LayerRow], ...]:
        gone = u.full - keep
        out = []
        for i, vectors in layer.rows:
            r = self._rows[i]
            out.append((i, replace(r, macs=r.macs - vectors * gone,
                                   params=r.params - gone if r.call == 0 else r.params,
                                   weight_elements=u.full, weight_nonzero=keep,
                                   weight_rows=r.out_channels, dense_macs=r.macs)))
        return tuple(out)

    def apply(self, model: nn.Module, config: Mapping[str, int]) -> nn.Module:
        """A copy of ``model`` whose pruned units' weights are masked (``Mask``, a
        parametrization; the stored weights are zeroed where masked too); dense units are left
        plain. The space's criterion chooses the kept weights: ``magnitude`` the ``keep`` of
        largest |w| in the layer (``unstructured``; ties: the first in storage order) or the N
        largest of every group (``nm``); ``wanda``/``sparsegpt`` ``weight_masks.prune_layer``
        over statistics measured once per dense ``model`` (SparseGPT also updates the kept
        weights). A masked ``model`` is ranked by its masked weights. Train/eval mode and
        ``requires_grad`` are kept.

        Nothing is copied whole: the copy's modules share ``model``'s weights, each pruned
        unit gets its pruned weight (a level read from the space's :class:`LevelStore`, or
        computed once and written there) and only what no unit prunes is copied."""
        kept = self.complete_config(config)
        work = remove_masks(aliased_copy(model, model))
        pruned = [u for u in self.units if kept[u.name] < u.full]
        stats = self._statistics(model, [u.name for u in pruned]) if pruned and \
            self.criterion.needs_data else {}
        if self._slimmed(stats) and not all(self.level_store.has(self._level_key(
                u, kept[u.name], work.get_submodule(u.name).weight, stats.get(u.name)))
                for u in pruned):  # (a level to prune: SparseGPT needs the Hessians again)
            stats = self._statistics(model, [u.name for u in pruned], full=True)
        for u in pruned:
            module = work.get_submodule(u.name)
            weight, mask = self._level(module, u, kept[u.name], stats.get(u.name))
            module.weight = nn.Parameter(weight, requires_grad=module.weight.requires_grad)
            mask_weight(module, mask, copy=False, unsafe=True)  # (shapes unchanged: no trial run)
        return reuse_heap(own_tensors(work, model))

    def _level(self, module: nn.Module, unit: Unit, keep: int,
               stats: object) -> tuple[torch.Tensor, torch.Tensor]:
        """``module``'s weight (as stored) pruned to ``keep`` and its kept mask, from the level
        store, pruned into it first when missing: magnitude and Wanda keep a mask (the weight
        is the dense one times it), SparseGPT its updated weight."""
        dense = module.weight.detach()
        store = self.level_store
        entry = store.load(self._level_key(unit, keep, dense, stats))
        if entry is None:
            self._prune_levels(module, unit, keep, stats)
            entry = store.load(self._level_key(unit, keep, dense, stats))
        if "weight" in entry:
            weight = entry["weight"].to(dense.device)
            return weight, weight != 0
        mask = unpack_mask(entry["bits"], tuple(dense.shape)).to(dense.device)
        return masked(dense, mask), mask

    def _level_key(self, unit: Unit, keep: int, dense: torch.Tensor, stats: object) -> str:
        return fingerprint(self.criterion.name, unit.name, keep, self.pattern(unit.name, keep),
                           self._digest(unit, stats), tensors=[dense])

    def _digest(self, unit: Unit, stats: object) -> str:
        """A fingerprint of what the data criterion measured for ``unit`` ("" for none), kept
        per unit: a level's name then outlives the Hessians dropped once the store is built
        (``_slim``)."""
        if stats is None:
            return ""
        held = self._digests.get(unit.name)
        if held is None:
            held = self._digests[unit.name] = fingerprint(tensors=stat_tensors(stats))
        return held

    def _slim(self) -> None:
        """Drop SparseGPT's Hessians from the statistics held once every level is in the store:
        a trial reads levels, named by the statistics' fingerprints. A 1.1B decoder's
        Hessians take 7.8 GB; with a trial's network beside them its search passed 20 GB."""
        held = self._stats
        if held is None or self.criterion.name != "sparsegpt":
            return
        for u in self.units:
            self._digest(u, held[2].get(u.name))
        self._stats = (held[0], held[1], {n: replace(v, hessian=None) if getattr(
            v, "hessian", None) is not None else v for n, v in held[2].items()})

    def _slimmed(self, stats: Mapping[str, object]) -> bool:
        return self.criterion.name == "sparsegpt" and any(
            getattr(v, "hessian", 0) is None for v in stats.values())

    def _prune_levels(self, module: nn.Module, unit: Unit, keep: int, stats: object) -> None:
        """Prune ``unit`` to ``keep`` into the level store, and with it every other level that
        the same ranking gives (magnitude and Wanda, unstructured: one sort of the layer for
        all its levels); N:M patterns and SparseGPT's solves one level at a time."""
        dense = module.weight.detach()
        nm = self.pattern(unit.name, keep)
        shared = nm is None and (self.criterion.name == "magnitude" or (
            self.criterion.name == "wanda" and data_criteria().wanda_masks is not None))
        keeps = [k for k in unit.choices if k < unit.full] if shared else [keep]
        with torch.no_grad():
            w = canonical(module, dense)  # [out, in, *k]
            if self.criterion.name == "magnitude":
                masks = magnitude_masks(w, keeps) if shared else \
                    {keep: magnitude_mask(w, keep=None if nm else keep, nm=nm)}
                news = {k: None for k in masks}
            else:
                if shared:
                    masks = data_criteria().wanda_masks(w, keeps, stats)
                    news = {k: None for k in masks}
                else:
                    news = {keep: data_criteria().prune_layer(
                        w.clone(), keep=None if nm else keep, nm=nm,
                        criterion=self.criterion.name, stats=stats, transposed=False)}
                    masks = {k: new != 0 for k, new in news.items()}
            for k, mask in masks.items():
                new = news[k]  # kept as a weight only where the criterion moved weights
                updated = new is not None and not torch.equal(new, w * mask)
                entry = {"weight": canonical(module, new).contiguous().to(dense.dtype)} \
                    if updated else {"bits": pack_mask(canonical(module, mask))}
                self.level_store.save(self._level_key(unit, k, dense, stats), entry)

    def prepare(self, model: nn.Module) -> None:
        """Prune every unit's levels into the level store now (the data criteria's statistics
        measured first), so that a trial only reads them: EvoPress's database, built once per
        search. Levels already in the store are read, not pruned again."""
        names = [u.name for u in self.units]
        stats = self._statistics(model, names) if self.criterion.needs_data else {}
        work = remove_masks(aliased_copy(model, model))  # a masked model: its plain weights
        done, total = 0, self.levels_total()
        report("pruning levels", done, total)
        for u in self.units:
            module = work.get_submodule(u.name)
            dense = module.weight.detach()
            for keep in u.choices:
                if keep < u.full and not self.level_store.has(
                        self._level_key(u, keep, dense, stats.get(u.name))):
                    if self._slimmed(stats):
                        stats = self._statistics(model, names, full=True)
                    self._prune_levels(module, u, keep, stats.get(u.name))
            done += len(u.choices) - 1
            report("pruning levels", done, total)
            release()  # a layer's sorts and levels, back to the system
        del stats
        self._slim()

    def levels_total(self) -> int:
        """How many pruned levels the store can hold: every unit at every count but dense."""
        return sum(len(u.choices) - 1 for u in self.units)

    @property
    def level_store(self) -> LevelStore:
        """Where this space keeps its units' pruned levels (default: a temporary folder of
        this process); :meth:`keep_in` puts them in a folder of the caller's."""
        if self._levels is None:
            self._levels = LevelStore()
        return self._levels

    def keep_in(self, folder: str | Path) -> None:
        """Keep the pruned levels in ``folder`` (a run folder's ``levels/``): a resumed run,
        ``pick`` and Ray workers read what was computed there."""
        self._levels = LevelStore(folder)

    def _statistics(self, model: nn.Module, layers: Sequence[str], full: bool = False
                    ) -> dict[str, object]:
        """The data criterion's statistics of every unit, measured once on a copy of the dense
        ``model`` and kept for it while its parameters and buffers are unchanged (keyed as
        ``criteria.py`` keys its data pass). ``full``: measured again if ``_slim`` dropped
        the Hessians."""
        key = model_key(model)
        held = self._stats
        if held is not None and held[0]() is model and held[1] == key and not (
                full and self._slimmed(held[2])):
            return held[2]
        self._digests = {}
        dense = remove_masks(aliased_copy(model, model)).eval()
        stats = dict(data_criteria().layer_statistics(
            dense, [u.name for u in self.units], self.calibration, self.output,
            need_hessian=self.criterion.name == "sparsegpt"))  # Wanda: the input norms only
        self._stats = (weakref.ref(model), key, stats)
        return stats

    def deployable(self, model: nn.Module) -> nn.Module:
        """A copy with the masks baked into plain weights (zeros in place): what is saved,
        exported and rebuilt from a run folder (a parametrized module does not pickle)."""
        return baked_copy(model)

    def trainable(self, model: nn.Module) -> nn.Module:
        """A copy whose units' zero weights are masked again (what ``deployable`` baked), so
        fine-tuning keeps them zero."""
        work = copy.deepcopy(model)
        for u in self.units:
            module = work.get_submodule(u.name)
            if masks_of(module):
                continue
            mask = module.weight.detach() != 0
            if int(mask.sum()) < u.full:
                mask_weight(module, mask)
        return work

    def broken_units(self, model: nn.Module, config: Mapping[str, int]) -> list[str] | None:
        """Masking never changes a shape: always ``None``."""
        self.complete_config(config)
        return None

    def channel_scores(self, model: nn.Module) -> list[np.ndarray]:
        """Per unit, |w| of every weight of ``model``'s layer, flattened in storage order (the
        magnitude criterion's scores; data criteria rank on data instead)."""
        out = []
        for u in self.units:
            m = model.get_submodule(u.name)
            out.append(m.weight.detach().abs().reshape(-1).cpu().numpy())
        return out

    def unit_layers(self) -> list[list[tuple[int, int, int, int]]]:
        """Per unit, its one layer's dense weight shape ``(in_channels / groups, out_channels,
        kernel_h, kernel_w)`` (linear layers and 1-D kernels fill the missing sizes with 1)."""
        return [[layer.shape] for layer in self._layers]

    def describe(self) -> list[dict[str, object]]:
        """One row per unit, for tables and JSON."""
        return [{"unit": u.name, "kind": u.kind, "weights": u.full, "min": u.minimum,
                 "choices": len(u.choices), "layers": 1} for u in self.units]


@register_space("unstructured")
class UnstructuredSparsitySpace(WeightSparsitySpace):
    """Any ``floor((1 - level) * full)`` weights of a layer kept, ``level`` from ``levels``."""

    granularity: ClassVar[str] = "unstructured"


@register_space("nm")
class NMSparsitySpace(WeightSparsitySpace):
    """A layer dense or N:M sparse (N kept in every M consecutive inputs), from ``nm``."""

    granularity: ClassVar[str] = "nm"
