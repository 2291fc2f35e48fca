"""Facts about a search space's units for agents that allocate from them (global magnitude,
LAMP, ERK): computed here, where torch lives, and handed over as plain numbers."""

from __future__ import annotations

from collections.abc import Set

from torch import nn

from autoprune.agents import AgentContext
from autoprune.search_spaces import ChannelSpace, SearchSpace

__all__ = ["agent_context"]


def agent_context(space: SearchSpace, model: nn.Module, *,
                  needs: Set[str] = frozenset()) -> AgentContext:
    """The ``AgentContext`` of ``space``; channel scores (a trace of ``model``) only when
    ``needs`` asks for them."""
    if not isinstance(space, ChannelSpace):
        raise ValueError(f"agents that need facts about units ({', '.join(sorted(needs))}) "
                         f"work on channel spaces only, not {type(space).__name__}")
    unknown = set(needs) - {"scores", "layers"}
    if unknown:
        raise ValueError(f"an agent asked for unknown context fields {sorted(unknown)}")
    scores = tuple(tuple(float(v) for v in s) for s in space.channel_scores(model)) \
        if "scores" in needs else ()
    layers = tuple(tuple(rows) for rows in space.unit_layers()) if "layers" in needs else ()
    return AgentContext(choices=tuple(u.choices for u in space.units), scores=scores,
                        layers=layers)
