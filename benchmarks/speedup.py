"""Realized speed-up of *searched* networks: a latency-budget search against FLOPs-budget
searches at the same measured latency.

Per model (a zoo network trained on digits by ``autoprune.zoo.tasks.load_task``) and seed:

1. a latency-budget search, ``latency=<p>%`` of the dense network's latency, costed by the
   device's lookup table with the search's margin (``table_for_search``, as ``autoprune
   search`` does);
2. FLOPs-budget searches, the first at the MACs fraction the latency search kept, each next one
   at the FLOPs budget a log-log secant through the runs so far (and the dense network) says
   will land on the latency search's measured latency, until one lands within ``--tolerance``
   or ``--flops-steps`` searches have run.

Every search is the real loop (``autoprune.session.run_search``: repair to the budget,
de-duplication, tell) with the same agent, trials, seed and evaluator (adaptive BatchNorm on the
same calibration batches, accuracy on the validation split); its pick is ``best_record``. While
searching, a FLOPs pick is timed alternately with the latency pick only to steer the next
FLOPs budget; the numbers reported come from the end, where every pick and the dense networks
are measured together: ``--passes`` passes, each over all networks of all models in a fresh
shuffled order (so drift lands on all alike), ``measure_latency`` with ``--repeats`` calls
each. With ``--lock PATH`` the searches run under a shared hold of that lock, and building the
latency tables and the final measurement under an exclusive one.

Columns, one row per (model, seed, search): the budget; MACs kept (fraction of the dense
network's) and the MACs reduction (dense / pruned); the table's predicted latency; the measured
latency (median of the passes' medians, +- half the range of the pass medians, in %); the
realized speed-up (dense measured / pruned measured); the *share of the cut turned into speed*
(speed-up / MACs reduction: 1 means latency fell as much as MACs); validation and test accuracy
of the pick. Then per model and seed the comparison at equal measured latency: the FLOPs
searches' accuracy and MACs interpolated (linearly in measured latency) between the two that
bracket the latency search's measured latency, or the nearest one when none bracket it.

    python benchmarks/speedup.py --quick --lock /tmp/autoprune-cpu.lock  # resnet20 16px: minutes
    python benchmarks/speedup.py --lock /tmp/autoprune-cpu.lock  # mobilenetv2, resnet56, vgg11
    python benchmarks/speedup.py --models resnet56 --latency 50 --trials 80 --seeds 0 1

Writes benchmarks/results/speedup[-quick].json (settings, machine, load averages, every run's
trials) and prints the tables.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from autoprune.agents import make_agent
from autoprune.latency.cache import table_for_search
from autoprune.latency.device import Device
from autoprune.latency.measure import measure_latency
from autoprune.problem import build_problem
from autoprune.search_spaces import make_space
from autoprune.session import best_record, run_search
from autoprune.study import StudyStore, TrialRecord
from autoprune.targets import parse_targets
from autoprune.zoo.tasks import load_task
from autoprune.zoo.train import default_cache_dir

__all__ = ["Settings", "main", "measure_picks", "run_benchmark", "search_model", "summarize"]

RESULTS = Path(__file__).parent / "results"
#: The thinnest FLOPs budget the steering may ask for (the channel space keeps some width).
MIN_FLOPS_FRACTION = 0.03
#: Alternating rounds timing a FLOPs pick against the latency pick while searching.
STEER_ROUNDS = 3


@dataclass(frozen=True, kw_only=True)
class Settings:
    models: tuple[str, ...] = ("mobilenetv2", "resnet56", "vgg11")
    data: str = "digits"
    image_size: int = 32  # load_task's default
    latency: float = 60.0  # the latency budget, % of the dense network's latency
    agent: str = "tpe"
    trials: int = 40
    seeds: tuple[int, ...] = (0,)
    flops_steps: int = 3  # FLOPs-budget searches per (model, seed) at most
    tolerance: float = 0.03  # a FLOPs pick within this of the target latency ends the steering
    calib_batches: int = 8
    threads: int = 1
    steer_repeats: int = 20  # calls timing a pick while searching (steering only)
    passes: int = 7  # final measurement passes over every network
    repeats: int = 50  # calls per network per pass


QUICK = Settings(models=("resnet20",), image_size=16, latency=85.0, trials=12, flops_steps=2,
                 calib_batches=4)


def _sibling(name: str) -> Any:
    """A benchmark beside this one, loaded from its file (benchmarks/ is not a package)."""
    key = f"_benchmark_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).parent / f"{name}.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[key] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[key]


def loads() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


@contextmanager
def held(lock: Path | None, exclusive: bool) -> Iterator[None]:
    """A shared or exclusive ``flock`` on ``lock`` (nothing without one)."""
    if lock is None:
        yield
        return
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _records_summary(records: Sequence[TrialRecord], problem: Any,
                     dense_macs: float) -> dict[str, Any]:
    """What a run tried: per trial its score, MACs kept, predicted latency and feasibility."""
    best, curve = -math.inf, []
    for r in records:
        if not r.failed and math.isfinite(r.objective) and problem.feasible(r.costs):
            best = max(best, r.objective)
        curve.append(best if math.isfinite(best) else None)
    return {"trials": len(records), "failed": sum(r.failed for r in records),
            "feasible": sum(not r.failed and bool(problem.feasible(r.costs)) for r in records),
            "best_so_far": curve,
            "trials_list": [{"val": None if r.failed else r.objective,
                             "macs_fraction": r.costs.get("macs", math.nan) / dense_macs,
                             "predicted_ms": r.costs.get("latency_ms"),
                             "feasible": bool(problem.feasible(r.costs))} for r in records]}


def _next_fraction(points: Sequence[tuple[float, float]], target_ms: float) -> float:
    """The FLOPs fraction a log-log secant through the two (fraction, measured ms) points
    nearest the target (bracketing it if any two do) says lands on ``target_ms``."""
    below = [p for p in points if p[1] <= target_ms]
    above = [p for p in points if p[1] > target_ms]
    if below and above:  # the closest on each side
        a, b = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
    else:
        a, b = sorted(points, key=lambda p: abs(math.log(p[1] / target_ms)))[:2]
    slope = (math.log(b[1]) - math.log(a[1])) / (math.log(b[0]) - math.log(a[0]) or 1e-9)
    if not math.isfinite(slope) or slope <= 0.05:  # flat or inverted: step by the ratio
        slope = 1.0
    near = min(points, key=lambda p: abs(math.log(p[1] / target_ms)))
    guess = near[0] * (target_ms / near[1]) ** (1.0 / slope)
    return float(min(1.0, max(MIN_FLOPS_FRACTION, guess)))


@dataclass(frozen=True)
class Prepared:
    """A trained zoo model, its channel space and the latency table its searches cost with."""

    name: str
    task: Any
    example: torch.Tensor
    space: Any
    table: Any
    info: dict[str, Any]


def prepare(name: str, s: Settings, *, console: Console) -> Prepared:
    """The trained model (trained now and cached if it is not yet) and the device's latency
    table for it (built now and cached if it is not yet; anchored to the machine's speed now),
    as ``autoprune search`` gets them. The table is a timing measurement: hold the CPU."""
    torch.set_num_threads(s.threads)
    task = load_task(name, s.data, image_size=s.image_size)
    if task.metric != "accuracy":
        raise ValueError(f"{name} on {s.data} is scored by {task.metric}; this benchmark "
                         "reports accuracy: use an image model and --data digits")
    example = task.example_inputs(1)
    space = make_space("channel", task.model, example)
    table, info = table_for_search(task.model, example, space, lut=None,
                                   cache_dir=default_cache_dir(),
                                   device=Device(threads=s.threads), console=console)
    return Prepared(name, task, example, space, table, info)


def search_model(prep: Prepared, seed: int, s: Settings, *,
                 console: Console) -> dict[str, Any]:
    """The latency search and the steered FLOPs searches on one model and seed. Returns the
    runs (and, under ``_nets``, what the final measurement needs; dropped before saving)."""
    torch.set_num_threads(s.threads)
    task, example, space, table, info = prep.task, prep.example, prep.space, prep.table, prep.info
    model, metric = task.model, task.metric
    name = prep.name
    device = Device(threads=s.threads)
    evaluator = task.evaluator(calib_batches=s.calib_batches, seed=0)
    executor = _sibling("agents").CachingExecutor()  # one configuration is scored once
    dense_config = space.dense_config()
    dense_net = space.apply(model, dense_config).eval()
    dense_macs = float(sum(r.macs for r in space.layer_table(dense_config)))
    dense_val = float(evaluator(space.apply(model, dense_config))[metric])
    runs: list[dict[str, Any]] = []
    nets: list[Any] = []

    def search(kind: str, target: str, fraction: float | None = None) -> dict[str, Any]:
        problem = build_problem(space, parse_targets(target),
                                table=table if kind == "latency" else None)
        t = time.perf_counter()
        records = run_search(problem, model=model, evaluate=evaluator,
                             agent=make_agent(s.agent, space.dim, seed=seed), trials=s.trials,
                             store=StudyStore.in_memory(), executor=executor, progress=False,
                             objective=metric)
        wall = time.perf_counter() - t
        best = best_record(records, problem)
        if best is None:
            raise RuntimeError(f"{name} {target} (seed {seed}): no trial met the budget; try "
                               "more --trials or a looser --latency")
        net = space.apply(model, best.config).eval()
        macs = float(best.costs["macs"])
        run = {"search": kind, "target": target, "seed": seed, "flops_fraction": fraction,
               "limit": problem.budgets[0].limit, "budget_metric": problem.budgets[0].metric,
               "val_acc": float(best.objective),
               "test_acc": float(evaluator.test(space.apply(model, best.config),
                                                prepared=False)[metric]),
               "macs": macs, "macs_fraction": macs / dense_macs,
               "predicted_ms": float(table.predict(best.config)),
               "wall_s": wall, "best_config": dict(best.config),
               "records": _records_summary(records, problem, dense_macs)}
        runs.append(run)
        nets.append(net)
        return run

    def against_latency_pick(net: Any) -> float:
        """Measured latency of ``net`` over the latency search's pick, timed alternately in
        ``STEER_ROUNDS`` rounds (drift between the two cancels): steering only."""
        ratios = []
        for _ in range(STEER_ROUNDS):
            a = measure_latency(net, example, device=device, repeats=s.steer_repeats)
            b = measure_latency(nets[0], example, device=device, repeats=s.steer_repeats)
            ratios.append(a.median_ms / b.median_ms)
        return float(np.median(ratios))

    def said(run: Mapping[str, Any]) -> None:
        console.print(f"  {name} seed {seed} {run['target']:16s} val {run['val_acc']:.4f}, MACs "
                      f"{100 * run['macs_fraction']:.1f}%, predicted {run['predicted_ms']:.3f} "
                      f"ms, timed {run['steer_ratio']:.3f}x the latency pick "
                      f"({run['records']['trials']} trials, {run['wall_s']:.0f}s)",
                      highlight=False)

    lat = search("latency", f"latency={s.latency:g}%")
    lat["steer_ratio"] = 1.0
    said(lat)
    dense_ratio = against_latency_pick(dense_net)
    points = [(1.0, dense_ratio)]
    fraction = lat["macs_fraction"]
    # the thinnest network's MACs: a FLOPs budget below it cannot be met (the latency pick may
    # be that network, and a budget written to two decimals rounds below it)
    floor = sum(r.macs for r in space.layer_table(space.decode(np.zeros(space.dim)))) / dense_macs
    for _ in range(s.flops_steps):
        fraction = max(fraction, floor)
        run = search("flops", f"flops={math.ceil(10000 * fraction) / 100:.2f}%", fraction)
        run["steer_ratio"] = against_latency_pick(nets[-1])
        said(run)
        points.append((run["macs_fraction"], run["steer_ratio"]))
        if abs(run["steer_ratio"] - 1.0) <= s.tolerance:
            break
        fraction = _next_fraction(points, 1.0)
        if any(r["flops_fraction"] is not None and abs(r["flops_fraction"] - fraction) < 5e-4
               for r in runs):  # the secant asks for a budget already searched
            break
    return {"model": name, "seed": seed, "units": space.dim, "dense_val_acc": dense_val,
            "dense_macs": dense_macs, "dense_predicted_ms": float(table.predict(dense_config)),
            "dense_steer_ratio": dense_ratio, "table": {k: info.get(k) for k in
                                                     ("path", "built", "cached", "anchor")},
            "baseline": {k: task.baseline.get(k) for k in ("epochs", "metrics", "cached")},
            "evaluations_spent_s": executor.spent, "runs": runs,
            "_nets": {"dense": dense_net, "picks": nets, "example": example}}


def measure_picks(groups: Sequence[Mapping[str, Any]], s: Settings,
                  rng: np.random.Generator) -> None:
    """Time the dense network and every pick of every group together: ``s.passes`` passes, each
    over all networks in a fresh shuffled order. Writes ``measured`` into the groups."""
    jobs = []  # (group, run index or None for dense, network, example)
    for g in groups:
        jobs.append((g, None, g["_nets"]["dense"], g["_nets"]["example"]))
        jobs += [(g, i, net, g["_nets"]["example"]) for i, net in enumerate(g["_nets"]["picks"])]
    medians: list[list[float]] = [[] for _ in jobs]
    device = Device(threads=s.threads)
    for _ in range(s.passes):
        for j in rng.permutation(len(jobs)):
            _, _, net, example = jobs[j]
            medians[j].append(measure_latency(net, example, device=device,
                                              repeats=s.repeats).median_ms)
    for (g, i, _, _), m in zip(jobs, medians):
        mid = float(np.median(m))
        out = {"median_ms": mid, "pass_medians_ms": m,
               "spread_pct": 100 * (max(m) - min(m)) / 2 / mid}
        if i is None:
            g["dense_measured"] = out
        else:
            g["runs"][i]["measured"] = out


def summarize(group: dict[str, Any]) -> dict[str, Any]:
    """Speed-up and share of the cut per run, and the comparison at equal measured latency."""
    dense_ms = group["dense_measured"]["median_ms"]
    for r in group["runs"]:
        ms = r["measured"]["median_ms"]
        r["speedup"] = dense_ms / ms
        r["macs_reduction"] = group["dense_macs"] / r["macs"]
        r["cut_share"] = r["speedup"] / r["macs_reduction"]
        if r["search"] == "latency":
            r["latency_met"] = ms <= r["limit"]
    lat = next(r for r in group["runs"] if r["search"] == "latency")
    target = lat["measured"]["median_ms"]
    flops = sorted((r for r in group["runs"] if r["search"] == "flops"),
                   key=lambda r: r["measured"]["median_ms"])
    below = [r for r in flops if r["measured"]["median_ms"] <= target]
    above = [r for r in flops if r["measured"]["median_ms"] > target]
    if below and above:
        a, b = below[-1], above[0]
        w = (target - a["measured"]["median_ms"]) / (b["measured"]["median_ms"]
                                                       - a["measured"]["median_ms"])
        how = f"interpolated between {a['target']} and {b['target']}"
    else:
        a = b = min(flops, key=lambda r: abs(r["measured"]["median_ms"] - target))
        w = 0.0
        how = f"nearest: {a['target']} (none bracket the latency pick)"

    def at(key: str) -> float:
        return float(a[key] + w * (b[key] - a[key]))

    group["equal_latency"] = {
        "latency_ms": target, "how": how, "bracketed": a is not b,
        "flops_ms": float(a["measured"]["median_ms"] + w * (b["measured"]["median_ms"]
                                                           - a["measured"]["median_ms"])),
        "latency_val_acc": lat["val_acc"], "flops_val_acc": at("val_acc"),
        "latency_test_acc": lat["test_acc"], "flops_test_acc": at("test_acc"),
        "latency_macs_fraction": lat["macs_fraction"], "flops_macs_fraction": at("macs_fraction"),
        "latency_cut_share": lat["cut_share"], "flops_cut_share": at("cut_share"),
        "val_acc_gain": lat["val_acc"] - at("val_acc")}
    return group


def run_benchmark(s: Settings, *, console: Console, lock: Path | None = None,
                  out: Path | None = None) -> dict[str, Any]:
    """Every model and seed: search (shared hold of ``lock``), then measure every pick and
    dense network together (exclusive hold), summarize; saved to ``out`` when given."""
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "settings": asdict(s),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor(), "cpus": os.cpu_count(),
                    "threads": s.threads},
        "load_start": loads(), "groups": []}
    groups: list[dict[str, Any]] = []
    with held(lock, exclusive=False):  # trains a missing baseline
        for name in s.models:
            load_task(name, s.data, image_size=s.image_size)
    with held(lock, exclusive=True):  # builds a missing latency table, anchors every table
        prepared = {name: prepare(name, s, console=console) for name in s.models}
    with held(lock, exclusive=False):
        for name in s.models:
            for seed in s.seeds:
                console.print(f"[bold]{name}[/] {s.image_size}px seed {seed}: latency="
                              f"{s.latency:g}% and FLOPs searches, {s.agent}, {s.trials} trials")
                groups.append(search_model(prepared[name], seed, s, console=console))
                if out is not None:  # a long run stopped midway keeps its searches
                    _save(out, {**payload, "groups": [_public(g) for g in groups],
                                "partial": "searched, not yet measured"})
    payload["load_searched"] = loads()
    payload["search_s"] = time.perf_counter() - started
    with held(lock, exclusive=True):
        payload["load_before_measure"] = loads()
        t = time.perf_counter()
        measure_picks(groups, s, np.random.default_rng(0))
        payload["measure_s"] = time.perf_counter() - t
        payload["load_after_measure"] = loads()
    payload["groups"] = [summarize(_public(g)) for g in groups]
    payload["total_s"] = time.perf_counter() - started
    if out is not None:
        _save(out, payload)
    return payload


def _public(group: Mapping[str, Any]) -> dict[str, Any]:
    """The group without its networks (what is saved)."""
    return {k: v for k, v in group.items() if k != "_nets"}


def _save(out: Path, payload: Mapping[str, Any]) -> None:
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (np.floating, np.integer)):
            return v.item()
        return v

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(clean(dict(payload)), indent=1, default=str) + "\n")


def show(payload: Mapping[str, Any], console: Console) -> None:
    s = payload["settings"]
    t = Table(title=f"searched networks: latency={s['latency']:g}% vs FLOPs budgets "
                    f"({s['agent']}, {s['trials']} trials, {s['image_size']}px digits)")
    for col in ("model", "seed", "search", "MACs kept", "MACs reduction", "predicted ms",
                "measured ms", "speed-up", "share of cut", "val acc", "test acc"):
        t.add_column(col, justify="left" if col in ("model", "search") else "right")
    for g in payload["groups"]:
        d = g["dense_measured"]
        t.add_row(g["model"], str(g["seed"]), "dense", "100.0%", "1.00x",
                  f"{g['dense_predicted_ms']:.3f}",
                  f"{d['median_ms']:.3f} ±{d['spread_pct']:.1f}%", "1.00x", "-",
                  f"{g['dense_val_acc']:.4f}", "-")
        for r in g["runs"]:
            m = r["measured"]
            met = "" if r["search"] != "latency" else (" met" if r["latency_met"] else " MISSED")
            t.add_row("", "", r["target"] + met, f"{100 * r['macs_fraction']:.1f}%",
                      f"{r['macs_reduction']:.2f}x", f"{r['predicted_ms']:.3f}",
                      f"{m['median_ms']:.3f} ±{m['spread_pct']:.1f}%", f"{r['speedup']:.2f}x",
                      f"{r['cut_share']:.2f}", f"{r['val_acc']:.4f}", f"{r['test_acc']:.4f}")
        t.add_section()
    t.caption = ("measured: median of the final passes' medians ± half their range; speed-up: "
                 "dense measured / pruned measured; share of cut: speed-up / MACs reduction; "
                 "'met': measured within the latency budget")
    console.print(t)
    c = Table(title="at equal measured latency: the latency search against the FLOPs searches")
    for col in ("model", "seed", "latency ms", "FLOPs side", "MACs kept lat / FLOPs",
                "share of cut lat / FLOPs", "val acc lat / FLOPs", "val gain",
                "test acc lat / FLOPs"):
        c.add_column(col, justify="left" if col in ("model", "FLOPs side") else "right")
    for g in payload["groups"]:
        e = g["equal_latency"]
        c.add_row(g["model"], str(g["seed"]), f"{e['latency_ms']:.3f}",
                  f"{e['how']} ({e['flops_ms']:.3f} ms)",
                  f"{100 * e['latency_macs_fraction']:.1f}% / "
                  f"{100 * e['flops_macs_fraction']:.1f}%",
                  f"{e['latency_cut_share']:.2f} / {e['flops_cut_share']:.2f}",
                  f"{e['latency_val_acc']:.4f} / {e['flops_val_acc']:.4f}",
                  f"{e['val_acc_gain']:+.4f}",
                  f"{e['latency_test_acc']:.4f} / {e['flops_test_acc']:.4f}")
    console.print(c)
    console.print(f"load {payload['load_start']} at start, {payload['load_before_measure']} -> "
                  f"{payload['load_after_measure']} around the measurement "
                  f"({payload['measure_s']:.0f}s); searches {payload['search_s']:.0f}s")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run it as: python benchmarks/speedup.py --lock /tmp/autoprune-cpu.lock "
               "(searches under a shared hold, the final measurement under an exclusive one).")
    ap.add_argument("--quick", action="store_true",
                    help="resnet20 at 16px, latency=85%% (its thinnest network keeps ~70%% "
                         "of the latency there), 12 trials, 2 FLOPs searches: a few minutes")
    ap.add_argument("--models", nargs="+", help="zoo image models (default mobilenetv2 "
                                                "resnet56 vgg11)")
    ap.add_argument("--image-size", type=int, help="input size (default 32; --quick 16)")
    ap.add_argument("--latency", type=float, help="latency budget in %% of the dense "
                                                  "network's latency (default 60)")
    ap.add_argument("--agent", help="search agent of every search (default tpe)")
    ap.add_argument("--trials", type=int, help="evaluations per search (default 40)")
    ap.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0)")
    ap.add_argument("--flops-steps", type=int, help="FLOPs searches per model and seed at most "
                                                    "(default 3)")
    ap.add_argument("--passes", type=int, help="final measurement passes (default 7)")
    ap.add_argument("--repeats", type=int, help="timed calls per network per pass (default 50)")
    ap.add_argument("--lock", type=Path, help="flock this file: shared while searching, "
                                              "exclusive while measuring (do not also wrap "
                                              "the command in flock on the same file)")
    ap.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/"
                                             "speedup[-quick].json)")
    args = ap.parse_args(argv)
    s = QUICK if args.quick else Settings()
    given = {"models": tuple(args.models) if args.models else None,
             "image_size": args.image_size, "latency": args.latency, "agent": args.agent,
             "trials": args.trials, "seeds": tuple(args.seeds) if args.seeds else None,
             "flops_steps": args.flops_steps, "passes": args.passes, "repeats": args.repeats}
    s = replace(s, **{k: v for k, v in given.items() if v is not None})
    if not 0 < s.latency < 100:
        ap.error(f"--latency {s.latency:g}: give a percentage of the dense latency in (0, 100)")
    for key in ("trials", "flops_steps", "passes", "repeats"):
        if getattr(s, key) < 1:
            ap.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(s, key)}")
    if s.image_size < 8:
        ap.error(f"--image-size must be at least 8 (digits are 8x8), got {s.image_size}")
    try:
        make_agent(s.agent, 2, seed=0)
    except Exception as err:  # noqa: BLE001 - the registry's own message names the choices
        ap.error(f"--agent {s.agent}: {err}")
    out = args.out or RESULTS / f"speedup{'-quick' if args.quick else ''}.json"
    console = Console()
    console.width = max(console.width, 170)
    payload = run_benchmark(s, console=console, lock=args.lock, out=out)
    show(payload, console)
    console.print(f"results: {out} ({payload['total_s']:.0f}s)")


if __name__ == "__main__":
    main()
