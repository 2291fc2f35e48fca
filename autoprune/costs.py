"""Cost models: a number (with a unit) for a layer table, no pruned model needed.

Every cost model reads only the layer table of a configuration, so costing a candidate takes
microseconds and happens *before* anything is pruned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from autoprune.search_spaces import LayerTable

__all__ = ["COST_MODELS", "CostModel", "MacsCost", "ParamsCost", "get_cost_model"]


class CostModel(ABC):
    """``estimate(layer_table) -> float`` in ``unit``; ``name`` is the key used in targets,
    summaries and the study (``macs``, ``params``, ``latency_ms``)."""

    name: str = "abstract"
    unit: str = ""

    @abstractmethod
    def estimate(self, table: LayerTable) -> float:
        """The cost of the network whose layers are ``table``."""


class MacsCost(CostModel):
    """Multiply-accumulates of convs and linear layers. The pruning literature calls this
    "FLOPs" (ResNet-56 on CIFAR = 125M); ``torch.utils.flop_counter`` reports twice it."""

    name = "macs"
    unit = "MACs"

    def estimate(self, table: LayerTable) -> float:
        return float(sum(row.macs for row in table))


class ParamsCost(CostModel):
    """Number of parameters, every layer included (norms, biases, untouched layers)."""

    name = "params"
    unit = "params"

    def estimate(self, table: LayerTable) -> float:
        return float(sum(row.params for row in table))


COST_MODELS: dict[str, type[CostModel]] = {"macs": MacsCost, "params": ParamsCost}


# Cost models that need something measured on the device first; named here so asking for one
# without it explains what to pass.
_NEEDS_DEVICE = {
    "latency_ms": "a latency lookup table: pass cost_models=[table.cost_model()] with "
                  "table = autoprune.LatencyTable.build(model, example_inputs) (or .load(path)); "
                  "autoprune search builds and caches one on first use",
    "roofline_ms": "peak compute and bandwidth: pass cost_models=[RooflineCost.measure()] "
                   "(autoprune.latency.roofline)",
}


def get_cost_model(name: str) -> CostModel:
    if name in _NEEDS_DEVICE:
        raise ValueError(f"the {name!r} cost model needs {_NEEDS_DEVICE[name]}.")
    try:
        return COST_MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown cost model {name!r}; known: {sorted(COST_MODELS)}") from None
