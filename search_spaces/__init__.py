"""Search spaces: what can be searched (units, bounds, encode/decode, layer tables, apply)."""

from __future__ import annotations

from .base import LayerRow, LayerTable, SearchSpace, Unit, UntraceableModelError, call_name
from .channel import ChannelSpace, channel_choices

__all__ = ["ChannelSpace", "LayerRow", "LayerTable", "SearchSpace", "Unit",
           "UntraceableModelError", "call_name", "channel_choices"]
