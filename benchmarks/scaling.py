"""Scaling: trials per minute of the same search with the local executor and with Ray at 1 and
2 workers, and Ray's fixed start-up cost.

The search: zoo ResNet-20 trained on digits (``load_or_train_baseline``, cached), FLOPs budget
50% of dense, random agent with a fixed seed, the same number of trials, the same evaluator
(adaptive BN, validation accuracy), through the real loop (``autoprune.session.run_search``) into
an in-memory study. The random agent's proposals do not depend on results, so every run
evaluates exactly the same configurations (checked).

Columns: wall time of the whole search; Ray's fixed cost (``ray.init`` of a fresh local Ray,
plus Tune's set-up until every worker runs a trial: each worker process starts and imports
torch); trials per minute in steady state (trials that ended after every worker was running /
time from then to the last one's end; for the local executor, evaluated trials / wall); end to
end (trials / wall including the fixed cost); speed-up of steady-state trials per minute
against Ray with 1 worker. Medians over
``--repeats``. Every trial pins torch to one thread (as do the Ray workers); the local run does
too, so a worker is one core in every column.

    python benchmarks/scaling.py --quick      # 16x16 inputs, 8 trials, 1 repeat: ~2 minutes
    python benchmarks/scaling.py              # 32x32, 40 trials, 3 repeats: ~15 min (quiet host)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from autoprune.agents import make_agent
from autoprune.zoo.evaluate import ClassificationEvaluator
from autoprune.executors import Executor, LocalExecutor
from autoprune.session import run_search
from autoprune.problem import PruningProblem, build_problem
from autoprune.search_spaces import make_space
from autoprune.study import StudyStore, TrialRecord
from autoprune.targets import parse_targets
from autoprune.zoo.train import load_or_train_baseline

__all__ = ["QUICK", "ScalingSettings", "main", "run_scaling", "scaling_table"]


@dataclass(frozen=True, kw_only=True)
class ScalingSettings:
    model: str = "resnet20"
    data: str = "digits"
    image_size: int = 32
    target: str = "flops=50%"
    agent: str = "random"
    seed: int = 0
    trials: int = 40
    repeats: int = 3
    calib_batches: int = 16
    ray_workers: tuple[int, ...] = (1, 2)


QUICK = ScalingSettings(image_size=16, trials=8, repeats=1, calib_batches=4)


def _one_run(settings: ScalingSettings, problem: PruningProblem, model: torch.nn.Module,
             evaluator: ClassificationEvaluator, executor: Executor) -> dict[str, Any]:
    agent = make_agent(settings.agent, problem.space.dim, seed=settings.seed)
    t0 = time.perf_counter()
    executor.start()
    startup = time.perf_counter() - t0
    cpu0 = _cpu_seconds()
    try:
        records = run_search(problem, model=model, evaluate=evaluator, agent=agent,
                             trials=settings.trials, store=StudyStore.in_memory(),
                             executor=executor, progress=False)
        cpu = {k: v - cpu0.get(k, 0.0) for k, v in _cpu_seconds().items()}
    finally:
        executor.close()
    wall = time.perf_counter() - t0
    evaluated = records  # a repeated configuration is told its known result, not a trial
    timings = getattr(executor, "timings", {})
    if timings:  # Ray: steady state once every worker runs a trial, to the last one's end
        fixed = startup + timings["to_all_workers_s"]
        steady = 60.0 * timings["steady_trials"] / max(timings["steady_span_s"], 1e-9)
    else:
        fixed, steady = 0.0, 60.0 * len(evaluated) / wall
    return {"wall_s": wall, "fixed_s": fixed, "ray_init_s": startup if timings else 0.0,
            "trials": len(records), "evaluated": len(evaluated),
            "failed": sum(r.failed for r in records),
            "trials_per_min": steady, "end_to_end_per_min": 60.0 * len(records) / wall,
            "cpu_s_per_trial": {k: v / max(1, len(records)) for k, v in cpu.items()},
            "configs": sorted(_key(r) for r in records)}


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process (``driver``: for the local executor
    it runs the trials too) and of its live descendants: Ray's trial actors (``workers``) and
    everything else Ray runs (``ray_other``: raylet, GCS, agents, idle workers). Linux /proc;
    empty elsewhere."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    procs: dict[int, tuple[int, float, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        procs[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick,
                                        cmd)
    me = os.getpid()
    out = {"driver": time.process_time(), "workers": 0.0, "ray_other": 0.0}
    if not procs:
        return {"driver": out["driver"]}
    family = {me}
    for _ in range(4):  # driver -> raylet -> workers (and agents): a few generations
        family |= {pid for pid, (ppid, _, _) in procs.items() if ppid in family}
    for pid in family - {me}:
        _, seconds, cmd = procs[pid]
        out["workers" if cmd.startswith("ray::TrialActor") else "ray_other"] += seconds
    return out


def _key(r: TrialRecord) -> str:
    return json.dumps(dict(r.config), sort_keys=True)


def run_scaling(settings: ScalingSettings, *, console: Console) -> dict[str, Any]:
    # One thread per worker everywhere: this process runs the local executor's trials.
    torch.set_num_threads(1)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from autoprune.executors.ray_tune import RayExecutor  # ray only for this benchmark's Ray rows

    model, data, _ = load_or_train_baseline(settings.model, settings.data,
                                            image_size=settings.image_size, progress=False)
    space = make_space("channel", model, data.example_inputs(1))
    problem = build_problem(space, parse_targets(settings.target))
    evaluator = ClassificationEvaluator(data, calib_batches=settings.calib_batches,
                                        seed=settings.seed)
    kinds: list[tuple[str, int]] = [("local", 1)] + [("ray", w) for w in settings.ray_workers]
    runs: dict[str, list[dict[str, Any]]] = {f"{k}-{w}": [] for k, w in kinds}
    for rep in range(settings.repeats):  # interleaved, so drifting load hits every row alike
        for kind, workers in kinds:
            ex: Executor = LocalExecutor() if kind == "local" else RayExecutor(workers=workers)
            run = _one_run(settings, problem, model, evaluator, ex)
            runs[f"{kind}-{workers}"].append(run)
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in run["cpu_s_per_trial"].items())
            console.print(f"repeat {rep + 1}/{settings.repeats} {kind} x{workers}: "
                          f"{run['trials']} trials in {run['wall_s']:.1f}s, "
                          f"{run['trials_per_min']:.1f}/min steady, fixed {run['fixed_s']:.1f}s; "
                          f"CPU s per trial: {cpu}")
    configs = {tuple(r["configs"]) for rs in runs.values() for r in rs}
    rows = {}
    for name, rs in runs.items():
        rows[name] = {k: statistics.median(r[k] for r in rs)
                      for k in ("wall_s", "fixed_s", "ray_init_s", "trials_per_min",
                                "end_to_end_per_min", "trials", "evaluated", "failed")}
        rows[name]["repeats"] = [{k: v for k, v in r.items() if k != "configs"} for r in rs]
    base = rows.get("ray-1", {}).get("trials_per_min")
    for row in rows.values():
        row["speedup_vs_ray_1"] = row["trials_per_min"] / base if base else None
    return {"settings": asdict(settings), "same_configurations": len(configs) == 1,
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "load_average": list(os.getloadavg()),
                        "torch": torch.__version__, "ray": _ray_version()},
            "rows": rows}


def _ray_version() -> str:
    import ray

    return ray.__version__


def scaling_table(result: dict[str, Any]) -> Table:
    s = result["settings"]
    table = Table(title=f"scaling: {s['model']} on {s['data']} ({s['image_size']}px), "
                        f"{s['target']}, {s['agent']} agent, {s['trials']} trials, median of "
                        f"{s['repeats']}")
    for col in ("executor", "workers", "wall s", "fixed start-up s", "trials/min (steady)",
                "trials/min (end to end)", "speed-up vs ray x1"):
        table.add_column(col, justify="right")
    for name, row in result["rows"].items():
        kind, workers = name.rsplit("-", 1)
        sp = row["speedup_vs_ray_1"]
        table.add_row(kind, workers, f"{row['wall_s']:.1f}", f"{row['fixed_s']:.1f}",
                      f"{row['trials_per_min']:.1f}", f"{row['end_to_end_per_min']:.1f}",
                      "-" if sp is None else f"{sp:.2f}x")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--quick", action="store_true", help="16px, 8 trials, 1 repeat")
    parser.add_argument("--trials", type=int, help="trials per search")
    parser.add_argument("--repeats", type=int, help="repeats (medians are reported)")
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else ScalingSettings()
    overrides = {k: v for k, v in (("trials", args.trials), ("repeats", args.repeats)) if v}
    if overrides:
        settings = ScalingSettings(**{**asdict(settings), **overrides})
    console = Console()
    t0 = time.perf_counter()
    result = run_scaling(settings, console=console)
    result["total_s"] = time.perf_counter() - t0
    console.print(scaling_table(result))
    if not result["same_configurations"]:
        console.print("[bold red]runs evaluated different configurations[/]")
    out = args.out or Path(__file__).parent / "results" / (
        "scaling-quick.json" if args.quick else "scaling.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"results: {out} ({result['total_s']:.0f}s)")


if __name__ == "__main__":
    main()
