"""Latency tables measured on another device: export what the device must time, time it
there with a standalone script, and build the table from the timings brought back.

    autoprune profile --model M --export-to DIR        # here: ONNX blocks and networks
    python DIR/time_on_device.py                       # there: numpy + onnxruntime only
    autoprune profile --from-timings DIR -o lut.json   # here: the table, with its check

The export holds exactly what a build here times (:meth:`LatencyTable.build`): every distinct
block at every grid point, the whole networks the correction is fitted on and those it is
checked on, with the layer-to-entry map and the sums' terms of each whole network, so the
table is assembled from the timings with the same fit and the same held-out check as a local
build, without the model. The device's timings carry its own description (CPU, onnxruntime
version, execution provider, threads, clock); a table built from them is marked as measured on
that device (``device["measured_on"] == "device"``): a search predicts with it and says so,
and never times a network here against it. The format of the files is
``docs/device-timings.md``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from autoprune.latency.build import block_module, grid_points, profiled_space, table_blocks
from autoprune.latency.correction import calibration_configs, holdout_configs
from autoprune.latency.device import Device, as_inputs
from autoprune.latency.measure import export_onnx
from autoprune.latency.table import (LatencyTable, LatencyTableError, model_info, plan_info,
                                     space_info)
from autoprune.placement import on_cpu
from autoprune.search_spaces import SearchSpace, make_space
from autoprune.settings import ProfilePlan

__all__ = ["MANIFEST_FORMAT", "SCRIPT", "TIMINGS_FORMAT", "export_for_device",
           "export_networks", "table_from_timings"]

MANIFEST_FORMAT = "autoprune-device-export"
TIMINGS_FORMAT = "autoprune-device-timings"
FORMAT_VERSION = 1
#: Interleaved rounds a device times an export in (a build here: ``ProfilePlan.rounds``, 3).
#: A round of MobileNet-V2 at 32 px takes onnxruntime about a second on this project's host,
#: whose speed moves by 10-40% in phases of seconds to tens of seconds: three rounds sample one
#: phase. Over three alternating trials on one export, 12 rounds predicted 11 networks timed
#: right after within a median 4.5%, 15.6% and 4.0%; 3 rounds 19.2%, 8.9% and 10.2%.
DEVICE_ROUNDS = 9
#: The standalone timing script copied into every export.
SCRIPT = Path(__file__).with_name("time_on_device.py")


def _describe_inputs(inputs: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    out = []
    for i, x in enumerate(inputs):
        spec: dict[str, Any] = {"name": f"input{i}", "shape": list(x.shape),
                                "dtype": str(x.detach().cpu().numpy().dtype)}
        if not x.is_floating_point():
            spec["high"] = max(1, int(x.max()) + 1) if x.numel() else 1
        out.append(spec)
    return out


def _network_item(net: nn.Module, inputs: tuple[torch.Tensor, ...], folder: Path, ident: str,
                  role: str, warmup: int, repeats: int) -> dict[str, Any]:
    """Write one whole network as ONNX; its manifest item."""
    name = f"networks/{ident}.onnx"
    (folder / name).write_bytes(export_onnx(on_cpu(net), inputs))
    return {"id": ident, "file": name, "kind": "network", "role": role, "warmup": warmup,
            "repeats": repeats, "inputs": _describe_inputs(inputs)}


def export_networks(nets: Sequence[nn.Module], example_inputs: torch.Tensor |
                    Sequence[torch.Tensor], folder: str | Path, *, threads: int = 1,
                    batch: int = 1, warmup: int = 3, repeats: int = 15,
                    rounds: int = 6) -> str:
    """Write ``nets`` for the device to time in ``rounds`` interleaved rounds (an export
    without blocks: ``time_on_device.py`` times it the same way), network ``i`` as item
    ``n{i}``; returns the export's id. How a benchmark measures networks on the device."""
    folder = Path(folder)
    (folder / "networks").mkdir(parents=True, exist_ok=True)
    inputs = tuple(x.cpu() for x in Device(batch=batch).inputs(as_inputs(example_inputs)))
    with torch.no_grad():
        items = [_network_item(net, inputs, folder, f"n{i}", "measure", warmup, repeats)
                 for i, net in enumerate(nets)]
    manifest = {"format": MANIFEST_FORMAT, "version": FORMAT_VERSION,
                "export_id": secrets.token_hex(8),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runtime": "onnxruntime",
                "threads": int(threads), "batch": int(batch), "rounds": int(rounds),
                "items": items, "networks": []}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.copyfile(SCRIPT, folder / SCRIPT.name)
    return manifest["export_id"]


def export_for_device(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                      folder: str | Path, *, space: SearchSpace | None = None,
                      threads: int = 1, batch: int = 1, plan: ProfilePlan | None = None,
                      rounds: int = DEVICE_ROUNDS, console: Console | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Write into ``folder`` (new or empty) everything a device must time for ``model``'s
    latency table: its blocks and whole networks as ONNX, ``manifest.json`` and
    ``time_on_device.py``. ``threads`` is the thread count the device times with unless told
    otherwise there; ``batch`` the batch the latency is for; ``rounds`` how many interleaved
    rounds it times (``DEVICE_ROUNDS``; ``plan``'s rounds are for builds here). Returns a
    summary."""
    plan = plan or ProfilePlan()
    console = console or Console(stderr=True)
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"--export-to {folder}: the folder exists and is not empty. Fix: "
                         "name a new or empty folder (an export is one set of files the device "
                         "times together)")
    if threads < 1 or batch < 1 or rounds < 1:
        raise ValueError(f"threads, batch and rounds must be at least 1 (got {threads}, {batch}, "
                         f"{rounds})")
    started = time.perf_counter()
    inputs = tuple(x.cpu() for x in Device(batch=batch).inputs(as_inputs(example_inputs)))
    one = tuple(x[:1] for x in inputs)
    model = on_cpu(model).eval()
    space = profiled_space(space or make_space("channel", model, one))
    specs, layers = table_blocks(model, one, space, plan.grid)
    rng = np.random.default_rng(plan.seed)
    configs = calibration_configs(space, plan.calibration, rng)
    held = holdout_configs(space, plan.holdout, rng, exclude=configs)
    skeleton = LatencyTable.skeleton(
        device={}, model=model_info(model, space), space=space_info(space),
        blocks=[(op, ig, og) for _, _, op, ig, og in specs], layers=layers,
        plan=plan_info(plan))
    points = [(e, k, ci, co) for e, spec in enumerate(specs)
              for k, (ci, co) in enumerate(grid_points(spec))]
    (folder / "blocks").mkdir(parents=True, exist_ok=True)
    (folder / "networks").mkdir(exist_ok=True)
    items: list[dict[str, Any]] = []
    bar = Progress(TextColumn("[bold]export"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, disable=not progress)
    with bar, torch.no_grad():
        task = bar.add_task("export", total=len(points) + len(configs) + len(held))
        for e, k, ci, co in points:
            block, x = block_module(specs[e], ci, co, batch)
            name = f"blocks/b{e}-{k}.onnx"
            (folder / name).write_bytes(export_onnx(block, (x,)))
            items.append({"id": f"b{e}-{k}", "file": name, "kind": "block", "entry": e,
                          "point": k, "warmup": plan.warmup, "repeats": plan.repeats,
                          "inputs": _describe_inputs((x,))})
            bar.advance(task)
        networks: list[dict[str, Any]] = []
        for role, group in (("calibration", configs), ("holdout", held)):
            for i, config in enumerate(group):
                ident = f"{role[0]}{i}"
                items.append(_network_item(space.apply(model, config).eval(), inputs, folder,
                                           ident, role, plan.net_warmup, plan.net_repeats))
                networks.append({"id": ident, "role": role, "config": dict(config),
                                 **({"terms": skeleton.terms(space.layer_table(config))}
                                    if role == "calibration" else {})})
                bar.advance(task)
    shape = [list(x.shape[1:]) for x in inputs]
    manifest = {"format": MANIFEST_FORMAT, "version": FORMAT_VERSION,
                "export_id": secrets.token_hex(8),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runtime": "onnxruntime",
                "threads": int(threads), "batch": int(batch),
                "input_shape": [batch, *shape[0]] if len(shape) == 1 else
                [[batch, *s] for s in shape],
                "rounds": int(rounds), "items": items, "networks": networks,
                "table": {k: v for k, v in skeleton.to_json().items()
                          if k in ("model", "space", "plan", "entries", "layers")}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.copyfile(SCRIPT, folder / SCRIPT.name)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"path": str(folder), "export_id": manifest["export_id"], "blocks": len(points),
            "entries": len(specs), "layers": len(layers), "networks": len(networks),
            "megabytes": round(size / 1e6, 2), "seconds": round(time.perf_counter() - started, 2),
            "threads": threads, "batch": batch}


def _read(path: Path, what: str, fix: str) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise LatencyTableError(f"{path} does not exist. {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LatencyTableError(f"{path} is not readable {what} ({err}). {fix}") from None
    if not isinstance(raw, dict):
        raise LatencyTableError(f"{path} is not {what}. {fix}")
    return raw


def table_from_timings(folder: str | Path, timings: str | Path | None = None) -> LatencyTable:
    """The latency table of the export in ``folder``, from the device's ``timings`` (default
    ``folder/timings.json``): the same fit and held-out check as a build here. Timings of
    another export, or missing a network, are refused."""
    folder = Path(folder)
    timings = Path(timings) if timings else folder / "timings.json"
    manifest = _read(folder / "manifest.json", "an autoprune device export",
                     "Fix: pass the folder `autoprune profile --export-to` wrote.")
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise LatencyTableError(f"{folder / 'manifest.json'} is not an autoprune device export "
                                f"of version {FORMAT_VERSION}. Fix: export it again with this "
                                "autoprune (autoprune profile --export-to)")
    timed = _read(timings, "device timings",
                  f"Fix: time the export on the device first: python {folder}/time_on_device.py, "
                  "then copy its timings.json into this folder.")
    if timed.get("format") != TIMINGS_FORMAT or timed.get("version") != FORMAT_VERSION:
        raise LatencyTableError(f"{timings} is not device timings of version "
                                f"{FORMAT_VERSION} (time_on_device.py writes them)")
    if timed.get("export_id") != manifest["export_id"]:
        raise LatencyTableError(
            f"{timings} holds timings of another export (export {timed.get('export_id')!r}; "
            f"this folder is export {manifest['export_id']!r}). Fix: time this folder's "
            f"export on the device (python {folder}/time_on_device.py) and bring back the "
            "timings.json it writes")
    samples = timed.get("samples_ms") or {}
    missing = [i["id"] for i in manifest["items"] if not samples.get(i["id"])]
    if missing:
        raise LatencyTableError(
            f"{timings} has no timings for {len(missing)} of the export's "
            f"{len(manifest['items'])} networks (first: {missing[:3]}). Fix: let "
            "time_on_device.py finish on the device, then bring back its timings.json")
    device = dict(timed.get("device") or {})
    if not {"backend", "threads", "clock"} <= set(device):
        raise LatencyTableError(f"{timings} does not say which device it was measured on")
    device.update({"batch": manifest["batch"], "input_shape": manifest["input_shape"],
                   "measured_on": "device", "export_id": manifest["export_id"]})
    raw = {**manifest["table"], "device": device,
           "correction": {"offset_ms": 0.0, "scale": 1.0}}
    skeleton = LatencyTable._from_json(raw)
    ms = [np.zeros_like(e.ms) for e in skeleton.entries]
    for item in manifest["items"]:
        if item["kind"] == "block":
            ms[item["entry"]].flat[item["point"]] = float(np.median(samples[item["id"]]))
    calib = [n for n in manifest["networks"] if n["role"] == "calibration"]
    held = [n for n in manifest["networks"] if n["role"] == "holdout"]
    seconds = float(timed.get("seconds", 0.0))

    def of(group: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
        return [np.asarray(samples[n["id"]], dtype=float) for n in group]

    table = skeleton.assembled(ms, [n["terms"] for n in calib], [n["config"] for n in calib],
                               of(calib), [n["config"] for n in held], of(held),
                               seconds=seconds)
    table.correction["device_timings"] = {"path": str(timings), "rounds": timed.get("rounds"),
                                          "created": timed.get("created"),
                                          "seconds": seconds}
    return table
