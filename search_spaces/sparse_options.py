"""What a weight-sparsity space takes, checked: sparsity levels, N:M patterns, the weight
criterion (``magnitude``, or the data criteria of ``weight_masks.py`` with their calibration
batches), and the small facts about a model its build reads (tied weights, a dense model's key).
``sparse.py`` builds the spaces from them."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import nn

from .tracing import as_inputs

__all__ = ["DATA_FIX", "DEFAULT_LEVELS", "DataCriteria", "WEIGHT_CRITERIA", "WeightCriterion",
           "check_calibration", "check_levels", "check_nm", "data_criteria", "model_key",
           "parse_nm", "stat_tensors", "tied_modules"]

DEFAULT_LEVELS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
WEIGHT_CRITERIA = ("magnitude", "wanda", "sparsegpt")
DATA_FIX = "pass calibration=[(inputs, targets), ...] batches from the training split"


@dataclass(frozen=True)
class WeightCriterion:
    """How ``apply`` chooses the weights a unit keeps: ``magnitude`` (|w|), or the data
    criteria ``wanda`` and ``sparsegpt`` (``weight_masks.py``), which need calibration."""

    name: str

    @property
    def needs_data(self) -> bool:
        return self.name != "magnitude"


def parse_nm(pattern: str | Sequence[int]) -> tuple[int, int]:
    """``"2:4"`` (or ``(2, 4)``) as ``(N, M)`` with ``0 < N < M``."""
    try:
        n, m = (int(v) for v in (pattern.split(":") if isinstance(pattern, str) else pattern))
    except (ValueError, TypeError):
        raise ValueError(f"N:M pattern {pattern!r} is not of the form 'N:M'. Fix: write it as "
                         "'2:4' (N weights kept in every M)") from None
    if not 0 < n < m:
        raise ValueError(f"N:M pattern {pattern!r} must keep 0 < N < M weights per group. Fix: "
                         "use e.g. '2:4' or '1:4' (a dense layer is always a choice)")
    return n, m


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(v) for v in levels)
    if not out:
        raise ValueError("levels is empty. Fix: pass sparsity levels in [0, 1), e.g. "
                         "(0.0, 0.5, 0.9)")
    bad = [v for v in out if not 0.0 <= v < 1.0]
    if bad:
        raise ValueError(f"sparsity levels must be in [0, 1) (the share of weights removed), got "
                         f"{bad}. Fix: pass levels such as (0.0, 0.5, 0.9)")
    if len(set(out)) != len(out):
        raise ValueError(f"sparsity levels {list(out)} repeat a value. Fix: list each level once")
    return tuple(sorted(set(out) | {0.0}))


def check_nm(nm: Sequence[str | Sequence[int]]) -> tuple[tuple[int, int], ...]:
    if isinstance(nm, str):
        nm = (nm,)
    out = [parse_nm(p) for p in nm]
    if not out:
        raise ValueError("nm is empty. Fix: pass N:M patterns, e.g. ('2:4', '1:4')")
    shares: dict[tuple[int, int], tuple[int, int]] = {}
    for n, m in out:
        g = math.gcd(n, m)
        if (n // g, m // g) in shares:
            a, b = shares[(n // g, m // g)]
            raise ValueError(f"N:M patterns {a}:{b} and {n}:{m} both keep {n // g}/{m // g} of "
                             "the weights: they keep the same share; choose one")
        shares[(n // g, m // g)] = (n, m)
    return tuple(sorted(out, key=lambda p: p[0] / p[1]))


def check_calibration(calibration: Any, name: str) -> list[tuple[tuple[torch.Tensor, ...], Any]]:
    if calibration is None or isinstance(calibration, (torch.Tensor, str, bytes, Mapping)):
        got = "none" if calibration is None else f"a {type(calibration).__name__}"
        raise ValueError(f"weight criterion {name!r} chooses weights on data and was given {got}. "
                         f"Fix: {DATA_FIX}, or use criterion='magnitude'")
    out = []
    for k, batch in enumerate(calibration):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"calibration batch {k} is a {type(batch).__name__}, not an "
                             f"(inputs, targets) pair. Fix: {DATA_FIX}")
        out.append((as_inputs(batch[0]), batch[1]))
    if not out:
        raise ValueError(f"weight criterion {name!r} was given no calibration batches. "
                         f"Fix: {DATA_FIX}")
    return out


@dataclass(frozen=True)
class DataCriteria:
    prune_layer: Any
    layer_statistics: Any
    wanda_masks: Any = None  # every level of a layer from one ranking, where provided


def data_criteria() -> DataCriteria:
    """``weight_masks.py``'s ``prune_layer``, ``layer_statistics`` and ``wanda_masks``
    (imported when used)."""
    try:
        from .weight_masks import layer_statistics, prune_layer  # noqa: PLC0415 - optional
    except ImportError as err:
        raise ValueError("the data criteria 'wanda' and 'sparsegpt' need "
                         "search_spaces/weight_masks.py (prune_layer, layer_statistics), which "
                         f"this installation lacks ({err}). Fix: use criterion='magnitude'") from None
    module = sys.modules[prune_layer.__module__]  # (the module the names came from)
    return DataCriteria(prune_layer, layer_statistics, getattr(module, "wanda_masks", None))


def stat_tensors(stats: object) -> list[torch.Tensor | None]:
    """What a data criterion measured for a layer, as tensors (for the level's fingerprint)."""
    if stats is None:
        return []
    return [getattr(stats, k, None) for k in ("norms", "hessian")]


def tied_modules(model: nn.Module) -> set[str]:
    """Modules holding a weight that another module holds too."""
    seen: dict[int, list[str]] = {}
    for name, m in model.named_modules():
        for p in m.parameters(recurse=False):
            seen.setdefault(id(p), []).append(name)
    return {n for names in seen.values() if len(names) > 1 for n in names}


def model_key(model: nn.Module) -> tuple:
    return tuple((id(t), t._version, t.data_ptr()) for t in chain(model.parameters(), model.buffers()))
