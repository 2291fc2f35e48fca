"""Channel importance: the L2 magnitude of everything a channel's group removes.

Torch-Pruning's ``GroupMagnitudeImportance(p=2)`` sums, per channel, the squared weights the
channel takes with it in every layer of its group -- but only over the layer types it knows,
and HF's ``Conv1D`` is not one of them. This is the same criterion over every layer kind the
channel space prunes (convs, transposed convs, linears, ``Conv1D``, norms, embeddings, free
parameters), summed per channel of the group's root.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .select import take
from .tracing import conv1d_type

__all__ = ["Restricted", "current", "dense_squares", "squares", "group_magnitude", "group_sum",
           "item_slices", "rows", "trial_view"]


def _slices(module: object, handler: str) -> list[tuple[torch.Tensor, int]]:
    """(tensor, dimension) pairs whose slices along the dimension a channel index selects."""
    out_side = handler.endswith("out_channels")
    if isinstance(module, nn.Parameter):
        return []  # free parameters: their pruning dimension is Torch-Pruning's (below)
    conv1d = conv1d_type()
    bias = getattr(module, "bias", None)
    with_bias = [(bias, 0)] if out_side and isinstance(bias, torch.Tensor) else []
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return [(module.weight, 1 if out_side else 0)] + with_bias
    if isinstance(module, nn.modules.conv._ConvNd):
        if "depthwise" in handler:
            return [(module.weight, 0)] + ([(bias, 0)] if isinstance(bias, torch.Tensor) else [])
        return [(module.weight, 0 if out_side else 1)] + with_bias
    if isinstance(module, nn.Linear):
        return [(module.weight, 0 if out_side else 1)] + with_bias
    if conv1d is not None and isinstance(module, conv1d):
        return [(module.weight, 1 if out_side else 0)] + with_bias
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
        return [(t, 0) for t in (getattr(module, "weight", None), bias)
                if isinstance(t, torch.Tensor)]
    if isinstance(module, nn.Embedding):
        return [(module.weight, 1)]
    return []


def item_slices(graph: tp.DependencyGraph, item: Any) -> list[tuple[torch.Tensor, int]]:
    """(tensor, dimension) pairs of one group item whose slices along the dimension its
    channel indices select (a free parameter along Torch-Pruning's pruning dimension)."""
    module = item.dep.target.module
    if isinstance(module, nn.Parameter):
        return [(module, getattr(graph.module2node.get(module), "pruning_dim", -1))]
    return _slices(module, item.dep.handler.__name__)


def rows(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """``tensor`` in double as one row per index along ``dim``."""
    dim = dim % tensor.dim()
    return tensor.detach().double().transpose(0, dim).reshape(tensor.shape[dim], -1)


def group_sum(graph: tp.DependencyGraph, group: tp.Group, full: int,
              per_index: Callable[[torch.Tensor, int], np.ndarray | None],
              items: Callable[[Any], bool] = lambda item: True) -> np.ndarray:
    """Per channel of the group's root (``full`` of them), the sum of ``per_index(tensor,
    dim)`` (one value per index along ``dim``, ``None`` to skip) over the slices it removes
    in every item of the group that ``items`` accepts. Under a :func:`trial_view` the group is
    the dense model's, and each tensor is read as the trial has pruned it so far."""
    scores = np.zeros(full)
    view = _VIEW.get()
    with torch.no_grad():
        for item in group.items:
            if not items(item):
                continue
            for tensor, dim in item_slices(graph, item):
                dim = dim % tensor.dim()
                idx = np.asarray(item.idxs, dtype=np.int64).reshape(-1)
                root = np.asarray(item.root_idxs, dtype=np.int64).reshape(-1)
                if view is not None:
                    tensor, idx, root = view.resolve(tensor, dim, idx, root)
                    if isinstance(tensor, Restricted) and per_index is not squares:
                        tensor = tensor.materialize()
                per = per_index(tensor, dim)
                if per is None:
                    continue
                ok = (idx < len(per)) & (root < full)
                np.add.at(scores, root[ok], np.asarray(per)[idx[ok]])  # in order, as a loop
    return scores


class Restricted:
    """A dense tensor as a trial has pruned it so far, without the copy: the indices kept
    along each dimension (``None``: all of them), optionally seen transposed (a 2-D
    ``.t()``). :meth:`materialize` makes the pruned tensor itself (one selection per pruned
    dimension); :func:`squares` reads a 2-D one block by block instead."""

    __slots__ = ("dense", "index", "transposed")

    def __init__(self, dense: torch.Tensor, index: list[torch.Tensor | None],
                 transposed: bool = False) -> None:
        self.dense, self.index, self.transposed = dense, index, transposed

    @property
    def shape(self) -> torch.Size:
        shape = [len(ix) if ix is not None else n for ix, n in zip(self.index, self.dense.shape)]
        return torch.Size(shape[::-1] if self.transposed else shape)

    def dim(self) -> int:
        return self.dense.dim()

    def t(self) -> Restricted:
        return Restricted(self.dense, self.index, not self.transposed)

    def materialize(self) -> torch.Tensor:
        """The pruned tensor: what selecting the kept indices dimension by dimension gives
        (contiguous, as Torch-Pruning's selections are), transposed as a view if seen so."""
        t = self.dense.detach()
        for d, ix in enumerate(self.index):
            if ix is not None:
                t = take(t, d, ix)
        return t.t() if self.transposed else t

    def rows_block(self, lo: int, hi: int) -> torch.Tensor:
        """Rows ``lo:hi`` of the (untransposed, 2-D) pruned tensor, contiguous."""
        rows, cols = self.index
        t = self.dense.detach()
        t = t[lo:hi] if rows is None else t.index_select(0, rows[lo:hi])
        return t if cols is None else take(t, 1, cols)


#: The trial whose pruning so far ``group_sum``, ``squares`` and ``current`` read (the dense
#: model's tensors seen through it), or ``None``: tensors are read as they are.
_VIEW: ContextVar[Any] = ContextVar("trial_view", default=None)


@contextmanager
def trial_view(view: Any) -> Iterator[None]:
    """Within it, dense tensors are read as ``view`` (a trial's kept indices) prunes them:
    ``view.current(tensor)`` and ``view.resolve(tensor, dim, idx, root)``."""
    token = _VIEW.set(view)
    try:
        yield
    finally:
        _VIEW.reset(token)


def current(tensor: torch.Tensor) -> torch.Tensor | Restricted:
    """``tensor`` as the trial being planned has pruned it so far (itself outside one)."""
    view = _VIEW.get()
    return tensor if view is None else view.current(tensor)


def materialized(tensor: torch.Tensor | Restricted) -> torch.Tensor:
    return tensor.materialize() if isinstance(tensor, Restricted) else tensor


#: The dense model's tensors whose squares may be kept while a context of ``dense_squares``
#: holds: (storage addresses of the dense tensors, the kept results).
_DENSE: ContextVar[tuple[frozenset[int], dict[tuple, np.ndarray]] | None] = \
    ContextVar("dense_squares", default=None)


@contextmanager
def dense_squares(pointers: frozenset[int], kept: dict[tuple, np.ndarray]) -> Iterator[None]:
    """Within it, the squares of a tensor that lies in the storages ``pointers`` (the dense
    model's, which outlive the context and are never written while it holds) are computed
    once and kept in ``kept``: a trial scores its first units on tensors no earlier unit
    pruned, which are the dense tensors themselves."""
    token = _DENSE.set((pointers, kept))
    try:
        yield
    finally:
        _DENSE.reset(token)


#: Elements of a block that ``squares`` turns to double at once (it stays in cache: a whole
#: decoder matrix in double is memory-bound, 4x slower on a 5632 x 2048 weight).
_BLOCK = 32768


def squares(tensor: torch.Tensor | Restricted, dim: int) -> np.ndarray:
    """Per index along ``dim``, the sum of the squared entries of its slice (in double). A
    :class:`Restricted` one gives what its pruned tensor would, bit for bit: a 2-D one read in
    the same blocks of rows, selected from the dense tensor block by block (no copy of it)."""
    if isinstance(tensor, Restricted):
        if tensor.dim() != 2 or tensor.transposed:
            return squares(tensor.materialize(), dim)
        return _restricted_squares(tensor, dim)
    t = tensor.detach()
    held = _DENSE.get()
    key = None
    if held is not None and t.numel() and t.untyped_storage().data_ptr() in held[0]:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
               t.stride(), t.dtype, t._version, dim)
        if key in held[1]:
            return held[1][key]
    if t.dim() <= 1:
        out = t.double().pow(2).cpu().numpy()
    elif dim == 0:  # a row per index: the norm's reduction in double, in blocks of rows
        flat = t.reshape(t.shape[0], -1)
        norms = torch.empty(flat.shape[0], dtype=torch.float64, device=t.device)
        step = max(1, _BLOCK // max(1, flat.shape[1]))
        for i in range(0, flat.shape[0], step):
            norms[i:i + step] = torch.linalg.vector_norm(flat[i:i + step], 2, dim=1,
                                                         dtype=torch.float64)
        out = norms.square().cpu().numpy()
    elif t.dim() == 2:  # a column per index: squares in double, summed block of rows by block
        acc = torch.zeros(t.shape[1], dtype=torch.float64, device=t.device)
        step = max(1, _BLOCK // max(1, t.shape[1]))
        for i in range(0, t.shape[0], step):
            acc += t[i:i + step].double().square_().sum(0)
        out = acc.cpu().numpy()
    else:  # (conv kernels: small) summed over the other dimensions in double
        out = t.double().square_().sum([d for d in range(t.dim()) if d != dim]).cpu().numpy()
    if key is not None:
        held[1][key] = out
    return out


#: Elements of a pruned tensor gathered from the dense one at once by ``_restricted_squares``
#: (whole blocks of rows of ``squares``, so the sums are the same for any size): small enough
#: that the chunk and its double squares stay in the core's cache. GPT-2's MLP input weight
#: with its residual rows cut: 15.5 ms at 1 << 18 elements, 8.3 at 1 << 14.
_GATHER = 1 << 14


def _restricted_squares(r: Restricted, dim: int) -> np.ndarray:
    """``squares`` of a 2-D pruned tensor, from chunks of its rows gathered from the dense one
    (no copy of the whole), with the same sums in the same order: a row's norm does not depend
    on the rows beside it, and the columns' sums add the same blocks of rows one after another
    (a chunk's blocks summed at once, as each block alone would be)."""
    n_rows, n_cols = r.shape
    dense = r.dense
    step = max(1, _BLOCK // max(1, n_cols))  # squares' blocks of rows
    chunk = step * max(1, _GATHER // (step * max(1, n_cols)))  # whole blocks per gather
    if dim == 0:
        norms = torch.empty(n_rows, dtype=torch.float64, device=dense.device)
        keep = getattr(_VIEW.get(), "keep_gathered", None)
        rows_idx, cols = r.index
        if keep is not None and rows_idx is None and cols is not None and dense.dim() == 2:
            # every row at the kept columns, gathered into one tensor the trial's view holds
            # (its selection, once the unit has cut its rows): the same chunks, read in place
            whole = torch.empty(n_rows, n_cols, dtype=dense.dtype, device=dense.device)
            source = dense.detach()
            for i in range(0, n_rows, chunk):
                block = take(source[i:i + chunk], 1, cols, out=whole[i:i + chunk])
                norms[i:i + chunk] = torch.linalg.vector_norm(block, 2, dim=1,
                                                              dtype=torch.float64)
            keep(dense, cols, whole)
            return norms.square().cpu().numpy()
        for i in range(0, n_rows, chunk):
            norms[i:i + chunk] = torch.linalg.vector_norm(r.rows_block(i, i + chunk), 2, dim=1,
                                                          dtype=torch.float64)
        return norms.square().cpu().numpy()
    acc = torch.zeros(n_cols, dtype=torch.float64, device=dense.device)
    for i in range(0, n_rows, chunk):
        rows = r.rows_block(i, i + chunk)
        whole = rows.shape[0] // step
        if whole:
            sums = rows[:whole * step].reshape(whole, step, n_cols).double().square_().sum(1)
            for k in range(whole):
                acc += sums[k]
        if whole * step < rows.shape[0]:  # (the last, partial block of the tensor)
            acc += rows[whole * step:].double().square_().sum(0)
    return acc.cpu().numpy()


def group_magnitude(graph: tp.DependencyGraph, group: tp.Group, full: int) -> np.ndarray:
    """Per channel of the group's root (``full`` of them), the sum of the squared weights it
    removes over the whole group."""
    return group_sum(graph, group, full, squares)
