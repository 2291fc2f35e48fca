"""The latency table a search costs with: a given file, the cached one, or one built now and
cached (keyed by the device fingerprint and the model), anchored to this machine's speed now."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from autoprune.latency.device import DEVICE_MATCH_KEYS, GPU_MATCH_KEYS, Device
from autoprune.latency.build import ProfilePlan, profiled_space
from autoprune.latency.level import common_drift
from autoprune.latency.measure import measure_latency
from autoprune.latency.table import LatencyTable, LatencyTableError, model_signature
from autoprune.search_spaces import SearchSpace

__all__ = ["ANCHOR_REPEATS", "ANCHOR_ROUNDS", "anchor_to_now", "note_drift", "remote_table",
           "stale_threshold", "table_cache_path", "table_for_search"]

# The anchor: the dense and the thinnest network, each timed in rounds of warm-up + repeats.
ANCHOR_ROUNDS = 3
ANCHOR_WARMUP = 3
ANCHOR_REPEATS = 10
# Both anchor networks must be off the same side by more than this (and the table's check
# limit) to rescale.
ANCHOR_MIN_DRIFT = 0.10


def table_cache_path(model: nn.Module, space: SearchSpace, device: Mapping[str, Any],
                     cache_dir: Path) -> Path:
    """Where a search caches the table for this model, space and device: keyed by the device
    fingerprint, the model's layer signature and the space's widths."""
    matched = {k: device.get(k) for k in DEVICE_MATCH_KEYS}
    matched.update({k: device[k] for k in GPU_MATCH_KEYS if k in device})  # CPU keys unchanged
    key = json.dumps([matched, model_signature(space),
                      space.round_to, space.min_ratio], sort_keys=True)
    spec = getattr(model, "autoprune_spec", None) or {}
    stem = (f"{spec.get('name', type(model).__name__.lower())}_{spec.get('input_size', 'x')}px_"
            f"w{float(spec.get('width_mult', 1.0)):g}")
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / "latency" / f"{stem}_{digest}.json"


def table_for_search(model: nn.Module, example: torch.Tensor, space: SearchSpace, *,
                     lut: Path | None, cache_dir: Path, device: Device, console: Console,
                     plan: ProfilePlan | None = None, speed: float | None = None
                     ) -> tuple[LatencyTable, dict[str, Any]]:
    """The table a latency search costs with: ``lut`` if given (refused if built for another
    device or model; built there if missing), else the cached one, else built now and cached;
    then anchored to this machine's speed now (:func:`anchor_to_now`), or to ``speed`` (a
    resumed search keeps the speed it started with). A ``lut`` measured on another device
    (:mod:`autoprune.latency.remote`) is used as it is: :func:`remote_table`."""
    fingerprint = device.fingerprint(example)

    def ready(table: LatencyTable, info: dict[str, Any]) -> tuple[LatencyTable, dict[str, Any]]:
        if speed is not None:
            info["anchor"] = {"speed": speed, "recorded": True}
            return table.anchored(speed, info["anchor"]), info
        table, info["anchor"] = anchor_to_now(table, model, example, space, device)
        info["dense_now"] = note_drift(table, info["anchor"], path=Path(info["path"]),
                                       cached=info.get("cached", False), console=console)
        return table, info

    if lut is not None:
        path, cached = Path(lut), False
        if path.exists():
            table = LatencyTable.load(path)
            if table.remote:
                return remote_table(table, path, fingerprint, space, console)
            table.check_device(fingerprint, source=f"latency table {path}")
            table.check_space(space, source=f"latency table {path}")
            return ready(table, {"path": str(path), "built": False})
    else:
        path, cached = table_cache_path(model, space, fingerprint, cache_dir), True
        if path.exists():
            try:
                table = LatencyTable.load(path, expected_device=fingerprint)
                table.check_space(space, source=f"cached latency table {path}")
            except LatencyTableError as err:  # our own cache: rebuild rather than fail
                console.print(f"[yellow]rebuilding the cached latency table:[/] {err}")
            else:
                return ready(table, {"path": str(path), "built": False, "cached": True})
    where = "cached at" if cached else "written to"
    console.print(f"building the latency table for this device (once; {where} {path})")
    table = LatencyTable.build(model, example, space=space, device=device, plan=plan,
                               console=console)
    table.save(path)
    return ready(table, {"path": str(path), "built": True, "cached": cached})


def remote_table(table: LatencyTable, path: Path, fingerprint: Mapping[str, Any],
                 space: SearchSpace, console: Console) -> tuple[LatencyTable, dict[str, Any]]:
    """A table measured on another device (``autoprune profile --from-timings``), for a
    search here: for the same model, batch and input shape, neither anchored nor rescaled to
    this machine (it does not predict this machine), and said so."""
    for key in ("batch", "input_shape"):
        if table.device.get(key) != fingerprint.get(key):
            raise LatencyTableError(
                f"latency table {path} was measured on its device for {key} "
                f"{table.device.get(key)!r}, this search asks for {fingerprint.get(key)!r}. "
                f"Fix: search with --batch {table.device.get('batch')} (and the input shape "
                "it was exported with), or export and time a table for this one "
                "(autoprune profile --export-to)")
    table.check_space(space, source=f"latency table {path}")
    console.print(f"latency table {path}: [bold]{table.remote_note()}[/]", highlight=False)
    return table, {"path": str(path), "built": False, "remote": True,
                   "device": dict(table.device), "note": table.remote_note(),
                   "check": {k: v for k, v in table.check.items() if k != "points"}}


def anchor_to_now(table: LatencyTable, model: nn.Module, example: torch.Tensor,
                  space: SearchSpace, device: Device) -> tuple[LatencyTable, dict[str, Any]]:
    """The table rescaled to how fast this machine runs now: the dense and the thinnest
    network are timed in ``ANCHOR_ROUNDS`` alternating rounds, and when both measure off
    their predictions on the same side by more than the table's own check limit (and
    ``ANCHOR_MIN_DRIFT``), the predictions are scaled by the change both show: the ratio
    closer to 1 (:func:`autoprune.latency.level.common_drift`).

    A shared host's speed drifts over seconds to hours (neighbours come and go): a table built
    at one speed predicts every network off by a common factor at another, while its relative
    costs stay right. Two networks that disagree show an error of the table's shape at one
    end, not a change of speed, so then nothing is rescaled; the readings are kept
    (``anchor["readings"]``) and the check after the search starts its own estimate of the
    level from them (:mod:`autoprune.latency.level`)."""
    space = profiled_space(space)  # a composite's channel part: the table's units
    configs = {"dense": space.dense_config(), "thinnest": space.decode(np.zeros(space.dim))}
    nets = {k: space.apply(model, c).eval() for k, c in configs.items()}
    times: dict[str, list[float]] = {k: [] for k in nets}
    for _ in range(ANCHOR_ROUNDS):
        for k, net in nets.items():
            times[k].append(measure_latency(net, example, device=device, warmup=ANCHOR_WARMUP,
                                            repeats=ANCHOR_REPEATS).median_ms)
    rows = {k: {"predicted_ms": table.predict(configs[k]),
                "measured_ms": float(np.median(times[k]))} for k in nets}
    ratios = [r["measured_ms"] / r["predicted_ms"] for r in rows.values()]
    threshold = max(ANCHOR_MIN_DRIFT, float(table.check.get("limit", 0.0)))
    factor = common_drift(ratios, threshold)
    drifted = factor != 1.0
    anchor = {"speed": table.speed * factor, "factor": factor, "applied": drifted,
              "threshold": threshold, "ratios": {k: r for k, r in zip(rows, ratios)},
              "networks": rows}
    return (table.anchored(table.speed * factor, anchor) if drifted else table), anchor


def note_drift(table: LatencyTable, anchor: Mapping[str, Any], *, path: Path, cached: bool,
               console: Console) -> dict[str, float]:
    """Tell the user when the dense network runs far from the table's prediction (beyond
    :func:`stale_threshold`): whether the predictions were rescaled, and how to rebuild."""
    dense = anchor["networks"]["dense"]
    drift = float(anchor["ratios"]["dense"]) - 1
    if abs(drift) > stale_threshold(table):
        how = (f"delete {path} (the next search rebuilds it)" if cached else
               f"rebuild it with `autoprune profile ... -o {path}`")
        done = ("its predictions are rescaled to now" if anchor["applied"] else
                "not rescaled, since the dense and the thinnest network do not both show it "
                "beyond the table's own error")
        console.print(
            f"[yellow]note:[/] this machine runs {'slower' if drift > 0 else 'faster'} than when "
            f"the latency table was built ({100 * drift:+.1f}%: the dense network measures "
            f"{dense['measured_ms']:.2f} ms, the table said {dense['predicted_ms']:.2f}); "
            f"{done}. If this persists, {how}.", highlight=False)
    return {"predicted_ms": dense["predicted_ms"], "measured_ms": dense["measured_ms"],
            "drift": drift, "threshold": stale_threshold(table)}


def stale_threshold(table: LatencyTable) -> float:
    """How far the dense network's timing may stray from a table before the user is told:
    twice the table's margin and at least 25% (on a shared 2-core host, back-to-back readings
    of one network were seen 13.3 and 16.2 ms apart)."""
    return max(0.25, 2 * table.prediction_margin())
