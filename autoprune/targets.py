"""Budgets: parse ``flops=50%``, ``macs=20M``, ``params=0.1M``, ``latency=10ms``,
``sparsity=80%``, ``size=2MB`` and resolve them against the dense model.

``flops`` counts multiply-accumulates, as the pruning literature does (ResNet-56 = 125M);
``macs`` is its synonym. Percentages are of the dense model. Latency budgets are in ms, us or
s (or a percentage of the dense model's predicted latency) and are costed by an on-device
lookup table (``latency_ms``).

The weight-sparsity budgets need a weight-granularity space (unstructured, N:M):
``sparsity=80%`` (or ``0.8``) asks that 80% of the prunable weights be zero, a budget on the
``weights`` cost (non-zero prunable weights) of ``1 - 0.8`` times the dense model's;
``size=2MB`` (``B``; ``kB``, ``MB``, ``GB`` decimal; ``KiB``, ``MiB``, ``GiB`` binary) or
``size=50%`` (of the dense fp32 model) is a budget on ``size_bytes``, the stored file in the
search's storage format (``autoprune.costs.SizeCost``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Budget", "Target", "TargetError", "parse_target", "parse_targets", "resolve_budgets"]

TARGET_HELP = (
    "Budgets look like latency=10ms (also us, s), flops=50% (of the dense model), flops=20M, "
    "macs=0.2G, params=0.1M or params=30%. flops counts multiply-accumulates (MACs), as the "
    "pruning literature does; macs= is its synonym. With a weight-sparsity space (unstructured, "
    "nm): sparsity=80% (or 0.8) and size=2MB (B, kB, MB, GB, KiB, MiB, GiB) or size=50%."
)
SPARSITY_HELP = ("Sparsity targets look like sparsity=80% or sparsity=0.8: the fraction of the "
                 "prunable weights that are zero, in [0, 100%).")
SIZE_HELP = ("Size targets look like size=2MB, size=500kB, size=1.5MiB, size=300000B (kB, MB, GB "
             "are powers of 1000; KiB, MiB, GiB of 1024), or size=50% (of the dense model's "
             "fp32 size).")
LATENCY_HELP = ("Latency budgets look like latency=10ms, latency=800us, latency=0.01s, or "
                "latency=60% (of the dense model's predicted latency).")

_METRICS = {"flops": "macs", "macs": "macs", "params": "params", "latency": "latency_ms",
            "sparsity": "weights", "size": "size_bytes"}
_BYTE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20,
               "gib": 2**30}
# Micro is written us, \u00b5s (micro sign) or \u03bcs (Greek mu).
_TIME_UNITS = {"ms": 1.0, "us": 1e-3, "\u00b5s": 1e-3, "\u03bcs": 1e-3, "s": 1e3}
_LATENCY_VALUE = re.compile(
    r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z\u00b5\u03bc%]*)\s*$")
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
    """A resolved budget: cost ``metric`` must be at most ``limit``.

    ``margin`` (a fraction) keeps predicted costs that far inside the limit: a latency table's
    predictions have an error, and the chosen network is measured against ``limit`` itself.
    """

    metric: str
    limit: float
    text: str
    margin: float = 0.0

    @property
    def search_limit(self) -> float:
        """What predicted costs must stay within: ``limit`` less the margin."""
        return self.limit * (1.0 - self.margin)

    def met_by(self, costs: Mapping[str, float]) -> bool:
        return costs[self.metric] <= self.search_limit * (1 + 1e-9)


def parse_target(text: str) -> Target:
    """One budget from ``name=value``; any error names what would work."""
    if not isinstance(text, str) or "=" not in text:
        raise TargetError(f"cannot read target {text!r}: expected name=value. {TARGET_HELP}")
    key, _, raw = text.partition("=")
    key = key.strip().lower()
    if key not in _METRICS:
        raise TargetError(f"unknown budget {key!r} in {text!r}. {TARGET_HELP}")
    if key == "latency":
        return _parse_latency(text, raw)
    if key == "sparsity":
        return _parse_sparsity(text, raw)
    if key == "size":
        return _parse_size(text, raw)
    match = _VALUE.match(raw)
    if not match:
        raise TargetError(f"cannot read the value {raw.strip()!r} of {text!r}: use a positive "
                          f"number with an optional % or K/M/G suffix. {TARGET_HELP}")
    number, suffix = float(match.group(1)), match.group(2)
    if not math.isfinite(number) or number <= 0:
        raise TargetError(f"target {text!r} must be positive. {TARGET_HELP}")
    if suffix == "%":
        return _percent_target(text, _METRICS[key], number)
    return Target(metric=_METRICS[key], value=number * _SUFFIX[suffix], relative=False,
                  text=text.strip())


def _percent_target(text: str, metric: str, number: float) -> Target:
    if number > 100:
        raise TargetError(f"target {text!r} asks for more than the dense model (100%); "
                          "give a percentage in (0, 100].")
    return Target(metric=metric, value=number / 100.0, relative=True, text=text.strip())


def _parse_latency(text: str, raw: str) -> Target:
    match = _LATENCY_VALUE.match(raw)
    if not match:
        raise TargetError(f"cannot read the latency {raw.strip()!r} of {text!r}: use a positive "
                          f"number with a unit. {LATENCY_HELP}")
    number, unit = float(match.group(1)), match.group(2)
    if not math.isfinite(number) or number <= 0:
        raise TargetError(f"latency target {text!r} must be positive. {LATENCY_HELP}")
    if unit == "%":
        return _percent_target(text, "latency_ms", number)
    if not unit:
        raise TargetError(f"latency target {text!r} has no unit: write e.g. "
                          f"latency={match.group(1)}ms. {LATENCY_HELP}")
    if unit.lower() not in _TIME_UNITS:
        raise TargetError(f"latency target {text!r}: unknown unit {unit!r}; use ms, us or s. "
                          f"{LATENCY_HELP}")
    scale = _TIME_UNITS[unit.lower()]
    return Target(metric="latency_ms", value=number * scale, relative=False, text=text.strip())


def _parse_sparsity(text: str, raw: str) -> Target:
    """``sparsity=s`` keeps at most ``1 - s`` of the dense model's prunable weights."""
    match = _LATENCY_VALUE.match(raw)
    if not match or match.group(2) not in ("", "%"):
        raise TargetError(f"cannot read the sparsity {raw.strip()!r} of {text!r}: use a "
                          f"percentage or a fraction. {SPARSITY_HELP}")
    number, percent = float(match.group(1)), match.group(2) == "%"
    if not percent and number >= 1:
        hint = f" (did you mean sparsity={match.group(1)}%?)" if number < 100 else ""
        raise TargetError(f"sparsity target {text!r} is a fraction of 1 or more{hint}; "
                          f"{SPARSITY_HELP}")
    fraction = number / 100.0 if percent else number
    if not math.isfinite(fraction) or not 0.0 <= fraction < 1.0:
        raise TargetError(f"sparsity target {text!r} must be in [0, 100%): 100% would remove "
                          f"every weight. {SPARSITY_HELP}")
    return Target(metric="weights", value=1.0 - fraction, relative=True, text=text.strip())


def _parse_size(text: str, raw: str) -> Target:
    match = _LATENCY_VALUE.match(raw)
    if not match:
        raise TargetError(f"cannot read the size {raw.strip()!r} of {text!r}: use a positive "
                          f"number with a unit. {SIZE_HELP}")
    number, unit = float(match.group(1)), match.group(2)
    if not math.isfinite(number) or number <= 0:
        raise TargetError(f"size target {text!r} must be positive. {SIZE_HELP}")
    if unit == "%":
        return _percent_target(text, "size_bytes", number)
    if not unit:
        raise TargetError(f"size target {text!r} has no unit: write e.g. "
                          f"size={match.group(1)}MB. {SIZE_HELP}")
    if unit.lower() not in _BYTE_UNITS:
        raise TargetError(f"size target {text!r}: unknown unit {unit!r}; use B, kB, MB, GB, "
                          f"KiB, MiB or GiB. {SIZE_HELP}")
    return Target(metric="size_bytes", value=number * _BYTE_UNITS[unit.lower()],
                  relative=False, text=text.strip())


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
                    smallest: Mapping[str, float], *,
                    margins: Mapping[str, float] | None = None) -> list[Budget]:
    """Absolute budgets; a budget below what the smallest configuration costs is refused here,
    with the smallest reachable value in the message. ``margins`` (fractions per metric) keep
    predictions inside a limit, never tighter than the smallest configuration allows."""
    budgets = []
    for t in targets:
        limit = t.limit(dense[t.metric])
        low = smallest[t.metric]
        if limit < low:
            if t.metric == "latency_ms":
                amount = f"{low:.3f} ms"
                dense_text = f"{dense[t.metric]:.3f} ms"
                hint = ("Ask for at least that (measured latency varies with load: leave some "
                        "room), or lower min_ratio / round_to (--min-ratio / --round-to), or "
                        "use a smaller batch (--batch).")
            elif t.metric == "weights":
                most = 100 * (1 - low / dense[t.metric])
                raise TargetError(
                    f"target {t.text!r} cannot be met: the sparsest configuration of this "
                    f"search space keeps {low:,.0f} of the {dense[t.metric]:,.0f} prunable "
                    f"weights (sparsity {most:.1f}%). Ask for at most that, or give the space "
                    "sparser levels.")
            elif t.metric == "size_bytes":
                amount = f"{low:,.0f} bytes"
                dense_text = f"{dense[t.metric]:,.0f} bytes"
                hint = ("Ask for at least that, or allow sparser levels, or use a more compact "
                        "storage format (csr for very sparse weights).")
            else:
                amount = f"{low:,.0f} {t.metric}"
                dense_text = f"{dense[t.metric]:,.0f}"
                hint = ("Ask for at least that, or lower min_ratio / round_to (--min-ratio / "
                        "--round-to) to allow thinner layers.")
            raise TargetError(
                f"target {t.text!r} cannot be met: the smallest configuration of this search "
                f"space costs {amount} ({100 * low / dense[t.metric]:.1f}% of the dense "
                f"{dense_text}{', predicted' if t.metric == 'latency_ms' else ''}). {hint}")
        margin = float((margins or {}).get(t.metric, 0.0))
        margin = min(max(0.0, margin), max(0.0, 1.0 - low / limit))
        budgets.append(Budget(metric=t.metric, limit=limit, text=t.text, margin=margin))
    return budgets
