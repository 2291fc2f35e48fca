"""autoprune: how much to prune in each layer so a network meets a hardware budget.

The public names are imported lazily so that ``autoprune --help`` starts without importing
torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "allocate": "autoprune.api",
    "search": "autoprune.api",
    "load_pruned": "autoprune.api",
    "pick": "autoprune.api",
    "Allocation": "autoprune.api",
    "SearchSettings": "autoprune.api",
    "SearchError": "autoprune.api",
    "ChannelSpace": "autoprune.search_spaces",
    "ClassificationEvaluator": "autoprune.evaluate",
    "PruningProblem": "autoprune.problem",
    "TargetError": "autoprune.targets",
    "parse_targets": "autoprune.targets",
    "build_model": "autoprune.models",
    "available_models": "autoprune.models",
    "load_data": "autoprune.data",
    "load_or_train_baseline": "autoprune.train",
    "LatencyTable": "autoprune.lut",
    "LatencyTableError": "autoprune.lut",
    "LatencyMeasurement": "autoprune.latency",
    "measure_latency": "autoprune.latency",
    "RooflineCost": "autoprune.roofline",
    "Supernet": "autoprune.ofa",
    "SupernetSettings": "autoprune.ofa_train",
}

__all__ = sorted(_EXPORTS) + ["__version__", "models"]


def __getattr__(name: str) -> Any:
    if name == "models":
        return importlib.import_module("autoprune.models")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
