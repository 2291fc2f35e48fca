"""An analytic roofline cost model: ``roofline_ms``.

Roofline (Williams, Waterman & Patterson, CACM 2009): a layer can go no faster than its
arithmetic at peak compute or its memory traffic at peak bandwidth, whichever is slower, so
per layer ``max(2 * MACs / peak_flops, bytes / bandwidth)``. Eager frameworks also pay a fixed
dispatch cost per layer that dominates small layers, so a per-layer overhead (the time of a
tiny conv+BN+ReLU block) is added. Peak, bandwidth and overhead come from a short
micro-benchmark on this machine (``RooflineCost.measure``) or are given.

It needs no lookup table and reads only the layer table, but it ignores cache reuse, kernel
efficiency at small widths and everything between layers: use it as a quick, monotone proxy;
the lookup table is what latency budgets are costed with (see benchmarks/latency_model.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from autoprune.costs import CostModel
from autoprune.latency.device import resolve_clock
from autoprune.latency.measure import pinned_threads, time_calls
from autoprune.search_spaces import LayerRow, LayerTable

__all__ = ["RooflineCost"]


class RooflineCost(CostModel):
    """Sum over conv/linear layers of ``max(compute time, memory time) + overhead``, in ms.

    ``batch`` overrides the batch the layer table was traced with (latency at another batch);
    ``bytes_per_element`` is 4 for float32.
    """

    name = "roofline_ms"
    unit = "ms"

    def __init__(self, *, peak_gflops: float, bandwidth_gbs: float, overhead_us: float = 0.0,
                 batch: int | None = None, bytes_per_element: int = 4) -> None:
        if peak_gflops <= 0 or bandwidth_gbs <= 0 or overhead_us < 0:
            raise ValueError("peak_gflops and bandwidth_gbs must be positive, overhead_us >= 0")
        self.peak_gflops = float(peak_gflops)
        self.bandwidth_gbs = float(bandwidth_gbs)
        self.overhead_us = float(overhead_us)
        self.batch = batch
        self.bytes_per_element = bytes_per_element

    def __repr__(self) -> str:
        return (f"RooflineCost(peak_gflops={self.peak_gflops:.1f}, bandwidth_gbs="
                f"{self.bandwidth_gbs:.1f}, overhead_us={self.overhead_us:.1f})")

    def layer_ms(self, row: LayerRow) -> float:
        if row.kind not in ("conv", "linear"):
            return 0.0
        scale = (self.batch / row.batch) if self.batch else 1.0
        if row.kind == "conv":
            elems_in = row.batch * row.in_channels * int(np.prod(row.in_size or (1,)))
            elems_out = row.batch * row.out_channels * int(np.prod(row.out_size or (1,)))
        else:
            elems_in, elems_out = row.rows * row.in_channels, row.rows * row.out_channels
        # Activations scale with the batch, weights are read once per call.
        moved = (scale * (elems_in + elems_out) + row.params) * self.bytes_per_element
        compute_s = 2.0 * row.macs * scale / (self.peak_gflops * 1e9)
        memory_s = moved / (self.bandwidth_gbs * 1e9)
        return 1e3 * max(compute_s, memory_s) + 1e-3 * self.overhead_us

    def estimate(self, table: LayerTable) -> float:
        return float(sum(self.layer_ms(row) for row in table))

    def to_json(self) -> dict[str, float]:
        return {"peak_gflops": self.peak_gflops, "bandwidth_gbs": self.bandwidth_gbs,
                "overhead_us": self.overhead_us}

    @classmethod
    def measure(cls, *, threads: int = 1, batch: int | None = None, repeats: int = 20,
                clock: str | None = None) -> RooflineCost:
        """Micro-benchmark this machine (about a second): a cache-resident float32 matrix
        product for peak compute, a copy of a tensor larger than the caches for bandwidth, a
        tiny conv+BN+ReLU for the per-layer overhead. Medians of ``repeats`` calls."""
        clock = resolve_clock(clock, threads)
        gen = torch.Generator().manual_seed(0)
        n = 384
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        big = torch.randn(16 * 1024 * 1024, generator=gen)  # 64 MB, beyond a 32 MB L3
        dst = torch.empty_like(big)
        tiny = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()).eval()
        x = torch.randn(1, 8, 1, 1, generator=gen)
        with pinned_threads(threads), torch.inference_mode():
            mm = float(np.median(time_calls(lambda: torch.mm(a, b), warmup=3,
                                              repeats=repeats).of(clock)))
            cp = float(np.median(time_calls(lambda: dst.copy_(big), warmup=2,
                                            repeats=max(5, repeats // 2)).of(clock)))
            ov = float(np.median(time_calls(lambda: tiny(x), warmup=5, repeats=repeats * 5).of(clock)))
        return cls(peak_gflops=2 * n ** 3 / mm / 1e9,
                   bandwidth_gbs=2 * big.numel() * big.element_size() / cp / 1e9,
                   overhead_us=ov * 1e6, batch=batch)
