"""Pruning a working copy unit by unit: the channel space's machinery under ``apply``.

A :class:`Template` is the dense model traced once: a copy of its modules that shares its
weights, and Torch-Pruning's dependency graph of that copy. A :class:`Pruner` is one working
copy made from it (modules and graph copied, weights still shared) that removes a unit's
elements at a time, out of place, scoring each unit on the copy as it is then; ``own`` hands
the pruned network out with memory of its own. A :class:`Candidate` says how one unit is
pruned: a channel group from its root layer, or an attention layer's heads or head positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .attention import (AttentionHeads, drop_head_dims, drop_heads, head_dim_scores, head_scores,
                        prune_head_dims, prune_heads)
from .base import Unit
from .criteria import Criterion, L2Magnitude
from .tracing import (Output, aliased_copy, build_graph, copy_graph, own_tensors, pruning_group,
                      traceable_copy)

__all__ = ["Candidate", "Pruner", "Template", "tensor_key"]


@dataclass(frozen=True)
class Candidate:
    """How a unit is pruned: a channel group from ``root`` (whose out-channels in ``blocks[i]``
    go together as element ``i``), or an attention layer's ``heads`` (whole heads, or with
    ``dims`` the positions inside every head)."""

    unit: Unit
    root: str = ""
    blocks: tuple[tuple[int, ...], ...] = ()
    heads: AttentionHeads | None = None
    dims: bool = False


def _ties(model: nn.Module) -> list[list[tuple[str, str]]]:
    """(module, attribute) pairs holding one shared parameter (tied embeddings)."""
    seen: dict[int, list[tuple[str, str]]] = {}
    for name, m in model.named_modules():
        for attr, p in m.named_parameters(recurse=False, remove_duplicate=False):
            seen.setdefault(id(p), []).append((name, attr))
    return [v for v in seen.values() if len(v) > 1]


class Template:
    """The dense model traced once: a copy that shares its weights (``traceable_copy``) and
    Torch-Pruning's dependency graph of it. Each working copy (:meth:`copy`) copies the
    modules and the graph together, again sharing the weights, so that a trial neither
    copies the dense weights nor traces the model again."""

    def __init__(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], output: Output) -> None:
        self.dense = model
        self.model = traceable_copy(model)
        self.graph = build_graph(self.model, inputs, output)
        self.key = tensor_key(model)
        self.pointers = frozenset(t.untyped_storage().data_ptr()
                                  for t in chain(model.parameters(), model.buffers()) if t.numel())
        self.squares: dict[tuple, np.ndarray] = {}  # scores' squares of the dense tensors
        self.modules = dict(self.model.named_modules())
        self.groups: dict[str, object] = {}  # unit -> its channel group, dense (gather.py)
        self.plannable: bool | None = None  # whether trials go by gather.py (decided once)
        self.reads: dict[str, list] = {}  # unit -> the dense tensors its scores read
        self.scored: dict[tuple, object] = {}  # (unit, cuts of what it reads) -> its scores
        self.scored_bytes = 0
        self.scored_asked = self.scored_kept = 0  # lookups, and those answered from ``scored``

    def copy(self) -> tuple[nn.Module, tp.DependencyGraph]:
        model = aliased_copy(self.model, self.model)
        return model, copy_graph(self.graph, model)


def tensor_key(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``model`` is replaced or written in place."""
    return tuple((id(t), t._version, t.data_ptr()) for t in chain(model.parameters(), model.buffers()))


class Pruner:
    """A working copy of a model and its dependency graph; removes elements unit by unit.
    The copy shares the dense weights until a unit replaces them (``own`` ends that)."""

    def __init__(self, template: Template, criterion: Criterion | None = None) -> None:
        self.criterion = criterion if criterion is not None else L2Magnitude()
        self.template = template
        self.model, self.graph = template.copy()
        self.modules = dict(self.model.named_modules())
        self.ties = _ties(self.model)
        self.heads: dict[str, AttentionHeads] = {}

    def spec(self, c: Candidate) -> AttentionHeads:
        """The attention layer of ``c`` as it is now (heads and positions already removed)."""
        assert c.heads is not None
        return self.heads.get(c.heads.module, c.heads)

    def scores(self, c: Candidate, stats: object = None) -> np.ndarray:
        """Importance per element: the criterion's score of a channel group (from ``stats``,
        what a data criterion measured on this copy), heads by their L2 magnitude (head
        positions: summed over the heads, each head choosing its own, see ``keep``)."""
        if c.dims:
            qk, vo = head_dim_scores(self.model, self.spec(c))
            return qk.sum(0) + vo.sum(0)
        if c.heads is not None:
            return head_scores(self.model, self.spec(c))
        return self.criterion.score(self.graph, self.group_of(c), c.blocks, stats)

    def group_of(self, c: Candidate) -> tp.Group:
        """The whole channel group of ``c``."""
        return self._group(c, list(range(max(i for b in c.blocks for i in b) + 1)))

    def keep(self, c: Candidate, keep: int, scores: np.ndarray | None = None) -> None:
        """Prune ``c`` to ``keep`` elements, removing the least important (by ``scores``, one
        per element in dense numbering, when given)."""
        if keep >= c.unit.full:
            return
        if c.dims:
            spec = self.spec(c)
            self._dims(c, *drop_head_dims(head_dim_scores(self.model, spec), keep))
        elif c.heads is not None:
            self.remove(c, drop_heads(self.spec(c), self.scores(c), keep))
        else:
            scores = self.scores(c) if scores is None else scores
            self.remove(c, sorted(np.argsort(-scores, kind="stable")[keep:].tolist()))

    def remove(self, c: Candidate, drop: Sequence[int]) -> None:
        """Remove elements ``drop`` (dense numbering) of candidate ``c``."""
        if not drop:
            return
        if c.dims:
            groups = range(self.spec(c).kv_heads)
            self._dims(c, [list(drop) for _ in groups], [list(drop) for _ in groups])
            return
        if c.heads is not None:
            self.heads[c.heads.module] = prune_heads(self.model, self.spec(c), drop)
        else:
            self._group(c, sorted(i for k in drop for i in c.blocks[k])).prune()
        self._retie()

    def _dims(self, c: Candidate, qk: list[list[int]], vo: list[list[int]]) -> None:
        self.heads[c.heads.module] = prune_head_dims(self.model, self.spec(c), qk, vo)

    def remove_last(self, c: Candidate, n: int) -> None:
        """Remove ``n`` elements of ``c`` (which ones does not change any size)."""
        if c.dims:
            d = self.spec(c).head_dim
            self.remove(c, list(range(d - n, d)))
        elif c.heads is not None:
            spec = self.spec(c)
            order = np.arange(spec.heads, 0, -1, dtype=float)
            self.remove(c, drop_heads(spec, order, spec.heads - n))
        else:
            self.remove(c, list(range(len(c.blocks) - n, len(c.blocks))))

    def _group(self, c: Candidate, idxs: list[int]) -> tp.Group:
        return pruning_group(self.graph, self.modules[c.root], idxs)

    def own(self) -> nn.Module:
        """The working copy with memory of its own (what no unit replaced is copied now),
        let go of by this pruner: its graph, whose nodes refer to each other, is taken apart,
        so the network is freed as soon as its user drops it, without waiting for a cyclic
        garbage collection."""
        model = own_tensors(self.model, self.template.dense)
        for node in self.graph.module2node.values():
            node.inputs, node.outputs, node.dependencies = [], [], []
        self.graph.module2node = {}
        self.graph.model = self.model = None
        return model

    def _retie(self) -> None:
        for tie in self.ties:
            first = getattr(self.modules[tie[0][0]], tie[0][1])
            for name, attr in tie[1:]:
                mine = getattr(self.modules[name], attr)
                if mine is not first and mine.shape == first.shape:
                    setattr(self.modules[name], attr, first)
