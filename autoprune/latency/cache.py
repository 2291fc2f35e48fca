"""The latency table a search costs with: a given file, the cached one, or one built now and
cached (keyed by the device fingerprint and the model), and the check that a table read from
disk still matches this machine's speed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from autoprune.latency.device import DEVICE_MATCH_KEYS, Device
from autoprune.latency.build import ProfilePlan
from autoprune.latency.measure import measure_latency
from autoprune.latency.table import LatencyTable, LatencyTableError, model_signature
from autoprune.search_spaces import SearchSpace

__all__ = ["STALE_REPEATS", "STALE_WARMUP", "check_staleness", "stale_threshold",
           "table_cache_path", "table_for_search"]

# Timing of the dense network when a table is read from disk, to tell a stale one.
STALE_WARMUP = 5
STALE_REPEATS = 30


def table_cache_path(model: nn.Module, space: SearchSpace, device: Mapping[str, Any],
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


def table_for_search(model: nn.Module, example: torch.Tensor, space: SearchSpace, *,
                     lut: Path | None, cache_dir: Path, device: Device, console: Console,
                     plan: ProfilePlan | None = None) -> tuple[LatencyTable, dict[str, Any]]:
    """The table a latency search costs with: ``lut`` if given (refused if built for another
    device or model; built there if missing), else the cached one, else built now and cached.
    A table read from disk is checked against the dense network timed now (see
    :func:`check_staleness`)."""
    fingerprint = device.fingerprint(example)

    def loaded(table: LatencyTable, info: dict[str, Any]) -> tuple[LatencyTable, dict[str, Any]]:
        now = measure_latency(model, example, device=device, warmup=STALE_WARMUP,
                              repeats=STALE_REPEATS)
        info["dense_now"] = check_staleness(table, now.median_ms, path=Path(info["path"]),
                                            cached=info.get("cached", False), console=console)
        return table, info

    if lut is not None:
        path, cached = Path(lut), False
        if path.exists():
            table = LatencyTable.load(path, expected_device=fingerprint)
            table.check_space(space, source=f"latency table {path}")
            return loaded(table, {"path": str(path), "built": False})
    else:
        path, cached = table_cache_path(model, space, fingerprint, cache_dir), True
        if path.exists():
            try:
                table = LatencyTable.load(path, expected_device=fingerprint)
                table.check_space(space, source=f"cached latency table {path}")
            except LatencyTableError as err:  # our own cache: rebuild rather than fail
                console.print(f"[yellow]rebuilding the cached latency table:[/] {err}")
            else:
                return loaded(table, {"path": str(path), "built": False, "cached": True})
    where = "cached at" if cached else "written to"
    console.print(f"building the latency table for this device (once; {where} {path})")
    table = LatencyTable.build(model, example, space=space, device=device, plan=plan,
                               console=console)
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
    return max(0.25, 2 * table.prediction_margin())
