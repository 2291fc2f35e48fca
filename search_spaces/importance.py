"""Channel importance: the L2 magnitude of everything a channel's group removes.

Torch-Pruning's ``GroupMagnitudeImportance(p=2)`` sums, per channel, the squared weights the
channel takes with it in every layer of its group -- but only over the layer types it knows,
and HF's ``Conv1D`` is not one of them. This is the same criterion over every layer kind the
channel space prunes (convs, transposed convs, linears, ``Conv1D``, norms, embeddings, free
parameters), summed per channel of the group's root.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .tracing import conv1d_type

__all__ = ["group_magnitude", "group_sum", "item_slices", "rows"]


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
                for i, r in zip(item.idxs, item.root_idxs):
                    if int(i) < len(per) and int(r) < full:
                        scores[int(r)] += per[int(i)]
    return scores


def _squares(tensor: torch.Tensor, dim: int) -> np.ndarray:
    return rows(tensor, dim).pow(2).sum(1).cpu().numpy()


def group_magnitude(graph: tp.DependencyGraph, group: tp.Group, full: int) -> np.ndarray:
    """Per channel of the group's root (``full`` of them), the sum of the squared weights it
    removes over the whole group."""
    return group_sum(graph, group, full, _squares)
