"""Attention heads as units: found, ranked and pruned whole, with the module told.

Torch-Pruning sees an attention layer's query, key and value projections and its output
projection as one channel group (the matmuls between them look element-wise to it), but it
does not know where one head ends: pruning that group channel by channel leaves widths that
no longer split into heads, or heads made of pieces of several. Here such a group becomes a
unit of *heads*:

- an attention module is recognised by its projections -- separate (``q_proj``/``k_proj``/
  ``v_proj``, ``query``/``key``/``value``, ``q``/``k``/``v``, ``q_lin``/...) or fused
  (``c_attn``, ``qkv``, laid out ``[q | k | v]``) -- and its head size (``head_dim``,
  ``attention_head_size``, ``head_size``) or head count (``num_heads``,
  ``num_attention_heads``, ``n_head``, ``n_heads``);
- the output projection is the first linear layer to run after the value projection that
  takes all heads' width;
- with grouped-query attention (fewer key/value heads than query heads) the unit is the query
  heads, the same number kept in every key/value group; keys and values stay;
- pruning removes the chosen heads' rows from the projections and their columns from the
  output projection, then sets the module's own attributes (head counts, all-head sizes,
  ``split_size``, ``num_key_value_groups``) so that it runs, saves and reloads;
- several layers may share their heads (``AttentionHeads.tied``: T5's position bias, computed
  once per stack for all heads and passed on, see ``shared_bias.py``): they keep the same heads,
  and per-head tables (``AttentionHeads.bias``: T5's ``relative_attention_bias`` embedding, one
  column per head) lose the columns of the heads that go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .importance import current, materialized, squares
from .tracing import Conv1DPruner, conv1d_type

__all__ = ["AttentionHeads", "drop_head_dims", "drop_heads", "find_attention", "head_cuts",
           "head_dim_cuts", "head_dim_scores", "head_scores", "prune_head_dims", "prune_heads",
           "resized"]

_SEPARATE = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"),
             ("q_lin", "k_lin", "v_lin"), ("to_q", "to_k", "to_v"), ("wq", "wk", "wv"))
_FUSED = ("c_attn", "qkv", "in_proj")
_HEAD_SIZE = ("head_dim", "attention_head_size", "head_size", "key_value_proj_dim")
_HEADS = ("num_heads", "num_attention_heads", "n_head", "n_heads")
_ALL_HEADS = ("all_head_size", "inner_dim")


@dataclass(frozen=True)
class AttentionHeads:
    """One attention layer's heads: where they live and how many there are."""

    module: str
    q: str
    k: str
    v: str
    out: str
    heads: int
    kv_heads: int
    head_dim: int
    #: further layers ``(module, q, k, v, out)`` that keep the same heads as this one
    tied: tuple[tuple[str, str, str, str, str], ...] = ()
    #: embeddings whose columns are the heads (pruned with them)
    bias: tuple[str, ...] = ()

    def layers(self) -> list[AttentionHeads]:
        """Each layer of this unit alone (itself first, then the tied ones)."""
        alone = replace(self, tied=(), bias=())
        return [alone] + [replace(alone, module=m, q=q, k=k, v=v, out=o)
                          for m, q, k, v, o in self.tied]

    @property
    def members(self) -> tuple[str, ...]:
        """Every layer that pruning these heads cuts, once, in order."""
        return tuple(dict.fromkeys([n for s in self.layers() for n in (s.q, s.k, s.v, s.out)]
                                   + list(self.bias)))

    @property
    def fused(self) -> bool:
        return self.q == self.k == self.v

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads


def _linear_like(m: nn.Module) -> bool:
    conv1d = conv1d_type()
    return isinstance(m, nn.Linear) or (conv1d is not None and isinstance(m, conv1d))


def _out_features(m: nn.Module) -> int:
    return int(m.out_features) if isinstance(m, nn.Linear) else int(m.nf)


def _rows(m: nn.Module) -> torch.Tensor:
    """The weight as ``[out, in]`` (HF's Conv1D stores ``[in, out]``), as the trial being
    decided has cut it so far (``importance.current``)."""
    weight = current(m.weight)
    return weight if isinstance(m, nn.Linear) else weight.t()


def _int_attr(m: nn.Module, names: Sequence[str]) -> int | None:
    for n in names:
        v = getattr(m, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _projections(prefix: str, m: nn.Module) -> tuple[str, str, str] | None:
    for names in _SEPARATE:
        if all(_linear_like(getattr(m, n, None) or nn.Identity()) for n in names):
            return tuple(prefix + n for n in names)  # type: ignore[return-value]
    for n in _FUSED:
        if _linear_like(getattr(m, n, None) or nn.Identity()):
            return (prefix + n,) * 3
    return None


def find_attention(model: nn.Module, sequence: Sequence[str]) -> list[AttentionHeads]:
    """Every attention layer of ``model`` whose heads can be read. ``sequence`` is the order in
    which modules with parameters ran; the output projection is the first linear layer to run
    after the value projection that takes all heads' width (``o_proj`` beside the projections,
    or BERT's ``attention.output.dense`` in a sibling module)."""
    modules = dict(model.named_modules())
    found = []
    for name, m in modules.items():
        projections = _projections(f"{name}." if name else "", m)
        if projections is None or projections[2] not in sequence:
            continue
        q = modules[projections[0]]
        width = _out_features(q) // 3 if projections[0] == projections[1] else _out_features(q)
        start = max(sequence.index(p) for p in set(projections))
        out = next((n for n in sequence[start + 1:] if n not in projections
                    and _linear_like(modules[n]) and _in_features(modules[n]) == width), None)
        if out is None:
            continue
        spec = _heads_of(name, m, projections, out, modules)
        if spec is not None:
            found.append(spec)
    return found


def _in_features(m: nn.Module) -> int:
    return int(m.in_features) if isinstance(m, nn.Linear) else int(m.weight.shape[0])


def _heads_of(name: str, m: nn.Module, projections: tuple[str, str, str], out: str,
              modules: Mapping[str, nn.Module]) -> AttentionHeads | None:
    q, k, v = (modules[p] for p in projections)
    config = getattr(m, "config", None)
    head_dim = _int_attr(m, _HEAD_SIZE)
    heads = _int_attr(m, _HEADS) or (config is not None and _int_attr(config, ("num_attention_heads",)))
    if projections[0] == projections[1]:  # fused [q | k | v]
        total = _out_features(q)
        if total % 3:
            return None
        width = total // 3
        if head_dim is None and heads:
            head_dim = width // heads if width % heads == 0 else None
        if not head_dim or width % head_dim:
            return None
        return AttentionHeads(module=name, q=projections[0], k=projections[1], v=projections[2],
                              out=out, heads=width // head_dim, kv_heads=width // head_dim,
                              head_dim=head_dim)
    q_width, k_width, v_width = _out_features(q), _out_features(k), _out_features(v)
    if head_dim is None and heads:
        head_dim = q_width // heads if q_width % heads == 0 else None
    if not head_dim or q_width % head_dim or k_width % head_dim or k_width != v_width:
        return None
    n_q, n_kv = q_width // head_dim, k_width // head_dim
    if n_kv == 0 or n_q % n_kv:
        return None
    return AttentionHeads(module=name, q=projections[0], k=projections[1], v=projections[2],
                          out=out, heads=n_q, kv_heads=n_kv, head_dim=head_dim)


def _sections(spec: AttentionHeads) -> tuple[int, int, int]:
    """Offsets of q, k and v in their projections' outputs (fused: one after the other)."""
    if spec.fused:
        width = spec.heads * spec.head_dim
        return 0, width, 2 * width
    return 0, 0, 0


def _channels(head: int, spec: AttentionHeads, offset: int = 0) -> list[int]:
    start = offset + head * spec.head_dim
    return list(range(start, start + spec.head_dim))


def head_scores(model: nn.Module, spec: AttentionHeads) -> np.ndarray:
    """Per query head, the L2 norm of everything pruning it removes: its query rows, its
    output-projection columns and, when heads and key/value heads are one, its key and value
    rows (the same magnitude criterion as channel groups), in every tied layer, and its column
    of every per-head table (``spec.bias``), summed in double."""
    modules = dict(model.named_modules())
    total = sum(_head_squares(modules, s) for s in spec.layers())
    with torch.no_grad():
        for b in spec.bias:
            total = total + squares(current(modules[b].weight), 1)
    return np.sqrt(total)


def _head_squares(modules: Mapping[str, nn.Module], spec: AttentionHeads) -> np.ndarray:
    q, k, v, o = (modules[n] for n in (spec.q, spec.k, spec.v, spec.out))
    oq, ok, ov = _sections(spec)
    width = spec.heads * spec.head_dim

    def per_head(squares: np.ndarray, offset: int) -> np.ndarray:
        return squares[offset:offset + width].reshape(spec.heads, spec.head_dim).sum(1)

    with torch.no_grad():
        rq = squares(_rows(q), 0)
        total = per_head(rq, oq) + per_head(squares(_rows(o), 1), 0)
        if spec.kv_heads == spec.heads:  # (a fused projection's rows are read once)
            rk = rq if k is q else squares(_rows(k), 0)
            rv = rq if v is q else rk if v is k else squares(_rows(v), 0)
            total = total + per_head(rk, ok) + per_head(rv, ov)
    return total


def _prune(layer: nn.Module, idxs: Sequence[int], *, out: bool) -> None:
    """Remove output (``out``) or input channels ``idxs`` of a linear layer or HF ``Conv1D``."""
    if not idxs:
        return
    if isinstance(layer, nn.Linear):
        fn = tp.prune_linear_out_channels if out else tp.prune_linear_in_channels
        fn(layer, list(idxs))
    elif isinstance(layer, nn.Embedding):  # a per-head table: one column per head
        tp.prune_embedding_out_channels(layer, list(idxs))
    else:
        pruner = Conv1DPruner()
        (pruner.prune_out_channels if out else pruner.prune_in_channels)(layer, idxs)


def drop_heads(spec: AttentionHeads, scores: np.ndarray, keep: int) -> list[int]:
    """The query heads to remove so that ``keep`` stay: the lowest-scoring ones, the same
    number in every key/value group."""
    if spec.kv_heads == spec.heads:  # keys and values go with their query head
        return sorted(np.argsort(-np.asarray(scores), kind="stable")[keep:].tolist())
    per_group = keep // spec.kv_heads
    drop = []
    for g in range(spec.kv_heads):
        members = list(range(g * spec.group, (g + 1) * spec.group))
        ranked = sorted(members, key=lambda h: -scores[h])
        drop += sorted(ranked[per_group:])
    return sorted(drop)


def head_cuts(spec: AttentionHeads, drop: Sequence[int]) -> list[tuple[str, bool, list[int]]]:
    """What removing query heads ``drop`` cuts: (layer, output side?, indices) in order, in
    every tied layer, then the columns of the per-head tables."""
    cuts = [cut for s in spec.layers() for cut in _layer_head_cuts(s, drop)]
    return cuts + [(b, True, sorted(int(h) for h in drop)) for b in spec.bias]


def _layer_head_cuts(spec: AttentionHeads, drop: Sequence[int]) -> list[tuple[str, bool, list[int]]]:
    oq, ok, ov = _sections(spec)
    q_idx = [c for h in drop for c in _channels(h, spec, oq)]
    o_idx = [c for h in drop for c in _channels(h, spec)]
    if spec.fused:
        cuts = [(spec.q, True, q_idx + [c for h in drop for c in _channels(h, spec, ok)]
                 + [c for h in drop for c in _channels(h, spec, ov)])]
    else:
        cuts = [(spec.q, True, q_idx)]
        if spec.kv_heads == spec.heads:
            cuts += [(spec.k, True, [c for h in drop for c in _channels(h, spec, ok)]),
                     (spec.v, True, [c for h in drop for c in _channels(h, spec, ov)])]
    return cuts + [(spec.out, False, o_idx)]


def resized(spec: AttentionHeads, *, heads: int | None = None,
            head_dim: int | None = None) -> AttentionHeads:
    """``spec`` after pruning to ``heads`` query heads (key/value heads follow them unless
    grouped) or to ``head_dim`` positions per head."""
    if heads is not None:
        kv_heads = heads if spec.kv_heads == spec.heads else spec.kv_heads
        spec = replace(spec, heads=heads, kv_heads=kv_heads)
    return spec if head_dim is None else replace(spec, head_dim=head_dim)


def prune_heads(model: nn.Module, spec: AttentionHeads, drop: Sequence[int], *,
                modules: Mapping[str, nn.Module] | None = None) -> AttentionHeads:
    """Remove query heads ``drop`` (and, without grouped-query attention, their keys and
    values) from ``model`` in place (``modules``: its modules by name, when the caller has
    them), from every tied layer and per-head table; returns the unit's new description."""
    modules = modules if modules is not None else dict(model.named_modules())
    for name, out, idxs in head_cuts(spec, drop):
        _prune(modules[name], idxs, out=out)
    new = resized(spec, heads=spec.heads - len(drop))
    for layer in spec.layers():
        _set_attributes(modules[layer.module], spec, new.heads, new.kv_heads)
    return new


def _set_attributes(attn: nn.Module, spec: AttentionHeads, heads: int, kv_heads: int) -> None:
    """Tell the module its new head counts (the attributes its forward reads)."""
    for n in _HEADS:
        if isinstance(getattr(attn, n, None), int) and getattr(attn, n) == spec.heads:
            setattr(attn, n, heads)
    for n in _ALL_HEADS:
        if isinstance(getattr(attn, n, None), int) and getattr(attn, n) == spec.heads * spec.head_dim:
            setattr(attn, n, heads * spec.head_dim)
    if spec.fused and getattr(attn, "split_size", None) == spec.heads * spec.head_dim:
        attn.split_size = heads * spec.head_dim
    if isinstance(getattr(attn, "num_key_value_groups", None), int):
        attn.num_key_value_groups = heads // kv_heads
    for n in ("num_key_value_heads", "num_kv_heads", "n_kv_heads"):
        if isinstance(getattr(attn, n, None), int) and getattr(attn, n) == spec.kv_heads:
            setattr(attn, n, kv_heads)


# ---------------------------------------------------------------------- head dimensions
def head_dim_scores(model: nn.Module, spec: AttentionHeads) -> tuple[np.ndarray, np.ndarray]:
    """Per key/value head and position inside a head (``[kv_heads, head_dim]`` each): the
    squared norm of what pruning that position removes from the query-key product (the query
    rows of every query head of the group and the key row) and from the value path (the value
    row and the output-projection columns of every query head of the group), summed over the
    tied layers."""
    modules = dict(model.named_modules())
    parts = [_head_dim_squares(modules, s) for s in spec.layers()]
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def _head_dim_squares(modules: Mapping[str, nn.Module], spec: AttentionHeads
                      ) -> tuple[np.ndarray, np.ndarray]:
    q, k, v, o = (modules[n] for n in (spec.q, spec.k, spec.v, spec.out))
    oq, ok, ov = _sections(spec)
    d = spec.head_dim
    with torch.no_grad():
        rq, rk, rv = (materialized(_rows(m)).detach().double().pow(2).sum(1).cpu()
                      for m in (q, k, v))
        # per input column of the projection
        ro = materialized(_rows(o)).detach().double().pow(2).sum(0).cpu()
        qk, vo = np.zeros((spec.kv_heads, d)), np.zeros((spec.kv_heads, d))
        for h in range(spec.heads):
            g = h // spec.group
            qk[g] += rq[oq + h * d: oq + (h + 1) * d].numpy()
            vo[g] += ro[h * d:(h + 1) * d].numpy()
        for g in range(spec.kv_heads):
            qk[g] += rk[ok + g * d: ok + (g + 1) * d].numpy()
            vo[g] += rv[ov + g * d: ov + (g + 1) * d].numpy()
    return qk, vo


def drop_head_dims(scores: tuple[np.ndarray, np.ndarray], keep: int
                   ) -> tuple[list[list[int]], list[list[int]]]:
    """Per key/value head, the positions to remove so that ``keep`` stay, chosen apart for the
    query-key product and for the value path (lowest scores go)."""
    qk, vo = scores
    pick = lambda row: sorted(np.argsort(-row, kind="stable")[keep:].tolist())  # noqa: E731
    return [pick(r) for r in qk], [pick(r) for r in vo]


def head_dim_cuts(spec: AttentionHeads, drop_qk: Sequence[Sequence[int]],
                  drop_vo: Sequence[Sequence[int]]) -> list[tuple[str, bool, list[int]]]:
    """What removing positions inside every head cuts: (layer, output side?, indices), in
    every tied layer."""
    if len({len(x) for x in (*drop_qk, *drop_vo)}) != 1:
        raise ValueError("every head must lose the same number of positions")
    return [cut for s in spec.layers() for cut in _layer_dim_cuts(s, drop_qk, drop_vo)]


def _layer_dim_cuts(spec: AttentionHeads, drop_qk: Sequence[Sequence[int]],
                    drop_vo: Sequence[Sequence[int]]) -> list[tuple[str, bool, list[int]]]:
    oq, ok, ov = _sections(spec)
    d = spec.head_dim
    q_idx = [oq + h * d + j for h in range(spec.heads) for j in drop_qk[h // spec.group]]
    k_idx = [ok + g * d + j for g in range(spec.kv_heads) for j in drop_qk[g]]
    v_idx = [ov + g * d + j for g in range(spec.kv_heads) for j in drop_vo[g]]
    o_idx = [h * d + j for h in range(spec.heads) for j in drop_vo[h // spec.group]]
    if spec.fused:
        cuts = [(spec.q, True, q_idx + k_idx + v_idx)]
    else:
        cuts = [(spec.q, True, q_idx), (spec.k, True, k_idx), (spec.v, True, v_idx)]
    return cuts + [(spec.out, False, o_idx)]


def prune_head_dims(model: nn.Module, spec: AttentionHeads, drop_qk: Sequence[Sequence[int]],
                    drop_vo: Sequence[Sequence[int]], *,
                    modules: Mapping[str, nn.Module] | None = None) -> AttentionHeads:
    """Remove positions inside every head: ``drop_qk[g]`` from the queries and key of
    key/value group ``g``, ``drop_vo[g]`` from its value and the output projection's columns
    (the same count everywhere); returns the layer's new description. The attention keeps
    its scaling (``scaling``/``scale`` attributes are left as they were)."""
    modules = modules if modules is not None else dict(model.named_modules())
    for name, out, idxs in head_dim_cuts(spec, drop_qk, drop_vo):
        _prune(modules[name], idxs, out=out)
    d = spec.head_dim
    new = d - len(drop_qk[0])
    for layer in spec.layers():
        attn = modules[layer.module]
        for n in _HEAD_SIZE:
            if getattr(attn, n, None) == d:
                setattr(attn, n, new)
        for n in _ALL_HEADS:
            if getattr(attn, n, None) == spec.heads * d:
                setattr(attn, n, spec.heads * new)
        if spec.fused and getattr(attn, "split_size", None) == spec.heads * d:
            attn.split_size = spec.heads * new
    return resized(spec, head_dim=new)
