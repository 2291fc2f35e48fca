"""Latency for a stated device: the ``Device`` value, real measurement, the lookup table and
its build, the table a search costs with (cached), the machine's level estimated online, the
check and repair after a search, tables timed on another device, and the roofline model.

Names are imported lazily so that reading ``Device`` (the command line's defaults) does not
import torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Device": "autoprune.latency.device",
    "BackendError": "autoprune.latency.device",
    "describe_device": "autoprune.latency.device",
    "LatencyMeasurement": "autoprune.latency.measure",
    "measure_latency": "autoprune.latency.measure",
    "LatencyTable": "autoprune.latency.table",
    "LatencyTableError": "autoprune.latency.table",
    "ProfilePlan": "autoprune.settings",
    "table_for_search": "autoprune.latency.cache",
    "LatencyCheck": "autoprune.latency.verify",
    "verify_latency": "autoprune.latency.verify",
    "RooflineCost": "autoprune.latency.roofline",
    "OnlineLevel": "autoprune.latency.level",
    "export_for_device": "autoprune.latency.remote",
    "table_from_timings": "autoprune.latency.remote",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autoprune.latency' has no attribute {name!r}")
