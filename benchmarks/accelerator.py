"""autoprune on one GPU: the main job, the GPU latency table, trials per minute and recovery.

Four measurements, printed as a table and written as JSON:

1. **The main job on the GPU**: README's ``autoprune search`` (VGG-11 on digits at 80 px) with
   ``--device cuda --backend cuda`` and a latency budget of half the dense network's GPU
   latency (``latency=50%``: 10 ms is no budget on a GPU): wall time, the chosen network's
   predicted and measured GPU latency, whether it met the budget, its validation accuracy.
2. **The GPU table's accuracy** on ResNet-20, MobileNet-V2 and VGG-11
   (``benchmarks/latency_model.py``'s measurement with ``--backends cuda``): the share of
   random pruned networks predicted within +-10% against the share the re-measurement of the
   same networks agrees within +-10%, and the median error.
3. **Trials per minute** of the same search (ResNet-20 on digits at 32 px, ``flops=50%``,
   random agent, the built-in evaluator) on the CPU and on the GPU, and their ratio.
4. **Recovery steps per second** (100 steps of the same pruned network) on the CPU and the GPU.

    python benchmarks/accelerator.py                 # on a GPU machine: under 5 minutes
    python benchmarks/accelerator.py --device cpu --quick   # the script itself, on a CPU

With ``--device cpu`` every GPU row runs on the CPU instead (backend torch): a check of the
script, not a GPU measurement. Writes benchmarks/results/accelerator[-cpu].json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from autoprune.api import allocate
from autoprune.latency.device import describe_device, resolve_clock
from autoprune.latency.roofline import RooflineCost
from autoprune.latency.table import ProfilePlan
from autoprune.placement import describe_compute, placed, resolve_device
from autoprune.recover import recover
from autoprune.search_spaces import make_space
from autoprune.zoo.tasks import load_task

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # latency_model.py, beside this file


def main_job(device: str, backend: str, trials: int, console: Console) -> dict[str, Any]:
    """README's main job, with the work and the latency on ``device`` / ``backend``."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "autoprune.cli", "search", "--target", "latency=50%",
                   "--device", device, "--backend", backend, "--trials", str(trials),
                   "--run-dir", str(Path(tmp) / "run"), "--json", "--no-progress"]
        started = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        seconds = time.perf_counter() - started
    if out.returncode not in (0, 1):  # 1: a latency budget missed when measured
        console.print(out.stderr[-3000:], markup=False, highlight=False)
        return {"command": " ".join(command[2:]), "error": out.stderr[-2000:],
                "seconds": seconds}
    summary = json.loads(out.stdout)
    latency = summary.get("latency", {})
    checked = latency.get("checked") or [{}]
    return {"command": " ".join(command[2:]), "seconds": round(seconds, 1),
            "limit_ms": latency.get("limit_ms"), "met": latency.get("met_when_measured"),
            "misses": latency.get("misses"), "chosen": checked[-1], "summary": summary}


def table_accuracy(models: list[str], backend: str, configs: int,
                   console: Console) -> list[dict[str, Any]]:
    """``latency_model.py``'s measurement of each model's table on ``backend``."""
    import latency_model as lm  # noqa: PLC0415 - beside this file (benchmarks/ is no package)

    clock = resolve_clock(None, 1, backend)
    settings = lm.Settings(models=tuple(models), configs=configs, warmup=3, repeats=15,
                           passes=4, threads=1, backend=backend, clock=clock, batch=1,
                           image_size=32, plan=ProfilePlan(), seed=1, out=Path(os.devnull))
    roof = RooflineCost.measure(threads=1, batch=1, clock="wall")
    rows = []
    for name in models:
        r = lm.run_model(name, settings, roof, console)
        rows.append({"model": name, "device": describe_device(r["device"]),
                     "table": r["scores"]["table"], "retest": r["scores"]["retest"],
                     "build_seconds": r["table_build_seconds"],
                     "dense_measured_ms": r["dense_measured_ms"],
                     "dense_predicted_ms": r["dense_predicted_ms"]})
    return rows


def trials_per_minute(device: str, trials: int) -> dict[str, Any]:
    """The same random search on ``device``: trials per minute of its loop."""
    task = load_task("resnet20", "digits", image_size=32, progress=False)
    evaluator = task.evaluator(calib_batches=16, seed=0)
    started = time.perf_counter()
    alloc = allocate(task.model, example_inputs=task.example_inputs(1), target="flops=50%",
                     evaluate=evaluator, agent="random", trials=trials, seed=0, device=device)
    seconds = time.perf_counter() - started
    return {"device": device, "trials": trials, "seconds": round(seconds, 2),
            "trials_per_minute": 60.0 * trials / seconds,
            "best_accuracy": alloc.metrics.get("accuracy")}


def recovery_rate(device: str, steps: int) -> dict[str, Any]:
    """Optimizer steps per second of recovering one pruned ResNet-20 on ``device``."""
    task = load_task("resnet20", "digits", image_size=32, progress=False)
    place = resolve_device(device)
    model = placed(task.model, device=place)
    space = make_space("channel", model, task.example_inputs(1).to(place), round_to=4)
    pruned = space.apply(model, space.decode([0.5] * space.dim))
    evaluator = task.evaluator(calib_batches=4, seed=0)
    if place.type == "cuda":
        torch.cuda.synchronize(place)
    started = time.perf_counter()
    rec = recover(pruned, data=task.data, steps=steps, evaluate=evaluator, seed=0)
    if place.type == "cuda":
        torch.cuda.synchronize(place)
    seconds = time.perf_counter() - started
    return {"device": device, "steps": steps, "seconds": round(seconds, 2),
            "steps_per_second": steps / seconds,
            "accuracy_before": rec.before.get("accuracy"),
            "accuracy_after": rec.after.get("accuracy")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--device", default="cuda",
                    help="the GPU (cuda, cuda:N); cpu runs the script on the CPU as a check")
    ap.add_argument("--quick", action="store_true",
                    help="fewer trials and networks (a check of the script)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    console = Console()
    console.width = max(console.width, 140)
    try:
        place = resolve_device(args.device)
    except Exception as err:  # noqa: BLE001 - no GPU here: say so, in one line
        ap.exit(2, f"accelerator.py: {err}\n")
    gpu = place.type == "cuda"
    device, backend = str(place), ("cuda" if gpu else "torch")
    trials = 8 if args.quick else 30
    out = args.out or RESULTS / f"accelerator{'' if gpu else '-cpu'}.json"
    started = time.perf_counter()
    console.print(f"[bold]autoprune on {describe_compute(place)}[/] (latency backend {backend})")
    result: dict[str, Any] = {"device": describe_compute(place), "backend": backend,
                              "torch": torch.__version__, "quick": args.quick}

    def save() -> None:
        result["seconds"] = round(time.perf_counter() - started, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    console.print("1/4 the main job")
    result["main_job"] = main_job(device, backend, 6 if args.quick else 20, console)
    save()
    console.print("2/4 the GPU latency table" if gpu else "2/4 the latency table")
    models = ["resnet20"] if args.quick else ["resnet20", "mobilenetv2", "vgg11"]
    result["tables"] = table_accuracy(models, backend, 8 if args.quick else 20, console)
    save()
    console.print("3/4 trials per minute")
    result["trials"] = [trials_per_minute("cpu", trials)] + (
        [trials_per_minute(device, trials)] if gpu else [])
    save()
    console.print("4/4 recovery")
    steps = 20 if args.quick else 100
    result["recovery"] = [recovery_rate("cpu", steps)] + (
        [recovery_rate(device, steps)] if gpu else [])
    save()
    console.print(report(result))
    console.print(f"wrote {out} in {result['seconds']}s")


def report(result: dict[str, Any]) -> Table:
    table = Table(title=f"autoprune on {result['device']} (latency backend {result['backend']})")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    job = result["main_job"]
    if "error" in job:
        table.add_row("main job", f"failed: {job['error'][-80:]}")
    else:
        chosen = job.get("chosen") or {}
        table.add_row("main job (latency=50%): wall s", f"{job['seconds']:.0f}")
        table.add_row("  budget ms; chosen: predicted / measured ms",
                      f"{job.get('limit_ms') or float('nan'):.3f}; "
                      f"{chosen.get('predicted_ms', float('nan')):.3f} / "
                      f"{chosen.get('latency_ms', float('nan')):.3f}")
        table.add_row("  met when measured (misses)", f"{job.get('met')} ({job.get('misses')})")
    for t in result["tables"]:
        table.add_row(f"table {t['model']}: within +-10% (re-measurement)",
                      f"{100 * t['table']['within_10pct']:.0f}% "
                      f"({100 * t['retest']['within_10pct']:.0f}%), median "
                      f"{t['table']['median_abs_pct']:.1f}%")
    for r in result["trials"]:
        table.add_row(f"trials per minute, {r['device']}", f"{r['trials_per_minute']:.1f}")
    if len(result["trials"]) == 2:
        table.add_row("  GPU / CPU", f"{result['trials'][1]['trials_per_minute'] / result['trials'][0]['trials_per_minute']:.2f}x")
    for r in result["recovery"]:
        table.add_row(f"recovery steps per second, {r['device']}", f"{r['steps_per_second']:.1f}")
    if len(result["recovery"]) == 2:
        table.add_row("  GPU / CPU", f"{result['recovery'][1]['steps_per_second'] / result['recovery'][0]['steps_per_second']:.2f}x")
    return table


if __name__ == "__main__":
    main()
