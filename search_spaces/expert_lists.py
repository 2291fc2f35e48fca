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
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import math

from torch import nn

from .base import Unit
from .exact import RunLog
from .pruner import Candidate

__all__ = ["TiedExperts", "routed_lists", "tie_routed"]


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
        rows = set()
        for i, k in enumerate(kids):
            first = next(n for n, sub in k.named_modules()
                         if next(sub.parameters(recurse=False), None) is not None)
            calls = dense.calls.get(".".join(x for x in (name, str(i), first) if x), [])
            rows.add(tuple(math.prod(x[:-1]) for x, _ in calls))
        if len(rows) > 1:
            out.append(name)
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
