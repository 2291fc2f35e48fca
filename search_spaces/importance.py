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

from .tracing import conv1d_type

__all__ = ["dense_squares", "squares", "group_magnitude", "group_sum", "item_slices", "rows"]


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
    in every item of the group that ``items`` accepts."""
    scores = np.zeros(full)
    with torch.no_grad():
        for item in group.items:
            if not items(item):
                continue
            for tensor, dim in item_slices(graph, item):
                per = per_index(tensor, dim % tensor.dim())
                if per is None:
                    continue
                idx = np.asarray(item.idxs, dtype=np.int64).reshape(-1)
                root = np.asarray(item.root_idxs, dtype=np.int64).reshape(-1)
                ok = (idx < len(per)) & (root < full)
                np.add.at(scores, root[ok], np.asarray(per)[idx[ok]])  # in order, as a loop
    return scores


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


def squares(tensor: torch.Tensor, dim: int) -> np.ndarray:
    """Per index along ``dim``, the sum of the squared entries of its slice (in double)."""
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


def group_magnitude(graph: tp.DependencyGraph, group: tp.Group, full: int) -> np.ndarray:
    """Per channel of the group's root (``full`` of them), the sum of the squared weights it
    removes over the whole group."""
    return group_sum(graph, group, full, squares)
