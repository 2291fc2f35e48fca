"""Fused mixture-of-experts layers as Torch-Pruning is to see them: the residual width.

A ``transformers`` 5 MoE layer (``experts.py``) routes with a router module holding a raw
weight ``[experts, hidden]`` (``MixtralTopKRouter``: ``F.linear(h, weight)``, softmax, top-k)
and runs its experts, 3-D parameters, with ``torch._grouped_mm`` (or ``bmm``, or a loop).
Traced as they run, both go wrong for the residual width: the router's matmul is taken for an
elementwise operation, which couples the residual width to the router's outputs (the number
of experts), and the experts' kernels couple it to the experts' widths and gate halves.

So while the dependency graph is traced (:func:`template`, only then), each such router runs
its own forward without recording (its routing is no part of the graph) and hands its weight
to the experts module it routes for (the one called next on the same hidden states), whose
forward is then one opaque operation over the hidden states, the experts' parameters and the
router's weight (:class:`_Experts`). Each parameter is then pruned along its hidden dimension:
``gate_up_proj``/``up_proj``'s and ``down_proj``'s (whichever their layout), ``down_proj``'s
bias, the router weight's columns. The router's outputs and the experts' widths are no part
of the residual width; the widths are units of their own (``experts.py``). The pruned network
runs the layers' own forward; the attributes that hold the hidden size (``hidden_dim``) are
kept in step with the parameters by :func:`sync_hidden` after every pruning step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .experts import fused_layers, hidden_params, read_experts
from .pruner import Template
from .ssm import template as ssm_template
from .tracing import Output

__all__ = ["template"]

#: While a graph is traced: the router weights handed on, by the hidden states they routed.
_HANDED: dict[int, list[torch.Tensor]] = {}


class _Experts(torch.autograd.Function):
    """A fused-experts layer as Torch-Pruning is to see it: one elementwise operation over the
    hidden states and the parameters that hold the hidden size. Only the graph is traced from
    it (its value, the hidden states, is never used)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return hidden.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:  # pragma: no cover
        raise RuntimeError("the traced stand-in of a fused-experts layer has no backward")


def _traced_experts(self: nn.Module, hidden_states: torch.Tensor, *args: Any,
                    **kwargs: Any) -> torch.Tensor:
    spec = read_experts("", self)
    params = [p for p, _ in hidden_params(self, spec)] if spec is not None else []
    routers = _HANDED.pop(id(hidden_states), [])
    return _Experts.apply(hidden_states, *params, *routers)


def _traced_router(original: Any) -> Any:
    def forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():  # (the routing is no part of the residual width's graph)
            out = original(self, hidden_states, *args, **kwargs)
        _HANDED.setdefault(id(hidden_states), []).append(self.weight)
        return out
    return forward


def template(model: nn.Module, inputs: tuple[torch.Tensor, ...], output: Output) -> Template:
    """``ssm.template(model, inputs, output)`` with every fused-experts layer and its router
    traced as the residual width sees them, their parameters pruned along the hidden size."""
    layers = list(fused_layers(model))
    if not layers:
        return ssm_template(model, inputs, output)
    swaps: dict[type, Any] = {}
    for _, experts, _, router in layers:
        swaps[type(experts)] = _traced_experts
        if router is not None:
            original = type(router).forward
            swaps[type(router)] = _traced_router(original)
    saved = {c: c.__dict__.get("forward") for c in swaps}
    for c, f in swaps.items():
        c.forward = f
    try:
        held = ssm_template(model, inputs, output)
    finally:
        _HANDED.clear()
        for c, f in saved.items():
            if f is None:
                del c.forward
            else:
                c.forward = f
    graph = held.graph
    dims: dict[int, int] = {}
    for _, experts, spec, router in fused_layers(held.model):
        dims.update({id(p): d for p, d in hidden_params(experts, spec)})
        if router is not None:
            dims[id(router.weight)] = 1
    for param, node in graph.module2node.items():
        if isinstance(param, nn.Parameter) and id(param) in dims:
            node.pruning_dim = dims[id(param)]
    graph.unwrapped_parameters = [type(u)(u[0], dims[id(u[0])]) if id(u[0]) in dims else u
                                  for u in graph.unwrapped_parameters]
    return held
