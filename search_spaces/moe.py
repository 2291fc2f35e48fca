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
kept in step with the parameters by ``experts.sync_hidden`` after every pruning step.

Plain-PyTorch experts (an ``nn.ModuleList`` of identical modules behind a router) are traced
as they run, but an expert the example routes no token to never runs and would be missing
from the graph (kept at the old residual width, it breaks the pruned network as soon as a
token reaches it). So while the graph is traced, each such expert also runs on the rows a
sibling got, its output joining the list's parent output times zero
(:func:`_all_experts_hooks`): it then couples to the residual width and to its siblings'
tied width as they do, and no value changes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .experts import fused_layers, hidden_params, read_experts
from .pruner import Template
from .ssm import template as ssm_template
from .tracing import Output, swapped_forwards

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


def _lists(model: nn.Module) -> list[tuple[str, str]]:
    """``(list, its parent)`` names of every ``nn.ModuleList`` of two or more identical
    modules (class and parameter shapes): experts, perhaps."""
    out = []
    for pname, parent in model.named_modules():
        for cname, m in parent.named_children():
            kids = list(m.children()) if isinstance(m, nn.ModuleList) else []
            sig = {(type(k), tuple((n, tuple(p.shape)) for n, p in k.named_parameters()))
                   for k in kids}
            if len(kids) >= 2 and len(sig) == 1 and next(iter(sig))[1]:
                out.append((f"{pname}.{cname}" if pname else cname, pname))
    return out


def _all_experts_hooks(model: nn.Module) -> list[tuple[str, Any]]:
    """Hooks (``(module name, handle)``) that make every expert of a routed list part of the
    traced graph: after the list's parent ran, each expert the example routed nothing to runs
    on the rows a sibling got, its output summed over the rows and added, times zero, to the
    parent's output (so its inputs and outputs couple as its siblings' do; no value changes).
    An expert whose output is not as wide as the parent's, or that fails, is left out."""
    hooks: list[tuple[str, Any]] = []
    for name, parent_name in _lists(model):
        state: dict[str, Any] = {"ran": set(), "rows": None}

        def seen(i: int, state: dict = state) -> Any:
            def hook(mod: nn.Module, args: tuple) -> None:
                state["ran"].add(i)
                if state["rows"] is None and args and isinstance(args[0], torch.Tensor):
                    state["rows"] = args[0]
            return hook

        def reset(mod: nn.Module, args: tuple, state: dict = state) -> None:
            state["ran"], state["rows"] = set(), None

        def finish(mod: nn.Module, args: tuple, out: Any, name: str = name,
                   state: dict = state) -> Any:
            rows, kids = state["rows"], list(mod.get_submodule(name[len(parent_name) + 1:]
                                                               if parent_name else name))
            if rows is None or not state["ran"] or not isinstance(out, torch.Tensor):
                return out
            for i, kid in enumerate(kids):
                if i in state["ran"]:
                    continue
                try:
                    y = kid(rows)
                except Exception:  # noqa: BLE001 - not an expert of this parent: left out
                    continue
                if isinstance(y, torch.Tensor) and y.dim() and y.shape[-1] == out.shape[-1]:
                    out = out + y.reshape(-1, y.shape[-1]).sum(0) * 0.0
            return out

        parent = model.get_submodule(parent_name)
        hooks.append((parent_name, parent.register_forward_pre_hook(reset)))
        hooks.append((parent_name, parent.register_forward_hook(finish)))
        for i, kid in enumerate(model.get_submodule(name)):
            hooks.append((f"{name}.{i}", kid.register_forward_pre_hook(seen(i))))
    return hooks


def template(model: nn.Module, inputs: tuple[torch.Tensor, ...], output: Output) -> Template:
    """:func:`_fused_template`, with every expert of an ``nn.ModuleList`` traced, those the
    example routes nothing to included (:func:`_all_experts_hooks`; the hooks are removed
    from the model and from the template's copy once it is built)."""
    hooks = _all_experts_hooks(model)
    try:
        held = _fused_template(model, inputs, output)
    finally:
        for _, h in hooks:
            h.remove()
    if hooks:
        for name, h in hooks:
            m = held.model.get_submodule(name)
            m._forward_hooks.pop(h.id, None)
            m._forward_pre_hooks.pop(h.id, None)
    return held


def _fused_template(model: nn.Module, inputs: tuple[torch.Tensor, ...],
                    output: Output) -> Template:
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
    try:
        with swapped_forwards(swaps):
            held = ssm_template(model, inputs, output)
    finally:
        _HANDED.clear()
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
