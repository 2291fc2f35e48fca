"""The channel space's pruner: fused experts' widths and counts (``experts.py``), plain
experts' tied widths and counts (``expert_lists.py``), every other unit as :class:`Pruner`
prunes it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from .criteria import L2Magnitude
from .expert_lists import ListCount, TiedExperts, list_scores, prune_list_count
from .experts import (ExpertCount, FusedExperts, _dims, count_scores, expert_scores,
                      prune_expert_count, prune_experts, sync_hidden)
from .pruner import Candidate, Pruner

__all__ = ["ExpertsPruner"]


class ExpertsPruner(Pruner):
    """The channel space's pruner, with fused-experts units (:class:`ExpertsCandidate`),
    expert counts (:class:`ExpertCount`, :class:`ListCount`: the list's entries renumbered,
    and ``modules`` named again) and tied plain experts (:class:`TiedExperts`) pruned here
    and every other unit as :class:`Pruner` prunes it. After every step the
    fused layers' hidden-size attributes follow their parameters (:func:`sync_hidden`), and
    parameters the experts' widths replaced are the graph's in place of the old ones."""

    def scores(self, c: Candidate, stats: object = None) -> np.ndarray:
        """For an experts unit, element ``k`` is every expert's ``k``-th most important neuron:
        its score is theirs summed, so keeping the first ``n`` is what :meth:`keep` keeps.
        For an expert count, each expert's :func:`count_scores` (:func:`list_scores`)."""
        if isinstance(c, ExpertCount):
            return self._count_scores(c)
        if isinstance(c, TiedExperts):
            return sum(-np.sort(-self._part_scores(p, stats)) for p in c.parts)
        spec = getattr(c, "experts", None)
        if spec is None:
            return super().scores(c, stats)
        per = expert_scores(self.modules[spec.module], spec)
        return -np.sort(-per, axis=1).sum(0)

    def keep(self, c: Candidate, keep: int, scores: np.ndarray | None = None) -> None:
        if isinstance(c, ExpertCount):
            score = self._count_scores(c)
            if keep < len(score):
                self._count(c, np.argsort(-score, kind="stable")[:keep])
            return
        if isinstance(c, TiedExperts):
            for p in c.parts:
                super().keep(p, keep, self._part_scores(p))
            return
        spec = getattr(c, "experts", None)
        if spec is None:
            super().keep(c, keep, scores)
            return sync_hidden(self.model)
        m = self.modules[spec.module]
        if keep >= int(m.down_proj.shape[_dims(spec)[1]]):
            return
        per = expert_scores(m, spec)
        self._prune(m, spec, [np.argsort(-row, kind="stable")[:keep] for row in per])

    def remove(self, c: Candidate, drop: Sequence[int]) -> None:
        if isinstance(c, ExpertCount):
            if len(drop):
                n = len(self._share(c))
                self._count(c, np.setdiff1d(np.arange(n), np.asarray(drop, dtype=np.int64)))
            return
        if isinstance(c, TiedExperts):
            for p in c.parts:
                super().remove(p, drop)
            return
        spec = getattr(c, "experts", None)
        if spec is None:
            super().remove(c, drop)
            return sync_hidden(self.model)
        if not drop:
            return
        m = self.modules[spec.module]
        width = int(m.down_proj.shape[_dims(spec)[1]])
        kept = np.setdiff1d(np.arange(width), np.asarray(drop, dtype=np.int64))
        self._prune(m, spec, [kept] * int(m.down_proj.shape[0]))

    def remove_last(self, c: Candidate, n: int) -> None:
        if isinstance(c, ExpertCount):
            have = len(self._share(c))
            return self.remove(c, list(range(have - n, have)))
        if isinstance(c, TiedExperts):
            for p in c.parts:
                super().remove_last(p, n)
            return
        spec = getattr(c, "experts", None)
        if spec is None:
            super().remove_last(c, n)
            return sync_hidden(self.model)
        width = int(self.modules[spec.module].down_proj.shape[_dims(spec)[1]])
        self.remove(c, list(range(width - n, width)))

    def _share(self, c: ExpertCount) -> np.ndarray:
        """The routed share of the experts ``c``'s layer still has, in their order."""
        shares = self.__dict__.setdefault("shares", {})
        return shares.setdefault(c.unit.name, np.asarray(c.share, dtype=np.float64))

    def _count_scores(self, c: ExpertCount) -> np.ndarray:
        """Each expert's routed share times its weights' norm (:func:`count_scores`,
        :func:`list_scores`)."""
        score = list_scores if isinstance(c, ListCount) else count_scores
        return score(self.modules[c.root], self._share(c))

    def _count(self, c: ExpertCount, keep: np.ndarray) -> None:
        """Keep experts ``keep`` (current numbering) of ``c``'s layer and router."""
        share = self._share(c)
        if isinstance(c, ListCount):  # the list's entries are renumbered, and so named
            parent, _, attr = c.root.rpartition(".")
            prune_list_count(self.modules[parent], attr, self.modules[c.router], keep)
            self.shares[c.unit.name] = share[np.sort(keep)]
            self.modules = dict(self.model.named_modules())
            return
        modules = [self.modules[c.root], self.modules[c.router]]
        before = [(m, dict(m.named_parameters(recurse=False))) for m in modules]
        prune_expert_count(modules, len(share), keep)
        self.shares[c.unit.name] = share[np.sort(keep)]
        for m, params in before:
            self._rebind(m, params)

    def _prune(self, m: nn.Module, spec: FusedExperts, keep: Sequence[np.ndarray]) -> None:
        """:func:`prune_experts`, and the new parameters put in the graph for the old."""
        before = dict(m.named_parameters(recurse=False))
        prune_experts(m, spec, keep)
        self._rebind(m, before)

    def _rebind(self, m: nn.Module, before: dict[str, nn.Parameter]) -> None:
        """The parameters of ``m`` that replaced ``before``'s, in the graph for the old."""
        graph = self.graph
        for attr, old in before.items():
            new = getattr(m, attr)
            if new is old or old not in graph.module2node:
                continue
            node = graph.module2node.pop(old)
            node.module = new
            graph.module2node[new] = node
            if old in graph._param_to_name:
                graph._param_to_name[new] = graph._param_to_name.pop(old)
            graph.unwrapped_parameters = [type(u)(new, u[1]) if u[0] is old else u
                                          for u in graph.unwrapped_parameters]

    def _part_scores(self, p: Candidate, stats: object = None) -> np.ndarray:
        """One expert's scores: the space's criterion's, L2 magnitude for a data criterion
        (what it measured is not kept per expert)."""
        if self.criterion.needs_data and stats is None:
            return L2Magnitude().score(self.graph, self.group_of(p), p.blocks)
        return super().scores(p, stats)
