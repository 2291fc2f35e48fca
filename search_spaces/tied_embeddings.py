"""Embeddings that share one weight are one channel group.

An encoder-decoder with tied embeddings (T5, BART: ``shared``, ``encoder.embed_tokens`` and
``decoder.embed_tokens`` are three ``nn.Embedding`` modules holding one weight, often tied to
the ``lm_head`` too) has two residual widths that Torch-Pruning's graph keeps apart: nothing in
the forward pass joins the encoder's embedding to the decoder's. Pruned apart, the shared
weight would come out in two widths (the network would no longer be tied: parameters would be
added). Here those embeddings are joined in the graph, each pruning the others' columns, so the
encoder's and the decoder's residual widths are one unit. An embedding that never runs
(``shared`` itself) is joined too, so that it keeps the width of the weight it shares.
"""

from __future__ import annotations

import torch_pruning as tp
from torch import nn
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.node import Node

__all__ = ["couple_tied_embeddings"]


def couple_tied_embeddings(graph: tp.DependencyGraph) -> None:
    """Join, in ``graph`` (of ``graph.model``), every set of embeddings sharing one weight of
    which at least two exist and one ran, so that pruning the columns of one prunes the
    same columns of all."""
    tied: dict[int, list[tuple[str, nn.Embedding]]] = {}
    for name, m in graph.model.named_modules():
        if isinstance(m, nn.Embedding):
            tied.setdefault(id(m.weight), []).append((name, m))
    for members in tied.values():
        ran = [graph.module2node[m] for _, m in members if m in graph.module2node]
        if len(members) < 2 or not ran:
            continue
        nodes = []
        for name, m in members:
            node = graph.module2node.get(m)
            if node is None:  # never runs: stands where the embedding it shares runs
                node = Node(m, None, name)
                node.outputs = list(ran[0].outputs)  # (not a model output)
                graph.module2node[m] = node
            nodes.append(node)
        pruner = graph.get_pruner_of_module(members[0][1])
        for a in nodes:
            for b in nodes:
                if a is not b and not any(d.target is b for d in a.dependencies):
                    a.dependencies.append(Dependency(pruner.prune_out_channels,
                                                     pruner.prune_out_channels, a, b))
