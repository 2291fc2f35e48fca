"""Elementwise operations that broadcast one operand over the channels: no coupling.

Torch-Pruning couples every input of an elementwise operation channel for channel. That is
right when the operands are equally wide, and wrong when one of them is one wide along the
channels and broadcast: ``expert(x[tok]) * w[tok, slot, None]``, a mixture-of-experts layer
weighting each expert's output by its routing weight (``[tokens, 1]``), then couples the
residual width to the router's outputs (the number of experts), and pruning the residual
width would cut router rows. A broadcast operand carries no channel of the result, so the
dependencies between it and the operation are removed from the graph
(:func:`decouple_broadcasts`, right after the graph is built; the graph's edges stay, so
what computed the operand is no dead end taken for a model output). A router's inputs still
follow the residual width; its outputs are a group of their own, which ``units.py`` never
makes a width unit (they reach a top-k: the number of experts, not a width).

The channels are the last dimension (a linear layer's) or the second (a convolution's): an
operand counts as broadcast when it is one wide in both (and the result is not), or when the
result has two dimensions and the operand's last is one. An operand ``[batch, tokens, 1]``
against ``[batch, tokens, C]`` is left coupled: it reads the same as ``[batch, C, 1]`` against
a convolution's ``[batch, C, L]`` (a squeeze-and-excitation gate), whose channels must couple.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch_pruning as tp

__all__ = ["broadcasts", "decouple_broadcasts", "routes"]

#: Autograd records of elementwise operations with two or more tensor operands.
_ELEMENTWISE = re.compile(r"^(Mul|Div|Add|Sub|Where|Maximum|Minimum)Backward\d+$")


def broadcasts(operand: Sequence[int], result: Sequence[int]) -> bool:
    """Whether ``operand`` (a shape) is broadcast over the channels of ``result``."""
    n = len(result)
    if n == 0 or len(operand) > n:
        return False
    shape = (1,) * (n - len(operand)) + tuple(operand)
    if not (shape[-1] == 1 < result[-1]):
        return False
    return n <= 2 or shape[1] == 1


def routes(node: object) -> bool:
    """Whether ``node`` (of a dependency graph) is a top-k: channels that reach it are
    choices (a router's: the experts), whose number no width unit may change."""
    name = getattr(getattr(node, "grad_fn", None), "name", None)
    return callable(name) and name().startswith("TopkBackward")


def _shape(fn: object, nr: int) -> tuple[int, ...] | None:
    try:
        return tuple(fn._input_metadata[nr].shape)  # (the forward's output ``nr`` of ``fn``)
    except (AttributeError, IndexError, RuntimeError):
        return None


def decouple_broadcasts(graph: tp.DependencyGraph) -> int:
    """Remove from ``graph`` the dependencies between every elementwise operation and each
    operand broadcast over its channels (both ways); the number of operands decoupled."""
    by_fn = {id(node.grad_fn): node for node in graph.module2node.values()}
    removed = 0
    for node in list(graph.module2node.values()):
        fn = node.grad_fn
        if not isinstance(node.module, tp.ops._ElementWiseOp) or fn is None \
                or not _ELEMENTWISE.match(fn.name()):
            continue
        result = _shape(fn, 0)
        if result is None:
            continue
        verdict: dict[int, bool] = {}  # operand node -> broadcast in every place it enters
        for f, nr in fn.next_functions:
            src = by_fn.get(id(f)) if f is not None else None
            if src is None or src is node:
                continue
            shape = _shape(f, nr)
            wide = shape is not None and broadcasts(shape, result)
            verdict[id(src)] = verdict.get(id(src), True) and wide
        for src in [n for n in node.inputs if verdict.get(id(n))]:
            node.dependencies = [d for d in node.dependencies if d.target is not src]
            src.dependencies = [d for d in src.dependencies if d.target is not node]
            removed += 1
    return removed
