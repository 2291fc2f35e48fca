"""A latency table's entries: one block's timings over a grid of (input, output) widths,
bilinear between grid points, and where each costed layer's widths come from (so a table
predicts a configuration without its space). ``autoprune.latency.table`` holds the table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Entry", "Layer", "bracket", "layer", "mapped"]


@dataclass(frozen=True, kw_only=True)
class Entry:
    """Timings of one block over a grid of widths; ``in_grid`` empty means the input channels
    follow the output channels (depthwise)."""

    op: Mapping[str, Any]
    in_grid: tuple[int, ...]
    out_grid: tuple[int, ...]
    ms: np.ndarray  # shape (max(1, len(in_grid)), len(out_grid))

    def at(self, cin: int, cout: int) -> float:
        i0, i1, wi = bracket(self.in_grid, cin)
        o0, o1, wo = bracket(self.out_grid, cout)
        m = self.ms
        return float((1 - wi) * ((1 - wo) * m[i0, o0] + wo * m[i0, o1])
                     + wi * ((1 - wo) * m[i1, o0] + wo * m[i1, o1]))

    def to_json(self) -> dict[str, Any]:
        return {"op": dict(self.op), "in_grid": list(self.in_grid), "out_grid": list(self.out_grid),
                "ms": [[round(float(v), 6) for v in row] for row in self.ms]}


@dataclass(frozen=True, kw_only=True)
class Layer:
    """Where one costed layer's widths come from, so ``predict(config)`` needs no space: each
    width is ``offset + scale * value`` of its unit (a conv's channels: 0 + 1 x value; an
    attention core's rows: 0 + query tokens x heads), the dense width when the unit is not
    in the configuration."""

    name: str
    entry: int
    in_unit: str | None
    out_unit: str | None
    in_full: int
    out_full: int
    depthwise: bool
    in_map: tuple[float, float] = (0.0, 1.0)
    out_map: tuple[float, float] = (0.0, 1.0)

    def widths(self, config: Mapping[str, int]) -> tuple[int, int]:
        cout = mapped(config, self.out_unit, self.out_map, self.out_full)
        if self.depthwise:
            return cout, cout
        return mapped(config, self.in_unit, self.in_map, self.in_full), cout


def layer(name: str, entry: int, in_link: tuple[str, float, float] | None,
           out_link: tuple[str, float, float] | None, in_full: int, out_full: int,
           depthwise: bool) -> Layer:
    return Layer(name=name, entry=entry, in_unit=in_link[0] if in_link else None,
                  out_unit=out_link[0] if out_link else None, in_full=in_full,
                  out_full=out_full, depthwise=depthwise,
                  in_map=(in_link[1], in_link[2]) if in_link else (0.0, 1.0),
                  out_map=(out_link[1], out_link[2]) if out_link else (0.0, 1.0))


def mapped(config: Mapping[str, int], unit: str | None, line: tuple[float, float],
            full: int) -> int:
    if unit is None or unit not in config:
        return full
    return int(round(line[0] + line[1] * int(config[unit])))


def bracket(grid: Sequence[int], v: float) -> tuple[int, int, float]:
    """Neighbours of ``v`` in ``grid`` and the weight of the upper one, clamped to the grid
    (below the smallest measured width the smallest entry is used: conservative)."""
    n = len(grid)
    if n <= 1:
        return 0, 0, 0.0
    i = int(np.clip(np.searchsorted(grid, v), 1, n - 1))
    w = (v - grid[i - 1]) / (grid[i] - grid[i - 1])
    return i - 1, i, float(np.clip(w, 0.0, 1.0))
