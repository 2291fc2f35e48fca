"""Channel trials by one selection per tensor: decide on a view, then build once.

Pruning unit by unit through Torch-Pruning copies a tensor each time a unit cuts it (twice for
a weight cut on both sides), searches the dependency graph twice per unit, and copies the
modules and the graph per trial. A trial here does neither:

1. **Decide.** Every unit's elements are chosen in the same order and by the same scores as
   before, on a :class:`TrialView` of the dense weights: the indices each unit has cut so far,
   per tensor dimension. A later unit's scores read the dense tensors through those indices
   (``importance.Restricted``: block by block, nothing copied), over the channel group found
   once on the dense model (:func:`dense_group`), renumbered as the cut tensor would number it.
2. **Build.** A copy of the modules (sharing the dense weights) is pruned by the same handlers
   Torch-Pruning calls, each once per layer and side with every index cut there, while
   :func:`lazy_selection` records what each would select instead of selecting it. Then each
   pruned tensor is selected from the dense one, one pass per cut dimension, and what no unit
   cut is copied (``own_tensors``), so the network is the caller's to train.

The networks are bit for bit the ones unit-by-unit pruning gives: the same elements, the same
values, the same module attributes. Criteria other than L1/L2 magnitude and the data criteria
(scored once on the dense model), and layers whose cut dimensions this module does not know
(grouped convolutions, recurrent layers, ``nn.MultiheadAttention``), keep the unit-by-unit
path (:func:`plannable` says which).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .attention import (AttentionHeads, drop_head_dims, drop_heads, head_cuts, head_dim_cuts,
                        head_dim_scores, head_scores, prune_head_dims, prune_heads, resized)
from .criteria import Criterion, L1Magnitude, L2Magnitude
from .importance import Restricted, _slices, dense_squares, item_slices, trial_view
from .pruner import Candidate, Template, _ties
from .select import take
from .tracing import aliased_copy, own_tensors, pruning_group

__all__ = ["NotPlannable", "TrialView", "build_trial", "dense_group", "lazy_selection",
           "plannable"]


class NotPlannable(Exception):
    """A layer whose cut dimensions are not known here: the trial prunes unit by unit."""


@dataclass(frozen=True)
class DenseItem:
    """One item of a channel group, numbered as in the dense model (Torch-Pruning's
    ``GroupItem`` with its indices as arrays)."""

    dep: Any
    idxs: np.ndarray
    root_idxs: np.ndarray


@dataclass(frozen=True)
class DenseGroup:
    items: tuple[DenseItem, ...]


def dense_group(template: Template, c: Candidate) -> DenseGroup:
    """The whole channel group of ``c`` on the dense model, found once per template."""
    held = template.groups.get(c.unit.name)
    if held is None:
        full = max(i for b in c.blocks for i in b) + 1
        module = dict(template.model.named_modules())[c.root]
        group = pruning_group(template.graph, module, list(range(full)))
        held = template.groups[c.unit.name] = DenseGroup(tuple(
            DenseItem(item.dep, np.asarray(item.idxs, dtype=np.int64).reshape(-1),
                      np.asarray(item.root_idxs, dtype=np.int64).reshape(-1))
            for item in group.items))
    return held


def _cut_slices(graph: tp.DependencyGraph, item: Any) -> list[tuple[torch.Tensor, int]]:
    """(tensor, dimension) pairs that the item's handler cuts: what its indices select."""
    module = item.dep.target.module
    if isinstance(module, nn.Parameter):
        dim = getattr(graph.module2node.get(module), "pruning_dim", -1)
        return [(module, dim % module.dim())]
    if not isinstance(module, nn.Module):
        return []  # one of Torch-Pruning's own operations (add, cat, reshape): no tensor
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        if module.groups != module.out_channels or module.out_channels != module.in_channels:
            raise NotPlannable(f"grouped convolution {type(module).__name__}")
        bias = [(module.bias, 0)] if isinstance(module.bias, torch.Tensor) else []
        return [(module.weight, 0)] + bias
    slices = _slices(module, item.dep.handler.__name__)
    if not slices and any(True for _ in module.parameters(recurse=False)):
        raise NotPlannable(f"layer {type(module).__name__}")
    return [(t, dim % t.dim()) for t, dim in slices]


def plannable(template: Template, candidates: Sequence[Candidate], criterion: Criterion) -> bool:
    """Whether trials of these units can be decided on a view and built by selection."""
    held = template.plannable
    if held is None:
        held = type(criterion) in (L2Magnitude, L1Magnitude) or criterion.needs_data
        try:
            for c in candidates:
                if type(c) is not Candidate:  # (experts.py prunes them)
                    raise NotPlannable("experts")
                if held and c.heads is None:
                    for item in dense_group(template, c).items:
                        for tensor, dim in _cut_slices(template.graph, item):
                            if len(item.idxs) and int(item.idxs.max()) >= tensor.shape[dim]:
                                raise NotPlannable("indices beyond the tensor")
        except NotPlannable:
            held = False
        template.plannable = held
    return held


class TrialView:
    """What a trial has cut so far: per dense tensor and dimension, a mask of kept indices."""

    def __init__(self) -> None:
        self.kept: dict[int, list[np.ndarray | None]] = {}
        #: per dense tensor: (it, its kept columns, all its rows at those columns), gathered
        #: while a unit's scores read them (``importance.squares``) and not yet settled
        self.gathered: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        #: per dense tensor: (it, the kept indices per dimension, its selection), settled
        #: after the unit's cut; ``build_trial`` takes one whose indices are still the ones
        #: the network keeps, instead of selecting from the dense tensor again
        self.ready: dict[int, tuple[torch.Tensor, list[torch.Tensor | None], torch.Tensor]] = {}

    def keep_gathered(self, dense: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor) -> None:
        """Hold ``rows``: every row of the 2-D ``dense`` at the kept columns ``cols``."""
        self.gathered[id(dense)] = (dense, cols, rows)

    def settle(self) -> None:
        """After a unit's cut: each tensor gathered while its scores were read is cut down to
        the rows now kept (its selection, if no later unit cuts it again), the whole gather
        let go. A selection reads the dense tensor once where the build would read it again."""
        for key, (dense, cols, whole) in self.gathered.items():
            mask = (self.kept.get(key) or [None])[0]
            if mask is None or mask.all():
                self.ready[key] = (dense, [None, cols], whole)
            else:
                rows = torch.from_numpy(np.flatnonzero(mask))
                self.ready[key] = (dense, [rows, cols], whole.index_select(0, rows))
        self.gathered.clear()

    def cut(self, tensor: torch.Tensor, dim: int, idxs: np.ndarray) -> None:
        """Remove ``idxs`` (dense numbering) of ``tensor`` along ``dim``."""
        masks = self.kept.setdefault(id(tensor), [None] * tensor.dim())
        if masks[dim] is None:
            masks[dim] = np.ones(tensor.shape[dim], dtype=bool)
        masks[dim][idxs] = False

    def cuts_of(self, tensor: torch.Tensor) -> tuple[bytes | None, ...] | None:
        """What has been cut of ``tensor`` so far, as a key: per dimension its packed mask
        (``None``: nothing cut there), ``None`` for an uncut tensor."""
        masks = self.kept.get(id(tensor))
        if masks is None or all(m is None or m.all() for m in masks):
            return None
        return tuple(None if m is None or m.all() else np.packbits(m).tobytes() for m in masks)

    def dense_of(self, tensor: torch.Tensor, dim: int, idxs: Sequence[int]) -> np.ndarray:
        """Indices ``idxs`` of ``tensor`` along ``dim`` as it is now, in dense numbering."""
        mask = self.kept.get(id(tensor), [None] * tensor.dim())[dim]
        idxs = np.asarray(idxs, dtype=np.int64)
        return idxs if mask is None else np.flatnonzero(mask)[idxs]

    def current(self, tensor: torch.Tensor) -> torch.Tensor | Restricted:
        masks = self.kept.get(id(tensor))
        if masks is None or all(m is None or m.all() for m in masks):
            return tensor
        return Restricted(tensor, [None if m is None else torch.from_numpy(np.flatnonzero(m))
                                   for m in masks])

    def resolve(self, tensor: torch.Tensor, dim: int, idx: np.ndarray, root: np.ndarray
                ) -> tuple[torch.Tensor | Restricted, np.ndarray, np.ndarray]:
        """``tensor`` as cut so far, with an item's dense indices along ``dim`` (and their
        root indices) renumbered as the cut tensor numbers them."""
        masks = self.kept.get(id(tensor))
        mask = None if masks is None else masks[dim]
        if mask is not None and not mask.all():
            inside = idx < len(mask)
            idx, root = idx[inside], root[inside]
            kept = mask[idx]
            idx, root = (np.cumsum(mask) - 1)[idx[kept]], root[kept]
        return self.current(tensor), idx, root


#: The most bytes of scores a template keeps for cuts it has seen (``Decisions._scored``).
_SCORED_BYTES = 64 << 20


def _reads(template: Template, c: Candidate) -> list[torch.Tensor]:
    """The dense tensors a channel unit's scores read (those of its group's items), once."""
    held = template.reads.get(c.unit.name)
    if held is None:
        seen: dict[int, torch.Tensor] = {}
        for item in dense_group(template, c).items:
            for tensor, _ in item_slices(template.graph, item):
                seen.setdefault(id(tensor), tensor)
        held = template.reads[c.unit.name] = list(seen.values())
    return held


class Decisions:
    """A trial decided: the cuts of every channel group (dense numbering, per layer and
    handler) and the head and head-position removals, in order."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self.view = TrialView()
        self.cuts: dict[tuple[int, Any], tuple[Any, set[int]]] = {}
        self.heads: list[tuple[str, AttentionHeads, Any, Any]] = []
        self.specs: dict[str, AttentionHeads] = {}

    def channels(self, c: Candidate, keep: int, scores: np.ndarray | None,
                 criterion: Criterion) -> None:
        if keep >= c.unit.full:
            return
        group = dense_group(self.template, c)
        if scores is None:
            scores = self._scored(c.unit.name, _reads(self.template, c),
                                  lambda: criterion.score(self.template.graph, group, c.blocks,
                                                          None))
        drop = sorted(np.argsort(-scores, kind="stable")[keep:].tolist())
        if not drop:
            return
        roots = np.asarray(sorted(i for k in drop for i in c.blocks[k]), dtype=np.int64)
        for item in group.items:
            idxs = item.idxs[np.isin(item.root_idxs, roots)]
            target = item.dep.target.module
            if not len(idxs) or not (isinstance(target, nn.Parameter)
                                     or target in self.template.graph._module2name):
                continue  # (Torch-Pruning's own operations, add or cat, cut nothing)
            key = (id(item.dep.target.module), getattr(item.dep.handler, "__func__", item.dep.handler))
            self.cuts.setdefault(key, (item.dep, set()))[1].update(idxs.tolist())
            for tensor, dim in _cut_slices(self.template.graph, item):
                self.view.cut(tensor, dim, idxs)
        self.view.settle()

    def attention(self, c: Candidate, keep: int) -> None:
        if keep >= c.unit.full:
            return
        spec = self.specs.get(c.heads.module, c.heads)
        modules = self.template.modules
        reads = [modules[n].weight for n in spec.members]
        if c.dims:
            qk, vo = drop_head_dims(self._scored(
                (spec, "dims"), reads, lambda: head_dim_scores(self.template.model, spec)), keep)
            self.heads.append(("dims", spec, qk, vo))
            self._cut(head_dim_cuts(spec, qk, vo))
            d = spec.head_dim - len(qk[0])
            self.specs[spec.module] = resized(spec, head_dim=d)
            return
        drop = drop_heads(spec, self._scored(
            (spec, "heads"), reads, lambda: head_scores(self.template.model, spec)), keep)
        if not drop:
            return
        self.heads.append(("heads", spec, drop, None))
        self._cut(head_cuts(spec, drop))
        self.view.settle()
        self.specs[spec.module] = resized(spec, heads=spec.heads - len(drop))

    def _scored(self, name: object, reads: Sequence[torch.Tensor],
                score: Callable[[], Any]) -> Any:
        """A unit's scores: what ``score`` gives, kept in the template per unit and per cut of
        the tensors it reads (``reads``): a unit reads nothing else, so the same cuts give the
        same scores, and a search that comes back to a width (a residual width, a number of
        heads) scores the units after it without reading their weights again."""
        key = (name, tuple(self.view.cuts_of(t) for t in reads))
        held = self.template.scored.get(key)
        self.template.scored_asked += 1
        self.template.scored_kept += held is not None
        if held is None:
            held = score()
            size = sum(np.asarray(a).nbytes for a in (held if isinstance(held, tuple) else (held,)))
            if self.template.scored_bytes + size > _SCORED_BYTES:
                self.template.scored.clear()
                self.template.scored_bytes = 0
            self.template.scored[key] = held
            self.template.scored_bytes += size
        return held

    def _cut(self, cuts: Sequence[tuple[str, bool, Sequence[int]]]) -> None:
        modules = self.template.modules
        for name, out, idxs in cuts:
            handler = "prune_out_channels" if out else "prune_in_channels"
            slices = [(t, d % t.dim()) for t, d in _slices(modules[name], handler)]
            if not slices:
                continue
            dense = self.view.dense_of(slices[0][0], slices[0][1], idxs)  # one mask per side
            for tensor, dim in slices:
                self.view.cut(tensor, dim, dense)


def decide(template: Template, candidates: Sequence[Candidate], config: Mapping[str, int],
           criterion: Criterion, dense_scores: Mapping[str, np.ndarray]) -> Decisions:
    """What every unit removes, in the order unit-by-unit pruning takes them (channel groups,
    then heads, then head positions), scored as that pruning would score them."""
    out = Decisions(template)
    with dense_squares(template.pointers, template.squares), trial_view(out.view):
        for c in sorted(candidates, key=lambda c: (c.heads is not None, c.dims)):
            keep = config[c.unit.name]
            if c.heads is None:
                out.channels(c, keep, dense_scores.get(c.unit.name), criterion)
            else:
                out.attention(c, keep)
    return out


@contextmanager
def lazy_selection(selected: dict[int, tuple[nn.Parameter, torch.Tensor, list]]
                   ) -> Iterator[None]:
    """While it holds, Torch-Pruning's handlers select nothing: each parameter they would
    replace by a selection of it becomes an empty (meta) parameter of the selected shape, and
    ``selected`` maps it to (itself, the tensor it selects from, the kept indices per
    dimension). Selections of selections compose."""
    base = tp.pruner.function.BasePruningFunc
    original = base._prune_parameter_and_grad

    def lazy(self: Any, weight: torch.Tensor, keep_idxs: Sequence[int],
             pruning_dim: int) -> nn.Parameter:
        held = selected.get(id(weight))
        if held is not None and held[0] is weight:
            source, index = held[1], list(held[2])
        else:
            source, index = weight, [None] * weight.dim()
        dim = pruning_dim % weight.dim()
        keep = keep_idxs.to(torch.long) if isinstance(keep_idxs, torch.Tensor) else \
            torch.from_numpy(np.asarray(keep_idxs, dtype=np.int64))  # (as_tensor of a list: 3x)
        index[dim] = keep if index[dim] is None else index[dim][keep]
        shape = list(weight.shape)
        shape[dim] = len(keep)
        new = nn.Parameter(torch.empty(shape, dtype=weight.dtype, device="meta"),
                           requires_grad=weight.requires_grad)
        selected[id(new)] = (new, source, index)
        return new

    base._prune_parameter_and_grad = lazy
    try:
        yield
    finally:
        base._prune_parameter_and_grad = original


def build_trial(decided: Decisions) -> nn.Module:
    """The pruned network of ``decided``: the modules copied (weights shared), every cut made
    by its handler without selecting, then each cut tensor selected once from the dense one
    and the rest copied, so the network owns its memory."""
    template = decided.template
    model = _module_copy(template.model)
    modules = dict(model.named_modules())
    ties = _ties(model)  # (found before the cuts replace the tied parameters)
    selected: dict[int, tuple[nn.Parameter, torch.Tensor, list]] = {}
    with lazy_selection(selected):
        for dep, idxs in decided.cuts.values():
            dep.handler.__self__.pruning_dim = dep.target.pruning_dim
            target = dep.target.module
            if isinstance(target, nn.Parameter):
                path = template.graph._param_to_name[target].split(".")
                owner = model.get_submodule(".".join(path[:-1]))
                setattr(owner, path[-1], dep.handler(getattr(owner, path[-1]), sorted(idxs)))
            else:
                dep.handler(modules[template.graph._module2name[target]], sorted(idxs))
        for kind, spec, a, b in decided.heads:
            if kind == "heads":
                prune_heads(model, spec, a, modules=modules)
            else:
                prune_head_dims(model, spec, a, b, modules=modules)
    _retie(ties, modules)
    _select(model, selected, decided.view.ready)
    decided.view.ready.clear()  # (any left were cut again after they settled)
    left = [n for n, t in model.named_parameters() if t.is_meta]
    if left:  # a handler made a parameter without recording it: never hand out a shell
        raise RuntimeError(f"the gathered trial left {left[:3]} unselected; "
                           "search_spaces/gather.py must know this layer's handler")
    return own_tensors(model, template.dense)


def _module_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules for one trial: each module a new object with its own
    attribute dicts (parameters, buffers, submodules, hooks), holding the same tensors and
    sharing everything else (a config); the cuts then replace tensors and set attributes on
    the copy only. A deep copy did the same at several times the cost (0.03-0.07 s of a
    GPT-2 trial); a module that keeps another module outside its submodules (where only a
    deep copy would follow it) is deep-copied, as before."""
    done: dict[int, nn.Module] = {}

    def copy_of(m: nn.Module) -> nn.Module:
        if id(m) in done:
            return done[id(m)]
        new = object.__new__(type(m))
        state = {k: (v.copy() if isinstance(v, dict) else v) for k, v in m.__dict__.items()}
        new.__dict__.update(state)
        done[id(m)] = new
        for name, child in m._modules.items():
            new._modules[name] = copy_of(child) if child is not None else None
        return new

    for m in model.modules():
        for k, v in m.__dict__.items():
            held = v.values() if isinstance(v, dict) and k != "_modules" else \
                v if isinstance(v, (list, tuple)) else (v,)
            if any(isinstance(x, nn.Module) for x in held):
                return aliased_copy(model, model)
    try:
        return copy_of(model)
    finally:
        done.clear()  # (the recursive closure holds ``done`` in a cycle: let go of the copies)


def _retie(ties: Sequence[Sequence[tuple[str, str]]], modules: Mapping[str, nn.Module]) -> None:
    for tie in ties:
        first = getattr(modules[tie[0][0]], tie[0][1])
        for name, attr in tie[1:]:
            mine = getattr(modules[name], attr)
            if mine is not first and mine.shape == first.shape:
                setattr(modules[name], attr, first)


def _select(model: nn.Module, selected: Mapping[int, tuple[nn.Parameter, torch.Tensor, list]],
            ready: dict[int, tuple[torch.Tensor, list, torch.Tensor]]) -> None:
    """Replace every recorded (meta) parameter by its selection from the dense tensor: one
    pass per cut dimension, in order, as contiguous as Torch-Pruning's own selections. A
    selection the trial's view settled (``TrialView.ready``) with the same kept indices is
    taken as it is: the same bits."""
    done: dict[int, nn.Parameter] = {}
    for m in model.modules():
        for name, p in m._parameters.items():
            if p is None or id(p) not in selected:
                continue
            if id(p) not in done:
                _, source, index = selected[id(p)]
                held = ready.pop(id(source), None)
                if held is not None and held[0] is source and _same_index(held[1], index):
                    tensor = held[2]
                else:
                    tensor = _selection(source.detach(), index)
                done[id(p)] = nn.Parameter(tensor, requires_grad=p.requires_grad)
            m._parameters[name] = done[id(p)]


def _same_index(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(a, b))


#: Elements of the rows of a weight cut on both sides selected at once (they stay in cache).
_ROWS_AT_ONCE = 1 << 16


def _selection(source: torch.Tensor, index: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``source`` with only the indices ``index`` kept along each dimension (``None``: all).
    A matrix cut on both sides is selected a block of rows at a time, rows then columns, into
    the result: no intermediate of its kept rows at full width."""
    if source.dim() == 2 and index[0] is not None and index[1] is not None:
        rows, cols = index
        out = torch.empty(len(rows), len(cols), dtype=source.dtype, device=source.device)
        step = max(1, _ROWS_AT_ONCE // max(1, source.shape[1]))
        for i in range(0, len(rows), step):
            take(source.index_select(0, rows[i:i + step]), 1, cols, out=out[i:i + step])
        return out
    for dim, ix in enumerate(index):
        if ix is not None:
            source = take(source, dim, ix)
    return source
