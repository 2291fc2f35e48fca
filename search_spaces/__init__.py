"""Search spaces: what can be searched (units, bounds, encode/decode, layer tables, apply)."""

from __future__ import annotations

from .base import (SPACES, LayerRow, LayerTable, PruningBrokeModel, SearchSpace, Unit,
                   UnitFactsError, UntraceableModelError, call_name, make_space, register_space)
from .channel import ChannelSpace, channel_choices
from .criteria import CRITERIA, Criterion, criterion_names, make_criterion, register_criterion
from .reference import reference_macs, reference_params

__all__ = ["CRITERIA", "SPACES", "ChannelSpace", "Criterion", "LayerRow", "LayerTable",
           "PruningBrokeModel", "SearchSpace", "Unit", "UnitFactsError", "UntraceableModelError",
           "call_name", "channel_choices", "criterion_names", "make_criterion", "make_space",
           "reference_macs", "reference_params", "register_criterion", "register_space"]
