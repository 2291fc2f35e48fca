"""Heads that several attention layers share: T5's relative position bias.

T5 (``transformers``' T5, mT5, LongT5 built the same way) computes its relative-position bias
once per stack, in the first layer's self-attention (``has_relative_attention_bias=True``, an
``nn.Embedding(num_buckets, n_heads)`` named ``relative_attention_bias``), as a tensor of shape
``[batch, n_heads, q, k]``; the stack passes it on to every later layer, which adds it to its
own scores head by head. The decoder's cross-attention does the same with the zeros its first
layer makes for all heads. So the heads of one stack's self-attention (or cross-attention)
layers are one unit: every layer keeps the same heads, and the bias embedding keeps the
columns of those heads, so each kept head is still added the bias it was trained with.

A run of tied layers starts at a layer that computes its own bias (or at the stack's first
layer) and goes on through the same attention of the following blocks that do not. A stack in
which several layers have a bias of their own (UMT5: every layer computes its own bias, and its
cross-attention its own zeros) passes nothing on: each of its layers is a unit alone, with its
embedding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from .attention import AttentionHeads

__all__ = ["tie_shared_heads"]

_BLOCK = re.compile(r"^(.*?)\.(\d+)\.(.+)$")  # stack, block index, path inside the block


def tie_shared_heads(model: nn.Module, specs: Sequence[AttentionHeads]) -> list[AttentionHeads]:
    """``specs`` with the attention layers that share a position bias made one spec each
    (``AttentionHeads.tied``), and every per-head embedding of a layer (an ``nn.Embedding``
    child with one column per head) pruned with its heads (``AttentionHeads.bias``)."""
    modules = dict(model.named_modules())
    runs: dict[tuple[str, str], list[list[AttentionHeads]]] = {}
    out: list[AttentionHeads | tuple[str, str, int]] = []
    for spec in specs:
        m = modules[spec.module]
        own = getattr(m, "has_relative_attention_bias", None)
        where = _BLOCK.match(spec.module)
        if not isinstance(own, bool) or where is None:
            out.append(_with_tables(spec, m))
            continue
        key = (where.group(1), where.group(3))
        chains = runs.setdefault(key, [])
        if own or not chains or not _alike(chains[-1][0], spec):
            chains.append([spec])
            out.append((*key, len(chains) - 1))
        else:
            chains[-1].append(spec)
    per_layer = {stack for (stack, _), chains in runs.items()
                 if sum(bool(getattr(modules[c[0].module], "has_relative_attention_bias", False))
                        for c in chains) > 1}
    found = []
    for item in out:
        if isinstance(item, AttentionHeads):
            found.append(item)
            continue
        chain = runs[item[:2]][item[2]]
        if item[0] in per_layer:  # nothing is passed on in this stack
            found += [_with_tables(s, modules[s.module]) for s in chain]
            continue
        first = _with_tables(chain[0], modules[chain[0].module])
        tables = [b for s in chain[1:] for b in _with_tables(s, modules[s.module]).bias]
        found.append(replace(first, tied=tuple((s.module, s.q, s.k, s.v, s.out)
                                               for s in chain[1:]),
                             bias=first.bias + tuple(tables)))
    return found


def _alike(a: AttentionHeads, b: AttentionHeads) -> bool:
    return (a.heads, a.kv_heads, a.head_dim, a.fused) == (b.heads, b.kv_heads, b.head_dim, b.fused)


def _with_tables(spec: AttentionHeads, m: nn.Module) -> AttentionHeads:
    """``spec`` with the per-head embeddings of its module (one column per query head)."""
    prefix = f"{spec.module}." if spec.module else ""
    tables = tuple(prefix + n for n, child in m.named_children()
                   if isinstance(child, nn.Embedding) and child.embedding_dim == spec.heads
                   and spec.kv_heads == spec.heads)
    return replace(spec, bias=spec.bias + tables) if tables else spec
