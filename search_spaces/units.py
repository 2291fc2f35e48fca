"""Finding a model's units: every attention layer whose heads can be read, and every other
Torch-Pruning channel group that can be a unit, with its kind (``channels``, ``neurons``,
``residual``, ``heads``, ``head_dim``), its floor and the counts it may keep; a note for each
one set aside. ``channel.py`` builds the space from them (probes, exact costs, pruning)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch_pruning as tp
from torch import nn

from .attention import find_attention
from .base import Unit
from .broadcast import routes
from .experts_pruner import ExpertsPruner as Pruner
from .layers import parametrised
from .pruner import Candidate
from .shared_bias import tie_shared_heads
from .tracing import pruning_group, roots

__all__ = ["FLOORS", "channel_choices", "find_candidates", "floor_of"]

#: The fewest elements a unit keeps by default, as a fraction, per kind of unit (``Unit.kind``),
#: when no ``min_ratio`` overrides them all. A CNN's channels keep AMC's 0.2. An MLP's hidden
#: neurons may go much thinner: on the character-level decoder FastNAS kept 12 of 256 in four
#: of six blocks and its network was the best measured (benchmarks/results/agents-*.json), so
#: their floor is 0.05. The residual width feeds every block and keeps half. Heads and the
#: positions inside them keep AMC's 0.2 (at least one head). A MoE layer keeps at least 0.2 of its
#: experts (and at least its top-k).
FLOORS = {"channels": 0.2, "neurons": 0.05, "residual": 0.5, "heads": 0.2, "head_dim": 0.2,
          "experts": 0.2}


def floor_of(kind: str, min_ratio: float | None) -> float:
    """The floor of a unit of ``kind``: ``min_ratio`` when given, else the kind's default."""
    return FLOORS.get(kind, FLOORS["channels"]) if min_ratio is None else min_ratio


def channel_choices(full: int, *, round_to: int, min_ratio: float) -> tuple[int, ...]:
    """Counts a unit of ``full`` elements may keep: multiples of ``round_to`` from the lower
    bound up, plus ``full`` itself. The lower bound is ``min_ratio`` of the elements rounded
    up (AMC clips preserve ratios to [0.2, 1] so no layer vanishes)."""
    step = max(1, round_to)
    lowest = max(step, math.ceil(min_ratio * full / step) * step)
    lowest = min(lowest, full)
    return tuple(sorted(set(range(lowest, full, step)) | {full}))


_SPLITTING = ("_SplitOp", "_UnbindOp", "_SliceOp", "_ExpandOp")


def _blocks(graph: tp.DependencyGraph, group: tp.Group, root: nn.Module,
            full: int) -> tuple[tuple[int, ...], ...] | None:
    """The root's channels that Torch-Pruning removes together (both halves of a chunked gate
    are one element); ``None`` when the elements are not all the same size. Only a group that
    splits a tensor can couple channels of its root, so only then is each channel asked."""
    if not any(type(dep.target.module).__name__ in _SPLITTING for dep, _ in group):
        return tuple((i,) for i in range(full))
    owner: dict[int, int] = {}
    blocks: list[tuple[int, ...]] = []
    for i in range(full):
        if i in owner:
            continue
        together = {i}
        for item in pruning_group(graph, root, [i]).items:
            if item.dep.target.module is root and item.dep.handler.__name__ == "prune_out_channels":
                together |= {int(k) for k in item.idxs if int(k) < full}
        if together & set(owner):
            return None  # overlapping couplings: not a partition into equal elements
        for k in together:
            owner[k] = len(blocks)
        blocks.append(tuple(sorted(together)))
    return tuple(blocks) if len({len(b) for b in blocks}) == 1 else None


def find_candidates(pruner: Pruner, sequence: Sequence[str], round_to: int,
                     min_ratio: float | None, ignored: set[str], head_dims: bool = False
                     ) -> tuple[list[Candidate], list[str]]:
    """Every attention layer whose heads can be read, and every other channel group of the
    graph that can be a unit, with a note for each one set aside. Whatever fails for one
    layer (Torch-Pruning included) keeps that layer's group dense with a note naming it."""
    graph, model = pruner.graph, pruner.model
    name_of = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(name_of.values())}
    candidates: list[Candidate] = []
    notes: list[str] = []
    fixed = parametrised(model)  # Torch-Pruning cannot prune a parametrised weight
    notes += [f"{n} is kept dense: its weight is parametrised ({kind}), which Torch-Pruning "
              f"cannot prune, so the channel groups through it are not searched. Fix: remove "
              f"the parametrisation (torch.nn.utils.parametrize.remove_parametrizations) to "
              f"search them" for n, kind in fixed.items()]
    projections: set[str] = set()
    try:
        layers = tie_shared_heads(model, find_attention(model, sequence))
    except Exception as err:  # noqa: BLE001 - one unreadable layer must not stop the build
        layers = []
        notes.append(f"attention heads are not searched: reading the attention layers failed "
                     f"({type(err).__name__}: {err})")
    for heads in layers:
        members = heads.members
        projections |= {n for s in heads.layers() for n in (s.q, s.k, s.v)} | set(heads.bias)
        if (ignored | set(fixed)) & set(members):
            continue
        per = heads.kv_heads if heads.kv_heads < heads.heads else 1  # GQA: same in every group
        low = max(per, math.ceil(floor_of("heads", min_ratio) * heads.heads / per) * per)
        choices = tuple(range(min(low, heads.heads), heads.heads + 1, per))
        if len(choices) >= 2:
            candidates.append(Candidate(heads=heads, unit=Unit(
                name=f"{heads.module}:heads", full=heads.heads, choices=choices, members=members,
                kind="heads")))
        dims = channel_choices(heads.head_dim, round_to=max(1, heads.head_dim // 8),
                               min_ratio=floor_of("head_dim", min_ratio))
        if head_dims and len(dims) >= 2:
            candidates.append(Candidate(heads=heads, dims=True, unit=Unit(
                name=f"{heads.module}:head_dim", full=heads.head_dim, choices=dims,
                members=members, kind="head_dim")))
    visited: set[nn.Module] = {m for m in name_of if name_of[m] in projections}
    for root in list(graph.module2node):
        if not isinstance(root, roots()) or root in visited or name_of.get(root) in ignored:
            continue
        try:
            found = _group_candidate(model, graph, root, name_of, order, visited, round_to,
                                     min_ratio, ignored, set(fixed), projections)
        except Exception as err:  # noqa: BLE001 - Torch-Pruning's own failure, named here
            found = (f"{name_of.get(root, type(root).__name__)} is kept dense: Torch-Pruning "
                     f"cannot group its channels ({type(err).__name__}: {err}). Fix: leave it "
                     f"out with ignored_layers")
        if isinstance(found, Candidate):
            candidates.append(found)
        elif found:
            notes.append(found)
    candidates.sort(key=lambda c: order.get(c.unit.members[0], 0))
    return candidates, notes


def _group_candidate(model: nn.Module, graph: tp.DependencyGraph, root: nn.Module,
                     name_of: Mapping[nn.Module, str], order: Mapping[str, int],
                     visited: set[nn.Module], round_to: int, min_ratio: float | None,
                     ignored: set[str], fixed: set[str], projections: set[str]
                     ) -> Candidate | str | None:
    """The unit of ``root``'s channel group, a note saying why it is kept dense, or ``None``
    when it is no unit (it feeds the output, its outputs are ``ignored``, it touches a layer
    that cannot be pruned (``fixed``), or it has too few channels)."""
    fn = graph.get_pruner_of_module(root)
    if fn is None or fn.get_out_channels(root) is None:
        return None
    full_root = int(fn.get_out_channels(root))
    group = pruning_group(graph, root, range(full_root))
    outs, touches_output, touched = [], False, set()
    for dep, _ in group:
        node = dep.target
        if isinstance(node.module, nn.Module) and node.module in name_of:
            touched.add(name_of[node.module])
        if dep.handler.__name__ != "prune_out_channels":
            continue
        if not node.outputs or routes(node):
            touches_output = True  # it would change the output's shape (or, routed, the experts)
        if isinstance(node.module, nn.Module) and node.module in name_of:
            outs.append(name_of[node.module])
            visited.add(node.module)
    if touches_output or not outs or ignored & set(outs) or fixed & touched \
            or projections & set(outs):
        return None
    members = tuple(sorted(set(outs), key=order.__getitem__))
    blocks = _blocks(graph, group, root, full_root)
    if blocks is None:
        return (f"{name_of[root]} is kept dense: its channels are coupled in groups of "
                "different sizes, which cannot be costed exactly")
    step = round_to
    for n in members:  # nn.MultiheadAttention needs a width its heads divide
        m = model.get_submodule(n)
        if isinstance(m, nn.MultiheadAttention):
            step = math.lcm(step, int(m.num_heads))
    kind = _group_kind(group)
    choices = channel_choices(len(blocks), round_to=step, min_ratio=floor_of(kind, min_ratio))
    if len(choices) < 2:
        return None
    primary = [n for n in members if isinstance(model.get_submodule(n), roots())]
    unit = Unit(name=(primary or list(members))[0], full=len(blocks), choices=choices,
                members=members, kind=kind)
    return Candidate(unit=unit, root=name_of[root], blocks=blocks)


def _group_kind(group: Any) -> str:
    """``residual`` for a width that a layer norm or an embedding shares (a transformer's,
    a ViT's after its patch embedding, a ConvNeXt stage's), ``channels`` for another group
    with a convolution in it (a CNN's channels), ``neurons`` otherwise (an MLP's hidden
    layer)."""
    modules = [dep.target.module for dep, _ in group]
    if any(isinstance(m, (nn.Embedding, nn.LayerNorm, nn.RMSNorm))
           or "LayerNorm" in type(m).__name__ or "RMSNorm" in type(m).__name__
           for m in modules):
        return "residual"
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in modules):
        return "channels"
    return "neurons"
