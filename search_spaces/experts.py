"""Fused mixture-of-experts layers: each layer's expert width, and how many experts it keeps.

``transformers`` 5 stores a MoE layer's experts as one module holding 3-D parameters
(Mixtral's ``MixtralExperts``, Qwen-MoE's, and the others built with
``use_experts_implementation``): ``gate_up_proj`` ``[experts, 2 * width, hidden]`` (the gate
rows, then the up rows; ``up_proj`` ``[experts, width, hidden]`` without a gate) and
``down_proj`` ``[experts, hidden, width]``; ``is_transposed`` swaps the last two dimensions of
both, ``is_concatenated=False`` interleaves the gate and up rows. Torch-Pruning cannot prune
such parameters along the width, so each such module is a unit here (:class:`ExpertsCandidate`,
pruned by :class:`ExpertsPruner`, the channel space's pruner).

**One width per layer, each expert keeping its own neurons.** The unit is the number of
intermediate neurons every expert of the layer keeps; each expert keeps the neurons of its own
largest L2 magnitude (its gate row, up row and down column, and their biases), because the
experts are independent MLPs whose neuron ``j`` has nothing in common. The width is shared
because that is what makes the costs exact: the routed MACs of a layer are
``sum_e tokens_e * 3 * hidden * width_e``, and the tokens each expert gets change whenever any
other unit is pruned (the router reads the pruned residual stream), while ``sum_e tokens_e``
is always ``tokens * top_k``. With one width the cost is ``tokens * top_k * 3 * hidden *
width`` on every configuration; with a width per expert it would depend on the routing.

Costs come from the channel space's probe, as for every unit: the parameters' shapes are read
off, and the experts' kernel (``torch._grouped_mm``, the default, counted by ``reference.py``;
``batched_mm``'s ``bmm``) records the routed rows. The ``eager`` implementation loops over the
experts that were hit, one matmul per expert: its operations change with the routing, so any
unit that moves the routing (a layer's heads, an earlier layer's experts) is kept dense with a
note by the channel space's probe (never costed wrongly). The width is a multiple
of ``16 bytes / element size``, the stride ``grouped_mm`` requires. Weight-only: every
criterion ranks the experts' neurons by their L2 magnitude (no data criterion measures them).
Trials holding such a unit are pruned unit by unit (``gather.plannable`` says no).

**How many experts a layer keeps** is a unit too (:class:`ExpertCount`, kind ``experts``), for
a layer whose router (a sibling holding a raw weight ``[experts, hidden]`` and a ``top_k``) is
found: from ``max(top_k, floor * experts)`` to all. Experts are ranked by their routed share on
the example (the top-k indices the experts module is handed, :func:`routed_shares`) times
their weights' L2 norm (the norm alone orders experts never routed to); the kept experts' rows
go from every per-expert parameter and buffer of the experts module and of its router, and
``num_experts`` follows. The routed MACs do not depend on the count (``tokens * top_k`` rows
whatever the experts), which ``exact.py`` sees by recording ``grouped_mm`` as rows x K x N;
the router's MACs and the parameters do. Every criterion ranks experts this way.

**The residual width** of a fused layer (its parameters' hidden dimension, the router's
columns) is traced and pruned by ``moe.py``; :func:`sync_hidden` keeps ``hidden_dim`` in step.

Plain-PyTorch experts (an ``nn.ModuleList`` of MLPs) are ``expert_lists.py``'s; the channel
space's pruner, which prunes both, is ``experts_pruner.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import math

import numpy as np
import torch
from torch import nn

from .base import Unit
from .tracing import call_model
from .pruner import Candidate

__all__ = ["COUNT_ATTRS", "ExpertCount", "ExpertsCandidate", "FusedExperts", "count_scores",
           "expert_scores", "find_expert_counts", "find_experts", "fused_layers", "hidden_params",
           "prune_expert_count", "prune_experts", "read_experts", "routed_shares", "share_scores",
           "sync_hidden"]

#: Attributes of an experts module holding its width, kept in step with it.
_WIDTH = ("intermediate_dim", "intermediate_size", "expert_dim", "moe_intermediate_size")


@dataclass(frozen=True)
class FusedExperts:
    """One experts module: its name, the parameter in front (``gate_up_proj`` or
    ``up_proj``), whether it holds a gate (two rows per neuron), the layouts, and the sizes."""

    module: str
    up: str
    gated: bool
    transposed: bool
    concatenated: bool
    experts: int
    width: int

    def up_rows(self, neurons: np.ndarray, width: int) -> np.ndarray:
        """The rows (along the width dimension) of ``up`` that hold ``neurons``."""
        if not self.gated:
            return neurons
        if self.concatenated:
            return np.concatenate([neurons, neurons + width])
        return np.stack([2 * neurons, 2 * neurons + 1], axis=1).reshape(-1)


@dataclass(frozen=True)
class ExpertsCandidate(Candidate):
    """A unit of fused experts: the width every expert of ``experts`` keeps."""

    experts: FusedExperts | None = None


@dataclass(frozen=True)
class ExpertCount(Candidate):
    """A unit of fused experts: how many experts the layer keeps (``experts``' and its
    router's rows), ranked by ``share``, each expert's routed share on the example."""

    layer: FusedExperts | None = None
    router: str = ""
    share: tuple[float, ...] = ()


def read_experts(name: str, m: nn.Module) -> FusedExperts | None:
    """``m`` as fused experts, or ``None`` when its parameters are not laid out as such."""
    params = dict(m.named_parameters(recurse=False))
    down = params.get("down_proj")
    up_name = "gate_up_proj" if "gate_up_proj" in params else "up_proj"
    up = params.get(up_name)
    if down is None or up is None or down.dim() != 3 or up.dim() != 3 \
            or up.shape[0] != down.shape[0]:
        return None
    gated = bool(getattr(m, "has_gate", up_name == "gate_up_proj"))
    rows = 2 if gated else 1
    transposed = getattr(m, "is_transposed", None)
    if transposed is None:  # read off the shapes, where they say it unambiguously
        plain = up.shape[1] == rows * down.shape[2] and up.shape[2] == down.shape[1]
        swapped = up.shape[2] == rows * down.shape[1] and up.shape[1] == down.shape[2]
        if plain == swapped:
            return None
        transposed = swapped
    width = int(down.shape[1] if transposed else down.shape[2])
    hidden = int(down.shape[2] if transposed else down.shape[1])
    want = (up.shape[0], hidden, rows * width) if transposed else (up.shape[0], rows * width, hidden)
    if tuple(up.shape) != want:
        return None
    return FusedExperts(module=name, up=up_name, gated=gated, transposed=bool(transposed),
                        concatenated=bool(getattr(m, "is_concatenated", True)),
                        experts=int(up.shape[0]), width=width)


#: Attributes of an experts module or a router holding the hidden size, kept in step with it.
_HIDDEN = ("hidden_dim", "hidden_size")


def _router_of(parent: nn.Module, experts: nn.Module, spec: FusedExperts) -> nn.Module | None:
    """The sibling of ``experts`` in ``parent`` holding a raw router weight ``[experts,
    hidden]`` (an ``nn.Linear`` router is Torch-Pruning's own and needs nothing here)."""
    hidden = _hidden_size(experts, spec)
    for child in parent.children():
        w = child._parameters.get("weight") if child is not experts else None
        if isinstance(w, nn.Parameter) and not isinstance(child, nn.Linear) and w.dim() == 2 \
                and tuple(w.shape) == (spec.experts, hidden):
            return child
    return None


def fused_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, FusedExperts,
                                                      nn.Module | None]]:
    """Every fused-experts module of ``model``: its name, itself, its layout, its router
    (``None`` when it has no raw-weight router beside it)."""
    for pname, parent in model.named_modules():
        for cname, child in parent.named_children():
            name = f"{pname}.{cname}" if pname else cname
            spec = read_experts(name, child)
            if spec is not None:
                yield name, child, spec, _router_of(parent, child, spec)


def _hidden_dims(spec: FusedExperts) -> tuple[int, int]:
    """The hidden dimension of ``up`` and of ``down_proj``."""
    return (1, 2) if spec.transposed else (2, 1)


def _hidden_size(m: nn.Module, spec: FusedExperts) -> int:
    return int(m.down_proj.shape[_hidden_dims(spec)[1]])


def hidden_params(m: nn.Module, spec: FusedExperts) -> list[tuple[nn.Parameter, int]]:
    """The experts' parameters that hold the hidden size, each with that dimension."""
    up_dim, down_dim = _hidden_dims(spec)
    out = [(getattr(m, spec.up), up_dim), (m.down_proj, down_dim)]
    bias = m._parameters.get("down_proj_bias")
    if isinstance(bias, nn.Parameter) and bias.dim() == 2:
        out.append((bias, 1))
    return out


def sync_hidden(model: nn.Module) -> None:
    """Set the hidden-size attributes of every fused-experts module and its router to the
    hidden size their parameters now have."""
    for _, experts, spec, router in fused_layers(model):
        hidden = _hidden_size(experts, spec)
        for m in (experts, router):
            for attr in _HIDDEN:
                if m is not None and isinstance(getattr(m, attr, None), int):
                    setattr(m, attr, hidden)


#: Attributes of an experts module or a router holding the number of experts.
COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts")


def routed_shares(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    """Per fused-experts module of ``model``, the share of the routed (token, expert) pairs
    each expert got on ``inputs`` (the top-k indices its forward is handed)."""
    layers = list(fused_layers(model))
    if not layers:
        return {}  # (no forward pass for a model without fused experts)
    counts: dict[str, np.ndarray] = {}
    handles = []
    for name, m, spec, _ in layers:
        def pre(mod: nn.Module, args: tuple, kwargs: dict, name: str = name,
                n: int = spec.experts) -> None:
            idx = args[1] if len(args) > 1 else kwargs.get("top_k_index")
            if isinstance(idx, torch.Tensor):
                idx = idx.detach().flatten().long().cpu()
                got = torch.bincount(idx[(idx >= 0) & (idx < n)], minlength=n).numpy()
                counts[name] = counts.get(name, 0) + got
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return {n: c / max(1, int(c.sum())) for n, c in counts.items()}


def find_expert_counts(model: nn.Module, ignored: set[str], floor: float,
                       shares: dict[str, np.ndarray]) -> list[ExpertCount]:
    """A unit per fused-experts module with a router (not ``ignored``) whose top-k is known:
    from ``floor`` of its experts (at least the top-k) to all of them."""
    out = []
    for name, m, spec, router in fused_layers(model):
        top_k = getattr(router, "top_k", None)
        if router is None or name in ignored or name not in shares or not isinstance(top_k, int):
            continue
        low = max(top_k, math.ceil(floor * spec.experts))
        if low >= spec.experts:
            continue
        router_name = next(n for n, x in model.named_modules() if x is router)
        unit = Unit(name=f"{name}:experts", full=spec.experts,
                    choices=tuple(range(low, spec.experts + 1)), members=(name, router_name),
                    kind="experts")
        out.append(ExpertCount(unit=unit, root=name, layer=spec, router=router_name,
                               blocks=tuple((i,) for i in range(spec.experts)),
                               share=tuple(float(x) for x in shares[name])))
    return out


def count_scores(m: nn.Module, share: Sequence[float]) -> np.ndarray:
    """Each expert's routed share times its weights' L2 norm (relative to the mean), the
    norm alone breaking ties (experts the example never routed to)."""
    with torch.no_grad():
        sq = sum(p.detach().float().pow(2).flatten(1).sum(1) for p in m.parameters(recurse=False)
                 if p.dim() >= 2 and p.shape[0] == len(share))
    return share_scores(share, np.asarray(sq, dtype=np.float64))


def share_scores(share: Sequence[float], squares: np.ndarray) -> np.ndarray:
    """Each expert's routed ``share`` times its weights' L2 norm (``squares``: the squared
    norms) relative to their mean, plus a millionth of the norm to order unrouted experts."""
    norm = np.sqrt(np.asarray(squares, dtype=np.float64))
    norm = norm / max(float(norm.mean()), 1e-30)
    return np.asarray(share, dtype=np.float64) * norm + 1e-6 * norm


def prune_expert_count(modules: Sequence[nn.Module], experts: int, keep: np.ndarray) -> None:
    """Keep experts ``keep`` of ``modules`` (the experts module and its router), out of place:
    every parameter and buffer ``experts`` long in its first dimension, and the attributes
    holding the number of experts."""
    idx = torch.as_tensor(np.sort(np.asarray(keep, dtype=np.int64)))
    with torch.no_grad():
        for mod in modules:
            for attr, p in list(mod._parameters.items()):
                if p is not None and p.dim() and p.shape[0] == experts:
                    setattr(mod, attr, nn.Parameter(p.detach().index_select(0, idx.to(p.device)),
                                                    requires_grad=p.requires_grad))
            for attr, b in list(mod._buffers.items()):
                if b is not None and b.dim() and b.shape[0] == experts:
                    mod._buffers[attr] = b.index_select(0, idx.to(b.device))
            for attr in COUNT_ATTRS:
                if getattr(mod, attr, None) == experts:
                    setattr(mod, attr, len(idx))


def find_experts(model: nn.Module, ignored: set[str],
                 choices: Callable[[int, int], tuple[int, ...]]) -> list[ExpertsCandidate]:
    """A unit per fused-experts module of ``model`` not ``ignored``; ``choices(width, step)``
    gives the widths it may keep (``step``: the multiple ``grouped_mm`` needs)."""
    out = []
    for name, m in model.named_modules():
        spec = read_experts(name, m) if name not in ignored else None
        if spec is None:
            continue
        step = max(1, 16 // getattr(m, spec.up).element_size())
        kept = choices(spec.width, step)
        if len(kept) < 2:
            continue
        unit = Unit(name=f"{name}:expert_width", full=spec.width, choices=kept,
                    members=(name,), kind="neurons")
        out.append(ExpertsCandidate(unit=unit, root=name,
                                    blocks=tuple((i,) for i in range(spec.width)), experts=spec))
    return out


def _dims(spec: FusedExperts) -> tuple[int, int]:
    """The width's dimension in ``up`` and in ``down_proj``."""
    return (2, 1) if spec.transposed else (1, 2)


def expert_scores(m: nn.Module, spec: FusedExperts) -> np.ndarray:
    """``[experts, width]``: the squared L2 magnitude of each expert's neurons (its gate and
    up rows, its down column, their biases)."""
    up_dim, down_dim = _dims(spec)
    width = int(m.down_proj.shape[down_dim])
    with torch.no_grad():
        up = getattr(m, spec.up).detach().float().pow(2).sum(dim=3 - up_dim)  # [E, rows*width]
        down = m.down_proj.detach().float().pow(2).sum(dim=3 - down_dim)       # [E, width]
        bias = getattr(m, f"{spec.up}_bias", None)
        if isinstance(bias, torch.Tensor):
            up = up + bias.detach().float().pow(2)
        per = up[:, torch.as_tensor(spec.up_rows(np.arange(width), width))]
        per = per.reshape(up.shape[0], -1, width).sum(1) if spec.gated and spec.concatenated \
            else per.reshape(up.shape[0], width, -1).sum(2)
    return (per + down).numpy().astype(np.float64)


def prune_experts(m: nn.Module, spec: FusedExperts, keep: Sequence[np.ndarray]) -> None:
    """Keep neurons ``keep[e]`` (as many in every expert) of each expert of ``m``, out of place."""
    up_dim, down_dim = _dims(spec)
    width = int(m.down_proj.shape[down_dim])
    kept = len(keep[0])
    rows = [torch.as_tensor(spec.up_rows(np.sort(k), width)) for k in keep]
    cols = [torch.as_tensor(np.sort(k)) for k in keep]
    with torch.no_grad():
        def select(t: torch.Tensor, dim: int, idx: list[torch.Tensor]) -> nn.Parameter:
            out = torch.stack([t[e].index_select(dim - 1, idx[e]) for e in range(t.shape[0])])
            return nn.Parameter(out, requires_grad=t.requires_grad)

        setattr(m, spec.up, select(getattr(m, spec.up), up_dim, rows))
        m.down_proj = select(m.down_proj, down_dim, cols)
        bias = getattr(m, f"{spec.up}_bias", None)
        if isinstance(bias, nn.Parameter):  # [experts, rows * width]
            setattr(m, f"{spec.up}_bias", nn.Parameter(torch.stack(
                [bias[e].index_select(0, rows[e]) for e in range(bias.shape[0])]),
                requires_grad=bias.requires_grad))
    for attr in _WIDTH:
        if getattr(m, attr, None) == width:
            setattr(m, attr, kept)
