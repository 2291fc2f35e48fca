"""Latency jobs: ``autoprune profile``, ``autoprune latency``, and the latency parts of a search
(the table built on first use and cached, the final choice measured for real).

A search with a latency budget costs candidates with a lookup table (microseconds each) but
never tells anyone a network meets the budget without timing it: HELP (Lee et al., NeurIPS
2021) reports latency-constrained searches overshooting when they trust predictions. So the
chosen network is measured; if it misses, the next best feasible trials are measured in turn
until one meets the budget, and predicted and measured latency are reported side by side.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from autoprune.latency import (
    DEVICE_MATCH_KEYS,
    LatencyMeasurement,
    describe_device,
    device_fingerprint,
    measure_latency,
)
from autoprune.lut import LatencyTable, LatencyTableError, ProfilePlan, model_signature
from autoprune.problem import PruningProblem
from autoprune.search_spaces import ChannelSpace
from autoprune.study import TrialRecord

__all__ = ["LatencyCheck", "LatencySettings", "ProfileSettings", "check_staleness",
           "check_summary", "latency", "latency_check_view", "prediction_margin", "profile",
           "stale_threshold", "table_cache_path", "table_for_search", "table_summary",
           "verify_latency"]

# Candidates measured after the search before repairing to the measured speed.
MAX_CHECKS = 8
# Repairs of the best candidate to the speed measured now, and the extra room each leaves.
MAX_REPAIRS = 5
REPAIR_SAFETY = 0.02
# Timing of a final network: more repeats than a calibration point, it is what users are told.
FINAL_WARMUP = 10
FINAL_REPEATS = 100
# Timing of the dense network when a table is read from disk, to tell a stale one.
STALE_WARMUP = 5
STALE_REPEATS = 30


def prediction_margin(table: LatencyTable) -> float:
    """How far inside a latency budget predictions are kept: the table's typical (median
    leave-one-out) error on whole networks, between 2% and 15%. Within it the best candidate
    usually meets the budget when measured; beyond it the fallback walk takes over."""
    err = float(table.correction.get("loo_median_abs_rel", 0.05))
    return min(0.15, max(0.02, err if math.isfinite(err) else 0.05))


def _inputs(example: torch.Tensor | Sequence[torch.Tensor], batch: int
            ) -> tuple[torch.Tensor, ...]:
    """Random inputs shaped like the example's at ``batch`` (values do not change the time of
    dense convolutions; random rather than zeros so nothing takes a shortcut)."""
    gen = torch.Generator().manual_seed(0)
    examples = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    return tuple(torch.randn((batch, *x.shape[1:]), generator=gen).to(x.dtype) for x in examples)


# ---------------------------------------------------------------------- tables for a search
def table_cache_path(model: nn.Module, space: ChannelSpace, device: Mapping[str, Any],
                     cache_dir: Path) -> Path:
    """Where a search caches the table for this model, space and device: keyed by the device
    fingerprint, the model's layer signature and the space's widths."""
    key = json.dumps([{k: device.get(k) for k in DEVICE_MATCH_KEYS}, model_signature(space),
                      space.round_to, space.min_ratio], sort_keys=True)
    spec = getattr(model, "autoprune_spec", None) or {}
    stem = (f"{spec.get('name', type(model).__name__.lower())}_{spec.get('input_size', 'x')}px_"
            f"w{float(spec.get('width_mult', 1.0)):g}")
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / "latency" / f"{stem}_{digest}.json"


def table_for_search(model: nn.Module, example: torch.Tensor, space: ChannelSpace, *,
                     lut: Path | None, cache_dir: Path, batch: int, threads: int, backend: str,
                     clock: str | None, console: Console, plan: ProfilePlan | None = None
                     ) -> tuple[LatencyTable, dict[str, Any]]:
    """The table a latency search costs with: ``lut`` if given (refused if built for another
    device or model; built there if missing), else the cached one, else built now and cached.
    A table read from disk is checked against the dense network timed now (see
    :func:`check_staleness`)."""
    inputs = _inputs(example, batch)
    device = device_fingerprint(inputs, threads=threads, backend=backend, clock=clock)

    def loaded(table: LatencyTable, info: dict[str, Any]) -> tuple[LatencyTable, dict[str, Any]]:
        now = measure_latency(model, inputs, threads=threads, backend=backend, clock=clock,
                              warmup=STALE_WARMUP, repeats=STALE_REPEATS)
        info["dense_now"] = check_staleness(table, now.median_ms, path=Path(info["path"]),
                                            cached=info.get("cached", False), console=console)
        return table, info

    if lut is not None:
        path, cached = Path(lut), False
        if path.exists():
            table = LatencyTable.load(path, expected_device=device)
            table.check_space(space, source=f"latency table {path}")
            return loaded(table, {"path": str(path), "built": False})
    else:
        path, cached = table_cache_path(model, space, device, cache_dir), True
        if path.exists():
            try:
                table = LatencyTable.load(path, expected_device=device)
                table.check_space(space, source=f"cached latency table {path}")
            except LatencyTableError as err:  # our own cache: rebuild rather than fail
                console.print(f"[yellow]rebuilding the cached latency table:[/] {err}")
            else:
                return loaded(table, {"path": str(path), "built": False, "cached": True})
    where = "cached at" if cached else "written to"
    console.print(f"building the latency table for this device (once; {where} {path})")
    table = LatencyTable.build(model, inputs, space=space, threads=threads, backend=backend,
                               clock=clock, plan=plan, console=console)
    table.save(path)
    return table, {"path": str(path), "built": True, "cached": cached}


def check_staleness(table: LatencyTable, measured_ms: float, *, path: Path, cached: bool,
                    console: Console) -> dict[str, float]:
    """Compare a table read from disk with the dense network's latency measured now. Load on a
    shared host changes over hours, so a table can be off by more than its own margin: the
    search then optimises against stale numbers and only the final check (which repairs the
    choice to the measured speed) catches it. Nothing is rescaled here -- one short timing is
    too noisy to rewrite a table with -- but beyond :func:`stale_threshold` the user is told
    how to re-profile."""
    predicted = table.predict({})
    drift = measured_ms / predicted - 1
    if abs(drift) > stale_threshold(table):
        how = (f"delete {path} (the next search rebuilds it)" if cached else
               f"rebuild it with `autoprune profile ... -o {path}`")
        console.print(
            f"[yellow]note:[/] the latency table predicts the dense network at {predicted:.2f} "
            f"ms; it measures {measured_ms:.2f} ms now ({100 * drift:+.1f}%): this machine "
            f"runs {'slower' if drift > 0 else 'faster'} than when the table was built, or a "
            f"passing load touched this one short timing. The chosen network is still measured"
            f" and repaired to the speed measured at the end; if this persists, {how}.",
            highlight=False)
    return {"predicted_ms": predicted, "measured_ms": measured_ms, "drift": drift,
            "threshold": stale_threshold(table)}


def stale_threshold(table: LatencyTable) -> float:
    """How far the dense network's timing may stray from a table before the user is told:
    twice the table's margin and at least 25% (on a shared 2-core host, back-to-back readings
    of one network were seen 13.3 and 16.2 ms apart)."""
    return max(0.25, 2 * prediction_margin(table))


# ---------------------------------------------------------------------- the final check
@dataclass(frozen=True, kw_only=True)
class LatencyCheck:
    """The outcome of measuring a latency search's choice: the chosen trial (the best-ranked
    one that met the budget when measured, else the best-ranked one), every measurement."""

    chosen: TrialRecord
    met: bool
    limit_ms: float
    dense: LatencyMeasurement
    dense_predicted_ms: float
    measured: Mapping[int, LatencyMeasurement]
    predicted: Mapping[int, float]
    rank: Mapping[int, int] = field(default_factory=dict)
    repaired: tuple[int, ...] = ()

    def best_measurement(self) -> LatencyMeasurement:
        return self.measured[self.chosen.number]


def verify_latency(problem: PruningProblem, records: Sequence[TrialRecord], *,
                   model: nn.Module, example: torch.Tensor | Sequence[torch.Tensor], batch: int,
                   threads: int, backend: str, clock: str | None,
                   record: Callable[[np.ndarray], TrialRecord] | None = None,
                   console: Console | None = None, max_checks: int = MAX_CHECKS,
                   max_repairs: int = MAX_REPAIRS) -> LatencyCheck:
    """Measure the best feasible trials in rank order until one meets the latency budget.

    If none of them does (the machine runs slower now than when the table was built, or the
    table is off for these networks), the best trial is shrunk along the repair path to the
    speed measured -- its predicted latency scaled by measured / predicted (of the last network
    measured, or the median over all measured so far if that is slower), with 2% more room --
    and ``record`` (prune, score and store a point as a new trial) turns it into a candidate,
    which is measured in turn; at most ``max_repairs`` times.
    """
    budget = next(b for b in problem.budgets if b.metric == "latency_ms")
    inputs = _inputs(example, batch)
    say = console.print if console else (lambda *a, **k: None)

    def timer(net: nn.Module, x: tuple[torch.Tensor, ...]) -> LatencyMeasurement:
        return measure_latency(net, x, threads=threads, backend=backend, clock=clock,
                               warmup=FINAL_WARMUP, repeats=FINAL_REPEATS)

    ranked, seen = [], set()
    for r in sorted((r for r in records if not r.failed and math.isfinite(r.objective)
                     and problem.feasible(r.costs)), key=lambda r: (-r.objective, r.number)):
        key = tuple(sorted(r.config.items()))
        if key not in seen:  # a configuration proposed twice is measured once
            seen.add(key)
            ranked.append(r)
    if not ranked:
        raise ValueError("no feasible trial to measure")
    # The cheapest predicted trial is a last resort, should every better one miss.
    fastest = min(ranked, key=lambda r: r.costs["latency_ms"])
    queue = ranked[:max_checks] + ([fastest] if fastest not in ranked[:max_checks] else [])
    dense = timer(model, inputs)
    measured: dict[int, LatencyMeasurement] = {}
    predicted: dict[int, float] = {}
    repaired: list[int] = []
    chosen = None

    def check(r: TrialRecord) -> bool:
        m = timer(problem.space.apply(model, r.config), inputs)
        measured[r.number], predicted[r.number] = m, r.costs["latency_ms"]
        ok = m.median_ms <= budget.limit
        say(f"measured trial {r.number}: {m.median_ms:.2f} ms (predicted "
            f"{r.costs['latency_ms']:.2f} ms, budget {budget.limit:.2f} ms) "
            + ("[green]meets it[/]" if ok else "[yellow]misses it[/]"))
        return ok

    for r in queue:
        if check(r):
            chosen = r
            break
    base, last = ranked[0], ranked[0]
    for _ in range(max_repairs if chosen is None and record is not None else 0):
        # One reading can be lucky: the median slowdown of every network measured so far
        # keeps a repair from aiming at a speed the machine showed only once.
        ratios = [measured[n].median_ms / predicted[n] for n in measured]
        slow = max(1.0, measured[last.number].median_ms / predicted[last.number],
                   float(np.median(ratios)))
        want = budget.limit / (slow * (1 + REPAIR_SAFETY))
        tight = problem.with_margin("latency_ms", 1 - want / budget.limit)
        x = tight.repair(np.asarray(base.point), grow=False)
        if tuple(sorted(problem.space.decode(x).items())) in seen:
            x = tight.repair(np.asarray(base.point) * 0.97, grow=False)
        say(f"repairing trial {base.number} to the measured speed ({slow:.2f}x the "
            f"prediction): predicted {want:.2f} ms or less")
        last = record(x)
        seen.add(tuple(sorted(last.config.items())))
        repaired.append(last.number)
        if last.failed:
            break
        if check(last):
            chosen = last
            break
    return LatencyCheck(chosen=chosen or ranked[0], met=chosen is not None,
                        limit_ms=budget.limit, dense=dense,
                        dense_predicted_ms=problem.dense_costs["latency_ms"], measured=measured,
                        predicted=predicted, rank={r.number: i + 1 for i, r in enumerate(ranked)},
                        repaired=tuple(repaired))


def check_summary(check: LatencyCheck) -> dict[str, Any]:
    """The check as JSON: the chosen and the dense network, predicted and measured."""
    best = check.best_measurement()
    return {"met": check.met, "limit_ms": check.limit_ms, "device": dict(check.dense.device),
            "chosen_trial": check.chosen.number,
            "predicted_ms": check.predicted[check.chosen.number],
            "measured": {"latency_ms": best.median_ms, "p10_ms": best.p10_ms,
                         "p90_ms": best.p90_ms, "wall_median_ms": best.wall_median_ms},
            "dense": {"predicted_ms": check.dense_predicted_ms,
                      "measured": {"latency_ms": check.dense.median_ms,
                                   "p10_ms": check.dense.p10_ms, "p90_ms": check.dense.p90_ms,
                                   "wall_median_ms": check.dense.wall_median_ms}},
            "checked": [{"trial": n, "rank": check.rank.get(n), "repaired": n in check.repaired,
                         "predicted_ms": check.predicted[n], "latency_ms": m.median_ms,
                         "p10_ms": m.p10_ms, "p90_ms": m.p90_ms}
                        for n, m in check.measured.items()]}


def latency_check_view(check: LatencyCheck) -> Table:
    """Predicted against measured latency, side by side, for the dense and every measured net."""
    t = Table(title=f"latency: predicted (table) vs measured, budget {check.limit_ms:.2f} ms")
    for col in ("network", "predicted ms", "measured ms (median)", "p10-p90 ms", "error",
                "meets budget", "wall-clock median ms"):
        t.add_column(col, justify="left" if col == "network" else "right")

    def row(name: str, pred: float, m: LatencyMeasurement, judged: bool) -> None:
        t.add_row(name, f"{pred:.2f}", f"{m.median_ms:.2f}", f"{m.p10_ms:.2f}-{m.p90_ms:.2f}",
                  f"{100 * (pred / m.median_ms - 1):+.1f}%",
                  ("yes" if m.median_ms <= check.limit_ms else "no") if judged else "-",
                  f"{m.wall_median_ms:.2f}")

    row("dense", check.dense_predicted_ms, check.dense, False)
    for number, m in check.measured.items():
        mark = " (chosen)" if number == check.chosen.number else ""
        how = "repaired" if number in check.repaired else f"rank {check.rank.get(number, '?')}"
        row(f"trial {number}, {how}{mark}", check.predicted[number], m, True)
    t.caption = (f"device: {describe_device(check.dense.device)}; load average "
                 f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return t


# ---------------------------------------------------------------------- autoprune profile
@dataclass(frozen=True, kw_only=True)
class ProfileSettings:
    """What ``autoprune profile`` takes. Latency does not depend on weight values, so the
    profiled model is the zoo architecture, untrained; the data set gives its input shape."""

    model: str = "vgg11"
    data: str = "digits"
    image_size: int = 32
    width_mult: float = 1.0
    batch: int = 1
    threads: int = 1
    backend: str = "torch"
    clock: str | None = None
    round_to: int = 8
    min_ratio: float = 0.2
    output: Path = Path("lut.json")
    plan: ProfilePlan = field(default_factory=ProfilePlan)


def _zoo_model(name: str, data: str, image_size: int, width_mult: float
               ) -> tuple[nn.Module, torch.Tensor]:
    from autoprune.data import load_data
    from autoprune.models import build_model

    splits = load_data(data, image_size=image_size)
    torch.manual_seed(0)
    model = build_model(name, num_classes=splits.num_classes, in_channels=splits.in_channels,
                        width_mult=width_mult, input_size=splits.image_size).eval()
    return model, splits.example_inputs(1)


def profile(settings: ProfileSettings, *, console: Console | None = None) -> dict[str, Any]:
    """Build a latency table for a zoo model on this machine, save it, return its summary."""
    console = console or Console(stderr=True)
    model, example = _zoo_model(settings.model, settings.data, settings.image_size,
                                settings.width_mult)
    space = ChannelSpace.from_model(model, example, round_to=settings.round_to,
                                    min_ratio=settings.min_ratio)
    table = LatencyTable.build(model, _inputs(example, settings.batch), space=space,
                               threads=settings.threads, backend=settings.backend,
                               clock=settings.clock, plan=settings.plan, console=console)
    path = table.save(settings.output)
    return table_summary(table, path)


def table_summary(table: LatencyTable, path: Path | None = None) -> dict[str, Any]:
    corr = table.correction
    return {"path": str(path) if path else None, "device": table.device,
            "model": table.model, "layers": len(table.layers), "blocks": len(table.entries),
            "grid_points": sum(e.ms.size for e in table.entries),
            "build_seconds": round(table.build_seconds, 2),
            "correction": {"offset_ms": corr["offset_ms"], "scale": corr["scale"],
                           "loo_median_abs_pct": round(100 * corr.get("loo_median_abs_rel", 0), 2),
                           "loo_max_abs_pct": round(100 * corr.get("loo_max_abs_rel", 0), 2),
                           "points": len(corr.get("points", []))},
            "dense_predicted_ms": round(table.predict({}), 4)}


# ---------------------------------------------------------------------- autoprune latency
@dataclass(frozen=True, kw_only=True)
class LatencySettings:
    """What ``autoprune latency`` takes: a zoo model (dense, or a run's chosen configuration)."""

    model: str = "vgg11"
    data: str = "digits"
    image_size: int = 32
    width_mult: float = 1.0
    config: Path | None = None
    batch: int = 1
    threads: int = 1
    backend: str = "torch"
    clock: str | None = None
    warmup: int = FINAL_WARMUP
    repeats: int = FINAL_REPEATS
    lut: Path | None = None


def latency(settings: LatencySettings) -> dict[str, Any]:
    """Measure a network on this machine: ``{"median_ms", "p10_ms", "p90_ms", "device"}``, plus
    ``predicted_ms`` when a table is given and ``network`` saying what was timed."""
    if settings.config is not None:
        model, dense, example, what = _configured(settings.config)
    else:
        model, example = _zoo_model(settings.model, settings.data, settings.image_size,
                                    settings.width_mult)
        dense, what = model, {"model": settings.model, "config": "dense"}
    inputs = _inputs(example, settings.batch)
    table = None
    if settings.lut is not None:  # refuse a foreign table before spending time measuring
        device = device_fingerprint(inputs, threads=settings.threads, backend=settings.backend,
                                    clock=settings.clock)
        table = LatencyTable.load(settings.lut, expected_device=device)
        space = ChannelSpace.from_model(dense, example,
                                        round_to=int(table.space.get("round_to", 8)),
                                        min_ratio=float(table.space.get("min_ratio", 0.2)))
        table.check_space(space, source=f"latency table {settings.lut}")
    m = measure_latency(model, inputs, threads=settings.threads, backend=settings.backend,
                        clock=settings.clock, warmup=settings.warmup, repeats=settings.repeats)
    out = m.to_json()
    out["wall_median_ms"] = round(m.wall_median_ms, 4)
    if table is not None:
        out["predicted_ms"] = round(table.predict(what.get("units", {})), 4)
    out["network"] = what
    return out


def _configured(path: Path) -> tuple[nn.Module, nn.Module, torch.Tensor, dict[str, Any]]:
    """The network a run's ``best.json`` describes (its pruned weights when they are there)."""
    from autoprune.api import load_pruned
    from autoprune.models import build_model_from_spec

    path = Path(path)
    if path.is_dir():
        path = path / "best.json"
    try:
        choice = json.loads(path.read_text())
        spec, shape, config = choice["model_spec"], choice["example_input_shape"], choice["config"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist; pass a run's best.json "
                                "(autoprune search writes it)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a readable autoprune best.json ({err})") from None
    example = torch.zeros(shape)
    dense = build_model_from_spec(spec).eval()
    if (path.parent / "pruned.pt").exists():
        model = load_pruned(path.parent)
    else:
        space = ChannelSpace.from_model(dense, example, round_to=choice.get("round_to", 8),
                                        min_ratio=choice.get("min_ratio", 0.2))
        model = space.apply(dense, config)
    return model.eval(), dense, example, {"model": spec.get("name"), "config": str(path),
                                          "units": {k: int(v) for k, v in config.items()}}
