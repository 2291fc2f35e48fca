"""The device round trip of ``latency_model.py`` (its ``device`` backend): a table made through
``autoprune profile --export-to`` / ``--from-timings`` on a second "device" -- onnxruntime in a
separate virtual environment without torch, at another thread count -- scored on networks
timed on that device the same way (exported, timed by ``time_on_device.py`` in interleaved
rounds, the even rounds against the odd for the re-measurement). The export's own whole
networks are timed again beside them, and the ``table`` column is the table's prediction times
their median ratio (now against the export's timings): the device's level then, the check a
user makes with ``time_on_device.py --model chosen.onnx --reference``; ``table_built`` is the
table as built.

The device's environment is a virtual environment with numpy and onnxruntime (the versions of
this one) and nothing else, made once in ``--device-venv`` (default
``~/.cache/autoprune/device-venv``) with pip.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from latency_scoring import (MAX_PASSES_FACTOR, MEASURE_NOISE, configs_for, load,
                             online_predictions, scores)
from autoprune.latency.device import Device
from autoprune.latency.remote import export_for_device, export_networks, table_from_timings
from autoprune.search_spaces import make_space
from autoprune.zoo.models import available_models
from autoprune.zoo.tasks import zoo_architecture

__all__ = ["DEFAULT_VENV", "device_python", "run_model_device"]

DEFAULT_VENV = Path.home() / ".cache" / "autoprune" / "device-venv"


def device_python(venv: Path, console: Console) -> Path:
    """The Python of a virtual environment with numpy and onnxruntime only (made when
    missing, with this environment's versions); checked to lack torch."""
    import numpy
    import onnxruntime

    python = venv / "bin" / "python"
    if not python.exists():
        console.print(f"making the device's environment {venv} (numpy {numpy.__version__}, "
                      f"onnxruntime {onnxruntime.__version__}; no torch)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        f"numpy=={numpy.__version__}",
                        f"onnxruntime=={onnxruntime.__version__}"], check=True)
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        raise SystemExit(f"{venv} has torch: the device's environment must not; remove it")
    return python


def _time(python: Path, folder: Path, threads: int, rounds: int | None = None) -> dict[str, Any]:
    """Run the export's ``time_on_device.py`` on the device; its timings."""
    args = [str(python), str(folder / "time_on_device.py"), "--threads", str(threads)]
    if rounds is not None:
        args += ["--rounds", str(rounds)]
    out = subprocess.run(args, cwd=folder, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"time_on_device.py failed: {out.stderr[-2000:]}")
    return json.loads((folder / "timings.json").read_text())


def run_model_device(name: str, s: Any, python: Path, threads: int,
                     console: Console) -> dict[str, Any]:
    """One model's table made on the device and scored there (the fields of
    ``latency_model.run_model``'s rows that apply)."""
    torch.manual_seed(0)
    data = "python-stdlib" if name in available_models("text") else "digits"
    model, example = zoo_architecture(name, data, image_size=s.image_size)
    x = Device(batch=s.batch).inputs(example)[0]
    space = make_space("channel", model, x[:1])
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="autoprune-device-") as tmp:
        started = time.perf_counter()
        export = Path(tmp) / "export"
        summary = export_for_device(model, x, export, space=space, threads=threads,
                                    batch=s.batch, plan=replace(s.plan, seed=s.seed),
                                    console=console, progress=False)
        exported_s = time.perf_counter() - started
        timed = _time(python, export, threads)
        table = table_from_timings(export)
        console.print(f"{name} on the device: exported {summary['blocks']} blocks and "
                      f"{summary['networks']} networks in {exported_s:.0f}s, timed in "
                      f"{timed['seconds']:.0f}s; {table.check_text()}")
        rng = np.random.default_rng(s.seed)
        configs = [space.dense_config()] + configs_for(space, s.configs, rng)
        # the export's own whole networks, timed again beside the measured ones: the level of
        # the device now against when the export was timed, as ``time_on_device.py --model
        # chosen.onnx --reference`` gives a user checking the chosen network there
        refs = json.loads((export / "manifest.json").read_text())["networks"]
        nets = Path(tmp) / "measure"
        export_networks([space.apply(model, c).eval() for c in
                         configs + [r["config"] for r in refs]], x, nets,
                        threads=threads, batch=s.batch, warmup=s.warmup, repeats=s.repeats,
                        rounds=s.passes)
        started = time.perf_counter()
        # timed again, ``s.passes`` more rounds at a time, while the halves disagree (as
        # ``latency_model.measure_all`` does here)
        runs: list[dict[str, Any]] = []
        while True:
            runs.append(_time(python, nets, threads)["samples_ms"])
            rounds = [np.asarray([v for run in runs for v in run[f"n{i}"]]).reshape(
                -1, s.repeats) for i in range(len(configs))]
            halves = [np.median(r[0::2]) / np.median(r[1::2]) - 1.0 for r in rounds[1:]]
            if (np.median(np.abs(halves)) <= MEASURE_NOISE
                    or len(runs) + 1 > MAX_PASSES_FACTOR):
                break
        seconds = time.perf_counter() - started
    then = np.array([np.median(timed["samples_ms"][r["id"]]) for r in refs])
    now = np.array([np.median([v for run in runs for v in run[f"n{len(configs) + j}"]])
                    for j in range(len(refs))])
    ratios = now / then
    level = float(np.median(ratios))
    # (an alternative level: now = a + b * then, fitted on the same networks)
    slope, offset = np.polyfit(then, now, 1)
    samples = rounds
    a = np.array([np.median(r[0::2]) for r in samples])
    b = np.array([np.median(r[1::2]) for r in samples])
    meas = np.array([np.median(r) for r in samples])
    pred_built = np.array([table.predict(c) for c in configs])
    pred = pred_built * level  # levelled by the export's networks timed beside them
    pred_affine = offset + slope * pred_built
    pred_online = online_predictions(pred_built, meas, rng)
    ev = slice(1, None)
    return {
        "model": name, "backend": "device",
        "label": f"{name} (device: onnxruntime, {threads} threads)",
        "units": space.dim, "n": len(configs) - 1, "device": table.device,
        "table_build_seconds": round(exported_s + float(timed["seconds"]), 1),
        "table_blocks": len(table.entries),
        "table_grid_points": int(sum(e.ms.size for e in table.entries)),
        "table_loo_median_pct": 100 * table.correction["loo_median_abs_rel"],
        "table_check": {k: v for k, v in table.check.items() if k != "points"},
        "table_first_attempt": None, "table_second_attempt": None,
        "measure_seconds": round(seconds, 1), "measure_passes": len(runs) * s.passes,
        "load_before": load_before, "load_after": load(),
        "dense_measured_ms": float(meas[0]), "dense_predicted_ms": float(pred_built[0]),
        "anchor": {"factor": round(level, 4), "networks": len(refs),
                   "ratios": [round(float(r), 4) for r in ratios],
                   "export_ms": [round(float(v), 5) for v in then],
                   "now_ms": [round(float(v), 5) for v in now],
                   "affine": [round(float(offset), 5), round(float(slope), 5)]},
        "scores": {"table": scores(pred[ev], meas[ev]),
                   "table_online": scores(pred_online[ev], meas[ev]),
                   "table_built": scores(pred_built[ev], meas[ev]),
                   "table_affine": scores(pred_affine[ev], meas[ev]),
                   "retest": scores(a[ev], b[ev])},
        "rows": [{"config": c, "measured_ms": float(v), "pass_a_ms": float(pa),
                  "pass_b_ms": float(pb), "table_ms": float(p), "table_built_ms": float(q),
                  "table_online_ms": float(o)}
                 for c, v, pa, pb, p, q, o in zip(configs, meas, a, b, pred, pred_built,
                                                  pred_online)],
    }
