"""``autoprune profile`` (build a latency table for a zoo model on this machine) and
``autoprune latency`` (measure a network here, dense or a run's choice)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from autoprune.latency.measure import measure_latency
from autoprune.latency.table import LatencyTable
from autoprune.run_folder import read_choice, rebuild_choice
from autoprune.search_spaces import make_space
from autoprune.settings import LatencySettings, ModelSource, ProfileSettings
from autoprune.zoo.tasks import zoo_architecture

__all__ = ["export_profile", "latency", "profile", "profile_from_timings", "table_summary"]


def _zoo_model(source: ModelSource) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return zoo_architecture(source.model, source.data, image_size=source.image_size,
                            width_mult=source.width_mult, model_args=source.model_args,
                            weights=source.weights, input_shape=source.input_shape)


def profile(settings: ProfileSettings, *, console: Console | None = None) -> dict[str, Any]:
    """Build a latency table for a zoo model on this machine, save it, return its summary."""
    console = console or Console(stderr=True)
    model, example = _zoo_model(settings.source)
    space = make_space(settings.space.space, model, example, round_to=settings.space.round_to,
                       min_ratio=settings.space.min_ratio)
    table = LatencyTable.build(model, example, space=space, device=settings.device,
                               plan=settings.plan, console=console)
    path = table.save(settings.output)
    return table_summary(table, path)


def export_profile(settings: ProfileSettings, folder: Path, *,
                   console: Console | None = None) -> dict[str, Any]:
    """Write what another device must time for a zoo model's table into ``folder``
    (:func:`autoprune.latency.remote.export_for_device`); return its summary."""
    from autoprune.latency.remote import export_for_device

    console = console or Console(stderr=True)
    if settings.device.on_gpu:
        raise ValueError(f"--export-to writes ONNX networks for onnxruntime on the device's "
                         f"CPU; --backend {settings.device.backend} does not apply. Fix: leave "
                         "out --backend (or give onnxruntime)")
    model, example = _zoo_model(settings.source)
    space = make_space(settings.space.space, model, example, round_to=settings.space.round_to,
                       min_ratio=settings.space.min_ratio)
    return export_for_device(model, example, folder, space=space,
                             threads=settings.device.threads, batch=settings.device.batch,
                             plan=settings.plan, console=console)


def profile_from_timings(folder: Path, output: Path) -> dict[str, Any]:
    """Build the table of an export from the timings its device wrote, save it at
    ``output``, return its summary."""
    from autoprune.latency.remote import table_from_timings

    table = table_from_timings(folder)
    return table_summary(table, table.save(output))


def table_summary(table: LatencyTable, path: Path | None = None) -> dict[str, Any]:
    corr = table.correction
    return {"path": str(path) if path else None, "device": table.device,
            "model": table.model, "layers": len(table.layers), "blocks": len(table.entries),
            "grid_points": sum(e.ms.size for e in table.entries),
            "build_seconds": round(table.build_seconds, 2),
            "correction": {"offset_ms": corr["offset_ms"], "scale": corr["scale"],
                           "loo_median_abs_pct": round(100 * corr.get("loo_median_abs_rel", 0), 2),
                           "loo_max_abs_pct": round(100 * corr.get("loo_max_abs_rel", 0), 2),
                           "points": len(corr.get("points", [])),
                           "memory": corr.get("memory")},
            "check": {k: v for k, v in table.check.items() if k != "points"},
            "dense_predicted_ms": round(table.predict({}), 4)}


def latency(settings: LatencySettings) -> dict[str, Any]:
    """Measure a network on this machine: ``{"median_ms", "p10_ms", "p90_ms", "device"}``, plus
    ``predicted_ms`` when a table is given and ``network`` saying what was timed."""
    if settings.config is not None:
        model, dense, example, what = _configured(settings.config)
    else:
        model, example = _zoo_model(settings.source)
        dense, what = model, {"model": settings.source.model, "config": "dense"}
    table = None
    if settings.lut is not None:  # refuse a foreign table before spending time measuring
        table = LatencyTable.load(settings.lut)
        if table.remote:
            raise ValueError(
                f"latency table {settings.lut} was timed on another device "
                f"({table.remote_note()}), and `autoprune latency` times on this machine. "
                "Fix: export the network (autoprune export RUN -o chosen.onnx) and time it "
                "there: python time_on_device.py --model chosen.onnx --reference")
        table.check_device(settings.device.fingerprint(example),
                           source=f"latency table {settings.lut}")
        space = make_space("channel", dense, example,
                           round_to=int(table.space.get("round_to", 8)),
                           min_ratio=table.space.get("min_ratio", 0.2))
        table.check_space(space, source=f"latency table {settings.lut}")
    m = measure_latency(model, example, device=settings.device, warmup=settings.warmup,
                        repeats=settings.repeats)
    out = m.to_json()
    out["wall_median_ms"] = round(m.wall_median_ms, 4)
    if table is not None:
        out["predicted_ms"] = round(table.predict(what.get("units", {})), 4)
    out["network"] = what
    return out


def _configured(path: Path) -> tuple[nn.Module, nn.Module, torch.Tensor, dict[str, Any]]:
    """The network a run's ``best.json`` describes (its pruned weights when they are there)."""
    choice, path = read_choice(path)
    model, dense, example = rebuild_choice(choice, path.parent)
    return model.eval(), dense, example, {
        "model": choice["model_spec"].get("name"), "config": str(path),
        "units": {k: int(v) for k, v in choice["config"].items()}}
