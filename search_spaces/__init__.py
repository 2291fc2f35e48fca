"""Search spaces: what can be searched (units, bounds, encode/decode, layer tables, apply)."""

from __future__ import annotations

from .base import (SPACES, CountedSpace, LayerRow, LayerTable, PruningBrokeModel, SearchSpace, Unit,
                   UnitFactsError, UntraceableModelError, call_name, make_space, register_space)
from .channel import ChannelSpace, channel_choices
from .hybrid import ChannelWeightSpace
from .criteria import CRITERIA, Criterion, criterion_names, make_criterion, register_criterion
from .levels import LevelStore
from .memory import release, watch
from .progress import reporting
from .reference import reference_macs, reference_params
from .sparse import (NMSparsitySpace, UnstructuredSparsitySpace, WeightCriterion,
                     WeightSparsitySpace, magnitude_mask, mask_of, parse_nm, remove_masks)

__all__ = ["CRITERIA", "SPACES", "ChannelSpace", "ChannelWeightSpace", "CountedSpace", "Criterion", "LayerRow",
           "LayerTable", "LevelStore", "NMSparsitySpace", "PruningBrokeModel", "SearchSpace", "Unit", "UnitFactsError",
           "UnstructuredSparsitySpace", "UntraceableModelError", "WeightCriterion",
           "WeightSparsitySpace", "call_name", "channel_choices", "criterion_names",
           "magnitude_mask", "make_criterion", "make_space", "mask_of", "parse_nm",
           "reference_macs", "reference_params", "register_criterion", "register_space",
           "release", "remove_masks", "reporting", "watch"]
