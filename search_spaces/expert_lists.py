"""Plain-PyTorch mixture-of-experts layers: an ``nn.ModuleList`` of identical MLPs behind a
top-k router (``router = nn.Linear(d, experts)``, ``for e, expert in enumerate(experts)``).

**Their widths.** Torch-Pruning finds one channel group per expert, whose costs are the tokens
routed to that expert times its width: wrong as soon as another unit changes the router's
input (the example's routing moves). :func:`tie_routed` ties the same group of every expert of
such a list into one unit (:class:`TiedExperts`; each expert still keeping its own channels by
the space's criterion), whose cost ``sum_e tokens_e * width * ...`` is ``tokens * top_k *
width * ...`` whatever the routing. A list is routed when its experts ran on different
numbers of rows in the example's forward pass (or some did not run); a list whose experts all
happened to get as many rows is not recognised, and the channel space's final check then
keeps any unit whose costs disagree dense.

**How many experts a layer keeps** is a unit too (:class:`ListCount`, kind ``experts``), for a
routed list with one router (the only ``nn.Linear`` beside it with an output per expert): from
``max(top_k, floor * experts)`` to all, the top-k read off the example (the rows the experts
ran on over the rows the router ran on). Experts are ranked as fused ones are, by routed share
on the example times their weights' L2 norm. The kept experts stay in the list in their order,
renumbered from 0, and the router keeps their rows in the same order, so routing index ``e``
still reaches the ``e``-th expert; ``num_experts`` (and the like) on the list's parent follows.
The routed MACs do not depend on the count (``tokens * top_k`` rows, all experts the same
size); the router's MACs and the parameters do. A list keeping ``k`` experts holds entries
``0 .. k - 1``, so the cost plan keeps each entry's rows and counts entry ``e``'s parameters
while fewer than ``experts - e`` experts are removed (:func:`vanishing`, ``layers.RowPlan``'s
``until``), exact because every expert has the same sizes at every configuration (a list whose
experts another unit prunes apart, not all alike, is not counted).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import math

import numpy as np
import torch
from torch import nn

from .base import Unit
from .exact import RunLog
from .experts import COUNT_ATTRS, ExpertCount, share_scores
from .pruner import Candidate

__all__ = ["ListCount", "TiedExperts", "find_list_counts", "list_scores", "prune_list_count",
           "routed_lists", "tie_routed", "vanishing"]


@dataclass(frozen=True)
class TiedExperts(Candidate):
    """One channel group of every expert of a routed ``nn.ModuleList`` (``parts``), pruned by
    the same count, each part keeping its own channels."""

    parts: tuple[Candidate, ...] = ()


def routed_lists(model: nn.Module, dense: RunLog) -> list[str]:
    """``nn.ModuleList``s of two or more identical modules (class and parameter shapes) that
    ran on different numbers of rows in ``dense`` (the dense forward pass), or not all of
    them: experts behind a router."""
    out = []
    for name, m in model.named_modules():
        kids = list(m.children()) if isinstance(m, nn.ModuleList) else []
        sig = {(type(k), tuple((n, tuple(p.shape)) for n, p in k.named_parameters()))
               for k in kids}
        if len(kids) < 2 or len(sig) != 1 or not next(iter(sig))[1]:
            continue
        if len(set(_rows(dense, name, kids))) > 1:
            out.append(name)
    return out


def _rows(dense: RunLog, name: str, kids: Sequence[nn.Module]) -> list[tuple[int, ...]]:
    """Per expert of the list ``name``, the rows each of its calls ran on in ``dense`` (the
    input vectors of its first layer with parameters)."""
    out = []
    for i, k in enumerate(kids):
        first = next(n for n, sub in k.named_modules()
                     if next(sub.parameters(recurse=False), None) is not None)
        calls = dense.calls.get(".".join(x for x in (name, str(i), first) if x), [])
        out.append(tuple(math.prod(x[:-1]) for x, _ in calls))
    return out


def tie_routed(model: nn.Module, dense: RunLog, candidates: Sequence[Candidate],
               notes: list[str]) -> list[Candidate]:
    """``candidates`` with the same channel group of every expert of each routed list
    (:func:`routed_lists`) tied into one :class:`TiedExperts` unit; the parts of a list that
    cannot be tied (not in every expert, or with other choices) are left out with a note."""
    lists = routed_lists(model, dense)
    if not lists:
        return list(candidates)
    found: dict[tuple[str, tuple[str, ...]], list[Candidate]] = defaultdict(list)
    out: list[Candidate] = []
    for c in candidates:
        where = None
        if type(c) is Candidate and c.heads is None:
            for name in lists:
                idx = {m[len(name) + 1:].split(".", 1)[0] for m in c.unit.members
                       if m.startswith(name + ".")}
                if len(idx) == 1 and all(m.startswith(f"{name}.{next(iter(idx))}.")
                                         for m in c.unit.members):
                    i = next(iter(idx))
                    where = (name, tuple(m[len(f"{name}.{i}."):] for m in c.unit.members))
                    break
        if where is None:
            out.append(c)
        else:
            found[where].append(c)
    for (name, rel), parts in found.items():
        first = parts[0].unit
        if len(parts) != len(model.get_submodule(name)) \
                or any(p.unit.choices != first.choices for p in parts):
            notes.append(f"{', '.join(p.unit.name for p in parts)} (experts of {name}) are kept "
                         "dense: their groups differ between experts, so their routed costs "
                         "cannot be tied")
            continue
        unit = Unit(name=f"{name}:{rel[0]}:expert_width", full=first.full, choices=first.choices,
                    members=tuple(m for p in parts for m in p.unit.members), kind=first.kind)
        out.append(TiedExperts(unit=unit, root=parts[0].root, blocks=parts[0].blocks,
                               parts=tuple(parts)))
    return out


@dataclass(frozen=True)
class ListCount(ExpertCount):
    """How many experts a routed ``nn.ModuleList`` (``root``) keeps: its entries, the rows
    of its router (``router``, an ``nn.Linear`` beside it) and its parent's count attributes,
    ranked by ``share``, each expert's routed share on the example."""


def find_list_counts(model: nn.Module, dense: RunLog, candidates: Sequence[Candidate],
                     ignored: set[str], floor: float, notes: list[str]) -> list[ListCount]:
    """A unit per routed list (:func:`routed_lists`, not ``ignored``) with one router: the
    only ``nn.Linear`` beside it with an output per expert. The example gives its top-k (the
    rows its experts ran on over the rows its router ran on, a whole number) and each
    expert's share; the count goes from ``max(top_k, floor * experts)`` to all. A list whose
    experts another unit prunes apart (not tied, so their sizes could differ) gets a note."""
    out = []
    for name in routed_lists(model, dense):
        experts = model.get_submodule(name)
        parent, _, attr = name.rpartition(".")
        routers = [f"{parent}.{n}" if parent else n
                   for n, m in model.get_submodule(parent).named_children()
                   if isinstance(m, nn.Linear) and m.out_features == len(experts)]
        if len(routers) != 1 or name in ignored or routers[0] in ignored:
            continue
        rows = [sum(r) for r in _rows(dense, name, list(experts))]
        tokens = sum(math.prod(x[:-1]) for x, _ in dense.calls.get(routers[0], []))
        loose = [c.unit.name for c in candidates
                 if not isinstance(c, TiedExperts) and not _alike(c, name, len(experts))]
        if not tokens or sum(rows) % tokens or loose:
            why = (f"{', '.join(loose)} prune its experts apart" if loose else
                   f"its experts ran on {sum(rows)} rows for {tokens} routed, no whole top-k")
            notes.append(f"how many experts {name} keeps is not searched: {why}")
            continue
        top_k = sum(rows) // tokens
        low = max(top_k, math.ceil(floor * len(experts)))
        if low >= len(experts):
            continue
        unit = Unit(name=f"{name}:experts", full=len(experts),
                    choices=tuple(range(low, len(experts) + 1)), members=(name, routers[0]),
                    kind="experts")
        out.append(ListCount(unit=unit, root=name, router=routers[0],
                             blocks=tuple((i,) for i in range(len(experts))),
                             share=tuple(r / max(1, sum(rows)) for r in rows)))
    return out


def _alike(c: Candidate, name: str, n: int) -> bool:
    """Whether ``c`` prunes every one of the ``n`` experts of the list ``name`` the same way
    (the same layers of each, or none: a residual width does)."""
    rel = [{m[len(f"{name}.{e}."):] for m in c.unit.members if m.startswith(f"{name}.{e}.")}
           for e in range(n)]
    return all(r == rel[0] for r in rel)


def list_scores(experts: nn.Module, share: Sequence[float]) -> np.ndarray:
    """Each expert's routed share times the L2 norm of all its parameters (relative to the
    mean), the norm alone ordering experts the example never routed to."""
    with torch.no_grad():
        sq = [sum(float(p.detach().float().pow(2).sum()) for p in e.parameters())
              for e in experts]
    return share_scores(share, np.asarray(sq, dtype=np.float64))


def prune_list_count(parent: nn.Module, attr: str, router: nn.Linear, keep: np.ndarray) -> None:
    """Keep experts ``keep`` of the list ``parent.<attr>``, in their order (renumbered from
    0), the router's rows for them (out of place), and the parent's count attributes."""
    experts = getattr(parent, attr)
    n, idx = len(experts), np.sort(np.asarray(keep, dtype=np.int64))
    kept = [experts[int(i)] for i in idx]
    for key in list(experts._modules):
        del experts._modules[key]
    for j, m in enumerate(kept):
        experts._modules[str(j)] = m
    rows = torch.as_tensor(idx, device=router.weight.device)
    with torch.no_grad():
        for p_name in ("weight", "bias"):
            p = router._parameters.get(p_name)
            if p is not None:
                setattr(router, p_name, nn.Parameter(p.detach().index_select(0, rows),
                                                     requires_grad=p.requires_grad))
    router.out_features = len(idx)
    for a in COUNT_ATTRS:
        if getattr(parent, a, None) == n:
            setattr(parent, a, len(idx))


def vanishing(model: nn.Module, candidates: Sequence[Candidate]) -> dict[str, tuple[int, int]]:
    """The parameters an expert count removes, each with ``(unit, limit)``: it exists while
    the ``unit``-th candidate has removed fewer than ``limit`` experts. Entry ``e`` of ``n``
    holds ``n - e``: a list keeping ``k`` experts holds entries ``0 .. k - 1`` whichever
    experts they are (they are renumbered), so its parameters go by those names."""
    out = {}
    for u, c in enumerate(candidates):
        if isinstance(c, ListCount):
            experts = model.get_submodule(c.root)
            for e, kid in enumerate(experts):
                for p, _ in kid.named_parameters():
                    out[f"{c.root}.{e}.{p}"] = (u, len(experts) - e)
    return out
