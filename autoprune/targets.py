"""Budgets: parse ``flops=50%``, ``macs=20M``, ``params=0.1M`` and resolve them against the
dense model.

``flops`` counts multiply-accumulates, as the pruning literature does (ResNet-56 = 125M);
``macs`` is its synonym. Percentages are of the dense model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Budget", "Target", "TargetError", "parse_target", "parse_targets", "resolve_budgets"]

TARGET_HELP = (
    "Budgets look like flops=50% (of the dense model), flops=20M, macs=0.2G, params=0.1M or "
    "params=30%. flops counts multiply-accumulates (MACs), as the pruning literature does; "
    "macs= is its synonym."
)

_METRICS = {"flops": "macs", "macs": "macs", "params": "params"}
_NOT_YET = {"latency": "latency targets are not supported yet (they arrive with on-device "
                       "lookup tables); use flops=... or params=... for now",
            "sparsity": "sparsity targets need an unstructured search space, which is not "
                        "available yet; use flops=... or params=..."}
_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9, "t": 1e12,
           "T": 1e12}
_VALUE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|[kKmMgGtT]?)\s*$")


class TargetError(ValueError):
    """A target string that cannot be understood or met."""


@dataclass(frozen=True, kw_only=True)
class Target:
    """A budget as the user wrote it: ``metric`` (a cost-model name), a value, and whether the
    value is a fraction of the dense model's cost."""

    metric: str
    value: float
    relative: bool
    text: str

    def limit(self, dense_cost: float) -> float:
        return self.value * dense_cost if self.relative else self.value


@dataclass(frozen=True, kw_only=True)
class Budget:
    """A resolved budget: cost ``metric`` must be at most ``limit``."""

    metric: str
    limit: float
    text: str

    def met_by(self, costs: Mapping[str, float]) -> bool:
        return costs[self.metric] <= self.limit * (1 + 1e-9)


def parse_target(text: str) -> Target:
    """One budget from ``name=value``; any error names what would work."""
    if not isinstance(text, str) or "=" not in text:
        raise TargetError(f"cannot read target {text!r}: expected name=value. {TARGET_HELP}")
    key, _, raw = text.partition("=")
    key = key.strip().lower()
    if key in _NOT_YET:
        raise TargetError(f"target {text!r}: {_NOT_YET[key]}")
    if key not in _METRICS:
        raise TargetError(f"unknown budget {key!r} in {text!r}. {TARGET_HELP}")
    match = _VALUE.match(raw)
    if not match:
        raise TargetError(f"cannot read the value {raw.strip()!r} of {text!r}: use a positive "
                          f"number with an optional % or K/M/G suffix. {TARGET_HELP}")
    number, suffix = float(match.group(1)), match.group(2)
    if not math.isfinite(number) or number <= 0:
        raise TargetError(f"target {text!r} must be positive. {TARGET_HELP}")
    if suffix == "%":
        if number > 100:
            raise TargetError(f"target {text!r} asks for more than the dense model (100%); "
                              "give a percentage in (0, 100].")
        return Target(metric=_METRICS[key], value=number / 100.0, relative=True, text=text.strip())
    return Target(metric=_METRICS[key], value=number * _SUFFIX[suffix], relative=False,
                  text=text.strip())


def parse_targets(texts: str | Iterable[str]) -> list[Target]:
    """Several budgets: a list, or one string with budgets separated by commas."""
    items = [texts] if isinstance(texts, str) else list(texts)
    parts = [p for item in items for p in str(item).split(",") if p.strip()]
    if not parts:
        raise TargetError(f"no target given. {TARGET_HELP}")
    targets = [parse_target(p) for p in parts]
    seen: set[str] = set()
    for t in targets:
        if t.metric in seen:
            raise TargetError(f"two budgets for {t.metric!r}; give each metric once.")
        seen.add(t.metric)
    return targets


def resolve_budgets(targets: Iterable[Target], dense: Mapping[str, float],
                    smallest: Mapping[str, float]) -> list[Budget]:
    """Absolute budgets; a budget below what the smallest configuration costs is refused here,
    with the smallest reachable value in the message."""
    budgets = []
    for t in targets:
        limit = t.limit(dense[t.metric])
        if limit < smallest[t.metric]:
            low = smallest[t.metric]
            raise TargetError(
                f"target {t.text!r} cannot be met: the smallest configuration of this search "
                f"space costs {low:,.0f} {t.metric} ({100 * low / dense[t.metric]:.1f}% of the "
                f"dense {dense[t.metric]:,.0f}). Ask for at least that, or lower --min-ratio / "
                "--round-to to allow thinner layers.")
        budgets.append(Budget(metric=t.metric, limit=limit, text=t.text))
    return budgets
