"""Cost models: a number (with a unit) for a layer table, no pruned model needed.

Every cost model reads only the layer table of a configuration, so costing a candidate takes
microseconds and happens *before* anything is pruned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from autoprune.search_spaces import LayerTable

__all__ = ["COST_MODELS", "STORAGE_FORMATS", "CostModel", "MacsCost", "ParamsCost", "SizeCost",
           "WeightsCost", "get_cost_model", "sparse_weight_bytes", "stored_weight_bytes"]


class CostModel(ABC):
    """``estimate(layer_table) -> float`` in ``unit``; ``name`` is the key used in targets,
    summaries and the study (``macs``, ``params``, ``latency_ms``, ``weights``,
    ``size_bytes``)."""

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


class WeightsCost(CostModel):
    """Non-zero prunable weights: ``weight_nonzero`` summed over the rows of a weight-granularity
    space that prune a weight (``weight_elements > 0``, first call of a shared layer only).
    ``sparsity=80%`` is a budget on it: at most 20% of the dense model's."""

    name = "weights"
    unit = "weights"

    def estimate(self, table: LayerTable) -> float:
        return float(sum(row.weight_nonzero for row in table
                         if row.weight_elements > 0 and row.call == 0))


#: How ``size=`` budgets and ``autoprune.sparse_io.save_sparse`` store a pruned weight.
STORAGE_FORMATS = ("dense", "bitmap", "csr")


def sparse_weight_bytes(elements: int, nonzero: int, rows: int, storage_format: str,
                        value_bytes: int = 4) -> int:
    """Bytes of one pruned weight of ``elements`` dense elements, ``nonzero`` kept, stored as
    ``rows`` rows in ``storage_format``, in its sparse form:

    - ``dense``: every element, fp32: ``4 * elements``;
    - ``bitmap``: a mask of one bit per element (rounded up to whole bytes), then the kept
      values, fp32: ``ceil(elements / 8) + 4 * nonzero``;
    - ``csr``: the weight as a ``[rows, cols]`` matrix (``cols = elements / rows``): the kept
      values (fp32), a column index of ``ceil(log2 cols)`` bits per value and ``rows + 1`` row
      pointers of ``ceil(log2(nonzero + 1))`` bits, the index bits packed and rounded up to
      whole bytes (the count of Hoefler et al. 2021, "Sparsity in deep learning").

    Values take ``value_bytes`` each (4: fp32; 2 for a bfloat16 or float16 search).
    """
    if storage_format not in STORAGE_FORMATS:
        raise ValueError(f"unknown storage format {storage_format!r}; known: "
                         f"{', '.join(STORAGE_FORMATS)}")
    elements, nonzero = int(elements), int(nonzero)
    if storage_format == "dense":
        return value_bytes * elements
    if storage_format == "bitmap":
        return (elements + 7) // 8 + value_bytes * nonzero
    rows = max(1, int(rows))
    cols = -(-elements // rows)
    index_bits = nonzero * (cols - 1).bit_length() + (rows + 1) * nonzero.bit_length()
    return value_bytes * nonzero + (index_bits + 7) // 8


def stored_weight_bytes(elements: int, nonzero: int, rows: int, storage_format: str,
                        value_bytes: int = 4) -> int:
    """Bytes of one pruned weight as it is stored: its sparse form where that is smaller than
    dense, else dense (``value_bytes * elements``), as ``save_sparse`` decides."""
    return min(value_bytes * int(elements),
               sparse_weight_bytes(elements, nonzero, rows, storage_format, value_bytes))


class SizeCost(CostModel):
    """Bytes of the stored model in ``storage_format`` (``dense``, ``bitmap``, ``csr``: see
    :func:`sparse_weight_bytes`), the size ``autoprune.sparse_io.save_sparse`` writes less the
    file's own few kB of header:

    - every pruned weight (a row with ``weight_elements > 0``) as :func:`stored_weight_bytes`
      (so the dense table costs the dense model, in every format);
    - every other parameter at 4 bytes (fp32);
    - buffers: by default each ``norm`` row's BatchNorm running statistics (mean and variance
      of ``out_channels`` fp32, 8 bytes of ``num_batches_tracked``), which overcounts the few
      norms that have none (LayerNorm, GroupNorm); ``buffer_bytes`` replaces that estimate by
      the model's own count (``autoprune.sparse_io.buffer_bytes(model)``).

    ``size=50%`` is half the dense table's cost: the dense model at fp32. ``value_bytes``
    (default 4, fp32) is the size of one stored weight or parameter: 2 for a model searched
    in bfloat16 or float16 (``allocate(dtype=...)``, ``--dtype``).
    """

    name = "size_bytes"
    unit = "bytes"

    def __init__(self, storage_format: str = "bitmap", *, buffer_bytes: int | None = None,
                 value_bytes: int = 4) -> None:
        sparse_weight_bytes(0, 0, 1, storage_format)  # refuses an unknown format here
        self.storage_format = storage_format
        self.buffer_bytes = buffer_bytes
        self.value_bytes = int(value_bytes)

    def __repr__(self) -> str:
        return (f"SizeCost({self.storage_format!r}, buffer_bytes={self.buffer_bytes}, "
                f"value_bytes={self.value_bytes})")

    def estimate(self, table: LayerTable) -> float:
        total = 0 if self.buffer_bytes is None else int(self.buffer_bytes)
        for row in table:
            b = self.value_bytes
            if row.weight_elements > 0 and row.call == 0:
                total += b * (row.params - row.weight_nonzero) + stored_weight_bytes(
                    row.weight_elements, row.weight_nonzero, row.weight_rows or row.out_channels,
                    self.storage_format, b)
            else:
                total += b * row.params
            if self.buffer_bytes is None and row.kind == "norm" and row.call == 0:
                total += 2 * b * row.out_channels + 8
        return float(total)


COST_MODELS: dict[str, type[CostModel]] = {"macs": MacsCost, "params": ParamsCost,
                                           "weights": WeightsCost, "size_bytes": SizeCost}


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
