"""State-space (Mamba-style) mixers: their inner width as one channel group.

A Mamba mixer (``transformers``' ``MambaMixer``, or a plain-PyTorch block with the same
parts) widens the residual stream to an inner width ``d_inner`` with ``in_proj`` (whose
output is two halves: ``x`` and the gate ``z``), runs a causal depthwise ``conv1d`` over
``x``, projects it with ``x_proj`` to a time step of rank ``r`` and the input-dependent ``B``
and ``C`` (``state_size`` each), widens the time step back with ``dt_proj``, runs the
selective scan with the free parameters ``A_log [d_inner, state]`` and ``D [d_inner]``, and
narrows back with ``out_proj``. Every one of those meets the inner width: both halves of
``in_proj``'s outputs, ``conv1d``'s channels, ``x_proj``'s inputs, ``dt_proj``'s outputs,
``A_log``'s and ``D``'s rows, ``out_proj``'s inputs. That is one unit.

Torch-Pruning cannot see it in the model's own forward: ``conv1d`` and ``dt_proj`` are used
through their weights (``F.conv1d``, ``dt_proj.weight @ ...``), so they are no nodes of its
graph; ``A_log`` is taken for a parameter pruned along its last (state) dimension; and the
scan multiplies ``B`` and ``C`` into the inner width elementwise, which couples ``x_proj``'s
outputs to it. So while the dependency graph is traced (:func:`template`, only then), each
mixer runs :func:`_traced_forward`: the same layers called as modules, the scan as one
opaque operation over the inner-width tensors (``B`` and ``C`` enter it detached: they are
``state_size`` wide, not inner-wide), and ``A_log`` is then pruned along its rows. The
pruned network runs the mixer's own forward, whose sizes all follow the tensors' shapes
(without a cache: ``transformers``' generation cache is sized from the config's
``intermediate_size``, which a pruned mixer no longer has). ``x_proj``'s outputs (the time
step's rank, ``B``, ``C``) are no unit: the probe finds that the split of its outputs is
fixed in the forward and keeps them dense with a note naming ``x_proj``. The forward of a
mixer's class is swapped only while :func:`template` traces (one thread at a time).

Costs: the scan's readout ``state @ C`` is a batched matmul per step that the flop counter
counts (``B * T * d_inner * state`` MACs), as is ``dt_proj.weight @ time_step``; the
discretisation (``exp``, products with ``dt``, ``B``, ``x``) is elementwise, which neither the
reference nor the layer table counts, as for every other network. The layer table's rows
of those matmuls are affine in the inner width, so they are exact with no formula of ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .pruner import Template
from .tracing import Output, swapped_forwards

__all__ = ["is_mamba_mixer", "mamba_mixers", "template"]

_PARTS = ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj")


def is_mamba_mixer(m: nn.Module) -> bool:
    """Whether ``m`` is a Mamba-style mixer: the five layers and ``A_log``/``D`` by name."""
    if not all(isinstance(getattr(m, p, None), nn.Module) for p in _PARTS):
        return False
    a, d = getattr(m, "A_log", None), getattr(m, "D", None)
    return (isinstance(a, nn.Parameter) and isinstance(d, nn.Parameter) and a.dim() == 2
            and d.dim() == 1 and isinstance(m.conv1d, nn.Conv1d)
            and isinstance(m.dt_proj, nn.Linear) and isinstance(m.x_proj, nn.Linear))


def mamba_mixers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every Mamba-style mixer of ``model`` with its name."""
    return ((n, m) for n, m in model.named_modules() if is_mamba_mixer(m))


class _Scan(torch.autograd.Function):
    """The selective scan as Torch-Pruning is to see it: one elementwise operation over the
    inner-width tensors. Only the graph is traced from it (its values are never used)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dt: torch.Tensor, z: torch.Tensor, a: torch.Tensor,
                d: torch.Tensor) -> torch.Tensor:  # x, dt: [b, inner, T']; z: [b, inner, T]
        t = z.shape[-1]
        return (x[..., :t] * dt[..., :t] * d[None, :, None] + a.sum(-1)[None, :, None]) * z

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:  # pragma: no cover
        raise RuntimeError("the traced stand-in of a selective scan has no backward")


def _traced_forward(self: nn.Module, hidden_states: torch.Tensor, *args: Any,
                    **kwargs: Any) -> torch.Tensor:
    """A mixer's forward as the dependency graph is traced: in_proj -> (x, z); x -> conv1d ->
    x_proj -> (time step -> dt_proj, B, C); the scan over x, dt, z, A and D -> out_proj."""
    x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
    x = nn.functional.silu(self.conv1d(x.transpose(1, 2)))  # [b, inner, T + k - 1]
    rank = self.dt_proj.in_features
    state = self.A_log.shape[1]
    time_step, b, c = torch.split(self.x_proj(x.transpose(1, 2)), [rank, state, state], dim=-1)
    dt = self.dt_proj(time_step).transpose(1, 2)
    del b, c  # (state-wide, not inner-wide: the scan reads them, they couple nothing)
    a = -torch.exp(self.A_log.float())
    y = _Scan.apply(x, dt, z.transpose(1, 2), a, self.D)
    return self.out_proj(y.transpose(1, 2))


def template(model: nn.Module, inputs: tuple[torch.Tensor, ...], output: Output) -> Template:
    """``Template(model, inputs, output)``, with every Mamba-style mixer traced as
    :func:`_traced_forward` and its ``A_log`` pruned along its rows (the inner width)."""
    classes = {type(m) for _, m in mamba_mixers(model)}
    if not classes:
        return Template(model, inputs, output)
    with swapped_forwards({c: _traced_forward for c in classes}):
        held = Template(model, inputs, output)
    graph = held.graph
    rows = {id(m.A_log) for _, m in mamba_mixers(held.model)}
    for param, node in graph.module2node.items():
        if isinstance(param, nn.Parameter) and id(param) in rows:
            node.pruning_dim = 0
    graph.unwrapped_parameters = [type(u)(u[0], 0) if id(u[0]) in rows else u
                                  for u in graph.unwrapped_parameters]
    return held
