"""Channel importance: the L2 magnitude of everything a channel's group removes.

Torch-Pruning's ``GroupMagnitudeImportance(p=2)`` sums, per channel, the squared weights the
channel takes with it in every layer of its group -- but only over the layer types it knows,
and HF's ``Conv1D`` is not one of them. This is the same criterion over every layer kind the
channel space prunes (convs, transposed convs, linears, ``Conv1D``, norms, embeddings, free
parameters), summed per channel of the group's root.
"""

from __future__ import annotations

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .tracing import conv1d_type

__all__ = ["group_magnitude"]


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


def group_magnitude(graph: tp.DependencyGraph, group: tp.Group, full: int) -> np.ndarray:
    """Per channel of the group's root (``full`` of them), the sum of the squared weights it
    removes over the whole group."""
    scores = np.zeros(full)
    with torch.no_grad():
        for item in group.items:
            module = item.dep.target.module
            slices = _slices(module, item.dep.handler.__name__)
            if isinstance(module, nn.Parameter):
                dim = getattr(graph.module2node.get(module), "pruning_dim", -1)
                slices = [(module, dim)]
            for tensor, dim in slices:
                dim = dim % tensor.dim()
                flat = tensor.detach().double().transpose(0, dim).reshape(tensor.shape[dim], -1)
                per = flat.pow(2).sum(1).cpu().numpy()
                for i, r in zip(item.idxs, item.root_idxs):
                    if int(i) < len(per) and int(r) < full:
                        scores[int(r)] += per[int(i)]
    return scores
