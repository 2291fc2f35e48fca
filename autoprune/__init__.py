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
    "search": "autoprune.search_job",
    "load_pruned": "autoprune.run",
    "Run": "autoprune.run",
    "pick": "autoprune.pick_run",
    "Allocation": "autoprune.allocation",
    "SearchSettings": "autoprune.settings",
    "ModelSource": "autoprune.settings",
    "SpaceSettings": "autoprune.settings",
    "ScoringSettings": "autoprune.settings",
    "ExecutorSettings": "autoprune.settings",
    "ProfileSettings": "autoprune.settings",
    "LatencySettings": "autoprune.settings",
    "Device": "autoprune.latency.device",
    "SearchError": "autoprune.errors",
    "Evaluator": "autoprune.evaluator",
    "ChannelSpace": "autoprune.search_spaces",
    "SearchSpace": "autoprune.search_spaces",
    "make_space": "autoprune.search_spaces",
    "build_problem": "autoprune.problem",
    "ClassificationEvaluator": "autoprune.zoo.evaluate",
    "PruningProblem": "autoprune.problem",
    "TargetError": "autoprune.targets",
    "parse_targets": "autoprune.targets",
    "build_model": "autoprune.zoo.models",
    "available_models": "autoprune.zoo.models",
    "load_data": "autoprune.zoo.data",
    "load_or_train_baseline": "autoprune.zoo.train",
    "LatencyTable": "autoprune.latency.table",
    "LatencyTableError": "autoprune.latency.table",
    "LatencyMeasurement": "autoprune.latency.measure",
    "measure_latency": "autoprune.latency.measure",
    "RooflineCost": "autoprune.latency.roofline",
    "Supernet": "autoprune.ofa",
    "SupernetSettings": "autoprune.ofa",
    # Ray (imported only when these are used)
    "AgentSearcher": "autoprune.executors.tune_searcher",
    "RayExecutor": "autoprune.executors.ray_tune",
}

__all__ = sorted(_EXPORTS) + ["__version__", "zoo"]


def __getattr__(name: str) -> Any:
    if name == "zoo":
        return importlib.import_module("autoprune.zoo")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
