"""The Python API: ``allocate`` for any model and evaluator, ``search`` for a whole run (what
``autoprune search`` calls), and ``load_pruned`` to get a run's network back."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from autoprune.agents import REWARDS, Agent, make_agent
from autoprune.data import load_data
from autoprune.evaluate import ClassificationEvaluator
from autoprune.executors import Executor, make_executor
from autoprune.latency import LatencyMeasurement
from autoprune.latency_jobs import (
    LatencyCheck,
    check_summary,
    latency_check_view,
    prediction_margin,
    table_for_search,
    verify_latency,
)
from autoprune.lut import LatencyTable
from autoprune.models import build_model_from_spec
from autoprune.pareto import ParetoRange, front_summary
from autoprune.problem import PruningProblem
from autoprune.report import front_table, pareto_plot, trials_table, units_table
from autoprune.loop import PruneAndEvaluate, best_record, evaluate_point, run_search
from autoprune.search_spaces import ChannelSpace
from autoprune.study import StudyStore, TrialRecord
from autoprune.targets import Budget, Target, parse_targets
from autoprune.train import default_cache_dir, load_or_train_baseline

__all__ = ["OBJECTIVES", "Allocation", "SearchError", "SearchSettings", "allocate", "load_pruned",
           "pick", "search"]

RUN_FORMAT = 1
#: ``accuracy``: the best network within the budgets. ``pareto``: the front of accuracy against
#: the first budget's cost, from the thinnest network up to that budget (``autoprune.pareto``).
OBJECTIVES = ("accuracy", "pareto")


class SearchError(RuntimeError):
    """A search that cannot start or produced no usable candidate."""


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """The chosen per-unit channels, with their costs and metrics, and the whole search."""

    config: Mapping[str, int]
    units: Mapping[str, Mapping[str, float]]
    costs: Mapping[str, float]
    metrics: Mapping[str, float]
    dense_costs: Mapping[str, float]
    budgets: Sequence[Budget]
    trials: Sequence[TrialRecord]
    space: ChannelSpace = field(repr=False)
    # With a latency budget: the chosen and the dense network, predicted and measured.
    latency: Mapping[str, Any] | None = None

    def apply(self, model: nn.Module) -> nn.Module:
        """A physically smaller copy of ``model`` with this allocation's channels."""
        return self.space.apply(model, self.config)


def _units(space: ChannelSpace, config: Mapping[str, int]) -> dict[str, dict[str, float]]:
    return {u.name: {"channels": config[u.name], "of": u.full, "ratio": config[u.name] / u.full}
            for u in space.units}


def _objective_of(metrics: Mapping[str, float]) -> str:
    return "accuracy" if "accuracy" in metrics else "loss"


def allocate(model: nn.Module, *, example_inputs: torch.Tensor | Sequence[torch.Tensor],
             target: str | Sequence[str], evaluate: Callable[[nn.Module], Mapping[str, float]],
             agent: str = "random", trials: int = 30, seed: int = 0, round_to: int = 8,
             min_ratio: float = 0.2, objective: str | None = None, run_dir: str | Path | None = None,
             progress: bool = False, latency_table: LatencyTable | None = None,
             executor: str | Executor = "local", reward: str = "acc") -> Allocation:
    """Find how many channels each unit of ``model`` keeps so that every budget of ``target``
    is met and ``evaluate(pruned)`` (a dict with ``accuracy`` or ``loss``) is best.

    ``model`` is never modified. With ``run_dir`` the study is kept in ``run_dir/study.db`` and
    a repeated call resumes it; without, it lives in memory. A latency budget is costed with
    ``latency_table`` (default: one built now, 1 thread, torch, the example's batch) and the
    chosen network is measured on this machine (``Allocation.latency``). ``executor``:
    ``"local"`` (in this process), ``"ray"`` (a local Ray, one trial per CPU) or an executor
    such as ``autoprune.ray_executor.RayExecutor(workers=4, address="auto")``; with Ray,
    ``model`` and ``evaluate`` must pickle (cloudpickle: closures are fine). ``reward`` is what
    the RL agents (``ddpg``, ``td3``) learn from: ``"acc"`` or ``"acc-flops"``.
    """
    if not callable(evaluate):
        raise TypeError("evaluate must be a callable model -> {'accuracy': ...} or {'loss': ...}")
    targets = parse_targets(target)
    _with_reward(make_agent(agent, 1, seed=seed), reward)  # bad names fail before any work
    space = ChannelSpace.from_model(model, example_inputs, round_to=round_to, min_ratio=min_ratio)
    table = None
    if any(t.metric == "latency_ms" for t in targets):
        table = latency_table or LatencyTable.build(model, example_inputs, space=space)
        table.check_space(space, source="latency_table")
    problem = PruningProblem(space, targets, cost_models=[table.cost_model()] if table else (),
                             margins={"latency_ms": prediction_margin(table)} if table else None)
    store = StudyStore.in_folder(Path(run_dir)) if run_dir else StudyStore.in_memory()
    if objective is None:
        objective = store.get_meta("objective") or _objective_of(evaluate(copy.deepcopy(model)))
    store.set_meta("objective", objective)
    runner = make_executor(executor) if isinstance(executor, str) else executor
    try:
        records = run_search(problem, model=model, evaluate=evaluate,
                             agent=_with_reward(make_agent(agent, problem.space.dim,
                                                           seed=seed), reward),
                             trials=trials, store=store, executor=runner, objective=objective,
                             progress=progress)
    finally:
        if isinstance(executor, str):  # ours to release; a caller's executor stays theirs
            runner.close()
    if table is None:
        return _allocation(problem, records)
    check = verify_latency(problem, records, model=model, example=example_inputs,
                           batch=int(table.device["batch"]), threads=int(table.device["threads"]),
                           backend=str(table.device["backend"]), clock=table.device.get("clock"),
                           record=_recorder(problem, model, evaluate, store, records, objective))
    return _allocation(problem, records, chosen=check.chosen, latency=check_summary(check))


def _recorder(problem: PruningProblem, model: nn.Module,
              evaluate: Callable[[nn.Module], Mapping[str, float]], store: StudyStore,
              records: list[TrialRecord], objective: str) -> Callable[[Any], TrialRecord]:
    """Scores and stores one extra point as a trial (a latency repair after the search)."""
    work = PruneAndEvaluate(problem, model, evaluate)
    return lambda x: evaluate_point(problem, x, work=work, store=store, records=records,
                                    objective=objective, extra={"latency_repair": True})


def _allocation(problem: PruningProblem, records: list[TrialRecord], *,
                chosen: TrialRecord | None = None,
                latency: Mapping[str, Any] | None = None) -> Allocation:
    best = chosen or best_record(records, problem)
    if best is None:
        reasons = sorted({r.reason for r in records if r.failed})[:3]
        raise SearchError(f"no trial finished with a usable score ({len(records)} trials); "
                          f"failures: {reasons or 'none'}. Fix the evaluator so it returns a "
                          "finite accuracy or loss.")
    return Allocation(config=dict(best.config), units=_units(problem.space, best.config),
                      costs=dict(best.costs), metrics=dict(best.metrics),
                      dense_costs=dict(problem.dense_costs), budgets=list(problem.budgets),
                      trials=list(records), space=problem.space, latency=latency)


# ---------------------------------------------------------------------- whole runs (the CLI)
@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """Everything ``autoprune search`` takes. Fields up to ``min_ratio`` define the search:
    a run folder refuses to resume with different values for them."""

    # VGG-11: its dense latency at batch 1 on one thread is well above the 10 ms of the headline
    # `autoprune search --target latency=10ms` on our 2-core hosts (17-21 ms; ResNet-56 is only
    # 10-14 ms), and it trains to ~98.6% on digits with the default epochs.
    model: str = "vgg11"
    data: str = "digits"
    image_size: int = 32
    width_mult: float = 1.0
    targets: tuple[str, ...] = ("flops=50%",)
    agent: str = "random"
    objective: str = "accuracy"
    # The RL agents' reward (agents/rl.py): acc (AMC's -error) or acc-flops (-error * log FLOPs).
    reward: str = "acc"
    seed: int = 0
    round_to: int = 8
    min_ratio: float = 0.2
    calib_batches: int = 16
    finetune_steps: int = 0
    trials: int = 30
    # Where trials run; none of these change the results, so they are not part of identity():
    # a run folder may be resumed with another executor.
    executor: str = "local"
    workers: int | None = None  # None: 1 locally, as many as the CPUs hold on Ray
    ray_address: str | None = None
    cpus_per_trial: float = 1.0
    run_dir: Path | None = None
    cache_dir: Path | None = None
    progress: bool = True
    # Latency budgets: the device a latency refers to, and the lookup table that costs it
    # (None: built on first use and cached next to the baselines).
    lut: Path | None = None
    batch: int = 1
    threads: int = 1
    backend: str = "torch"
    clock: str | None = None  # None: thread CPU time with 1 thread, else wall-clock

    def identity(self) -> dict[str, Any]:
        keys = ("model", "data", "image_size", "width_mult", "targets", "agent", "seed",
                "round_to", "min_ratio", "calib_batches", "finetune_steps")
        if self.objective != "accuracy":  # so run folders made before Pareto searches resume
            keys += ("objective",)
        if self.reward != "acc":  # likewise for run folders made before the RL agents
            keys += ("reward",)
        if self.has_latency_target():  # predicted latencies in the study hold for one device
            keys += ("batch", "threads", "backend", "clock")
        d = asdict(self)
        return {k: list(d[k]) if isinstance(d[k], tuple) else d[k] for k in keys}

    def has_latency_target(self) -> bool:
        return any(t.metric == "latency_ms" for t in parse_targets(self.targets))

    def default_run_dir(self) -> Path:
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(self.targets)).strip("-")
        kind = "" if self.objective == "accuracy" else f"-{self.objective}"
        return Path("runs") / f"{self.model}-{self.data}-{slug}-{self.agent}{kind}-s{self.seed}"


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def search(settings: SearchSettings, *, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) a whole search on a zoo model and an embedded dataset, write the run
    folder, and return its JSON summary."""
    console = console or Console(stderr=True)
    if settings.objective not in OBJECTIVES:
        raise SearchError(f"unknown objective {settings.objective!r}; use one of "
                          f"{', '.join(OBJECTIVES)}")
    # Unknown agents, or a single-objective agent for a Pareto search, fail before training.
    _with_reward(make_agent(settings.agent, 1, objectives=2 if settings.objective == "pareto"
                            else 1), settings.reward)
    targets = parse_targets(settings.targets)
    executor = make_executor(settings.executor, workers=settings.workers,
                             address=settings.ray_address, cpus_per_trial=settings.cpus_per_trial)
    run_dir = Path(settings.run_dir or settings.default_run_dir())
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_run_folder(run_dir, settings)
    try:
        return _search(settings, executor, run_dir, targets, console)
    finally:
        executor.close()


def _search(settings: SearchSettings, executor: Executor, run_dir: Path,
            targets: Sequence[Target], console: Console) -> dict[str, Any]:
    executor.start()  # an unreachable cluster fails here, before a baseline is trained

    model, data, baseline = load_or_train_baseline(
        settings.model, settings.data, image_size=settings.image_size,
        width_mult=settings.width_mult, cache_dir=settings.cache_dir, progress=settings.progress)
    space = ChannelSpace.from_model(model, data.example_inputs(1), round_to=settings.round_to,
                                    min_ratio=settings.min_ratio)
    table = table_info = None
    if settings.has_latency_target():
        table, table_info = table_for_search(
            model, data.example_inputs(1), space, lut=settings.lut,
            cache_dir=Path(settings.cache_dir or default_cache_dir()), batch=settings.batch,
            threads=settings.threads, backend=settings.backend, clock=settings.clock,
            console=console)
    problem = PruningProblem(space, targets,
                             cost_models=[table.cost_model()] if table else (),
                             margins={"latency_ms": prediction_margin(table)} if table else None)
    evaluator = ClassificationEvaluator(data, calib_batches=settings.calib_batches,
                                        finetune_steps=settings.finetune_steps, seed=settings.seed)
    store = StudyStore.in_folder(run_dir)
    dense_val = store.get_meta("dense_metrics")
    if dense_val is None:
        dense_copy = copy.deepcopy(model)
        dense_val = {"val": evaluator(dense_copy), "test": evaluator.test(dense_copy)}
        store.set_meta("dense_metrics", dense_val)
    console.print(f"[bold]{settings.model}[/] on {settings.data}: {space.dim} units, dense "
                  f"{problem.dense_costs['macs'] / 1e6:.1f}M MACs, "
                  f"{problem.dense_costs['params'] / 1e6:.3f}M params, validation accuracy "
                  f"{dense_val['val']['accuracy']:.4f}"
                  + (f", predicted latency {problem.dense_costs['latency_ms']:.2f} ms" if table else "")
                  + "; budgets: " + ", ".join(_budget_text(b) for b in problem.budgets))
    for b in problem.budgets:
        if (tight := _tightness(problem, b)) is not None:
            console.print(f"[yellow]note:[/] {tight}", highlight=False)

    pareto = _pareto_range(problem) if settings.objective == "pareto" else None
    agent = _with_reward(make_agent(settings.agent, space.dim + (1 if pareto else 0),
                                    seed=settings.seed, objectives=2 if pareto else 1),
                         settings.reward)
    records = run_search(problem, model=model, evaluate=evaluator, agent=agent,
                         trials=settings.trials, store=store, executor=executor,
                         progress=settings.progress, console=console, pareto=pareto)
    check = None
    if table is not None:  # never report a latency that was not measured
        check = verify_latency(problem, records, model=model, example=data.example_inputs(1),
                               batch=settings.batch, threads=settings.threads,
                               backend=settings.backend, clock=settings.clock, console=console,
                               record=_recorder(problem, model, evaluator, store, records,
                                                "accuracy"))
    alloc = _allocation(problem, records, chosen=check.chosen if check else None)

    pruned = space.apply(model, alloc.config)
    val = evaluator(pruned)  # recalibrates BN, as every candidate was scored
    test = evaluator.test(pruned)
    torch.save(pruned.state_dict(), run_dir / "pruned.pt")
    best = check.chosen if check else best_record(records, problem)
    spec = dict(model.autoprune_spec)
    choice = {
        "format": RUN_FORMAT, "model_spec": spec, "data": settings.data,
        "example_input_shape": list(data.example_inputs(1).shape),
        "round_to": settings.round_to, "min_ratio": settings.min_ratio,
        "trial": best.number if best else None, "config": dict(alloc.config),
        "units": alloc.units, "costs": alloc.costs,
        "metrics": {"val_accuracy": val["accuracy"], "val_loss": val["loss"],
                    "test_accuracy": test["accuracy"], "test_loss": test["loss"]},
        "dense": {"costs": problem.dense_costs,
                  "metrics": {"val_accuracy": dense_val["val"]["accuracy"],
                              "test_accuracy": dense_val["test"]["accuracy"]}},
        "budgets": [asdict(b) for b in problem.budgets],
    }
    if check:
        choice["measured"] = _measured(check.best_measurement())
        choice["dense"]["measured"] = _measured(check.dense)
    _write_json(run_dir / "best.json", choice)
    plot = pareto_plot(records, run_dir / "pareto.png", dense_costs=problem.dense_costs,
                       dense_objective=dense_val["val"]["accuracy"], budgets=problem.budgets,
                       objective="accuracy", best=best,
                       title=f"{settings.model} on {settings.data}, {', '.join(settings.targets)}, "
                             f"agent {settings.agent}")
    summary = {
        "target": {t.text: {"metric": t.metric, "limit": b.limit}
                   for t, b in zip(targets, problem.budgets)},
        "dense": {"costs": problem.dense_costs,
                  "metrics": {"accuracy": dense_val["val"]["accuracy"],
                              "test_accuracy": dense_val["test"]["accuracy"]}},
        "best": {"costs": alloc.costs,
                 "metrics": {"accuracy": val["accuracy"], "loss": val["loss"],
                             "test_accuracy": test["accuracy"], "test_loss": test["loss"]},
                 "units": {k: int(v) for k, v in alloc.config.items()},
                 "ratios": {k: round(u["ratio"], 4) for k, u in alloc.units.items()},
                 "trial": choice["trial"]},
        "budgets_met": problem.feasible(alloc.costs) and (check is None or check.met),
        "trials": len(records),
        "failed_trials": sum(r.failed for r in records),
        "baseline": {"cached": bool(baseline.get("cached")), "epochs": baseline.get("epochs")},
        "run_dir": str(run_dir),
        "files": {"study": str(run_dir / "study.db"), "choice": str(run_dir / "best.json"),
                  "model": str(run_dir / "pruned.pt"), "plot": str(plot)},
    }
    if pareto is not None:
        front = front_summary(records, metric=pareto.metric, dense_cost=pareto.dense,
                              ref_cost=pareto.high)
        _write_json(run_dir / "front.json", front)
        summary["front"] = {"metric": pareto.metric, "hypervolume": front["hypervolume"],
                            "reference": front["reference"], "points": len(front["points"]),
                            "range": [pareto.low, pareto.high]}
        summary["files"]["front"] = str(run_dir / "front.json")
        console.print(front_table(front, dense_objective=dense_val["val"]["accuracy"]))
    if check:
        summary["dense"]["measured"] = _measured(check.dense)
        summary["best"]["measured"] = _measured(check.best_measurement())
        summary["latency"] = _latency_summary(check, problem, table_info)
    _write_json(run_dir / "summary.json", summary)
    console.print(trials_table(records, dense_costs=problem.dense_costs, objective="accuracy"))
    if check:
        console.print(latency_check_view(check))
    console.print(units_table(alloc.units, title="chosen channels per unit"))
    console.print(
        f"chosen: trial {choice['trial']}, {100 * alloc.costs['macs'] / problem.dense_costs['macs']:.1f}% "
        f"MACs, {100 * alloc.costs['params'] / problem.dense_costs['params']:.1f}% params; "
        f"validation accuracy {val['accuracy']:.4f}, test accuracy {test['accuracy']:.4f} "
        f"(dense {dense_val['test']['accuracy']:.4f}), after adaptive BN, no fine-tune.\n"
        f"run folder: {run_dir}  (study.db, best.json, pruned.pt, pareto.png, summary.json"
        + (", front.json)" if pareto else ")"))
    if check and not check.met:
        console.print(
            f"[bold red]latency budget missed:[/] no candidate measured within "
            f"{check.limit_ms:.2f} ms (chosen trial {check.chosen.number} measured "
            f"{check.best_measurement().median_ms:.2f} ms). Other load on this machine slows "
            "measurements; rebuild the table when it is quiet (autoprune profile), or ask for "
            "a little more latency.")
    return summary


def _with_reward(agent: Agent, reward: str) -> Agent:
    """``agent`` set to learn from ``reward``; only the RL agents have a choice."""
    if reward not in REWARDS:
        raise SearchError(f"unknown reward {reward!r}; use one of {', '.join(REWARDS)}")
    learners = [a for a in getattr(agent, "stages", [agent]) if hasattr(a, "set_reward")]
    for a in learners:  # a chain such as erk+ddpg: its RL stage
        a.set_reward(reward)
    if not learners and reward != "acc":
        raise SearchError(f"--reward {reward} only changes the RL agents (ddpg, td3); agent "
                          f"{agent.name!r} maximises the accuracy")
    return agent


def _pareto_range(problem: PruningProblem) -> ParetoRange:
    if not problem.budgets:
        raise SearchError("--objective pareto needs a --target: the front runs from the "
                          "thinnest network up to the first budget")
    b = problem.budgets[0]
    return ParetoRange(metric=b.metric, low=problem.min_costs[b.metric], high=b.limit,
                       dense=problem.dense_costs[b.metric])


# A budget leaving less than this share of the range between the thinnest network the space
# allows and the dense one gets a note: nearly every unit must sit at its lower bound.
_TIGHT_SHARE = 0.1


def _tightness(problem: PruningProblem, b: Budget) -> str | None:
    """A warning when ``b`` is close to the thinnest network, else None."""
    low, dense = problem.min_costs[b.metric], problem.dense_costs[b.metric]
    if dense <= low or (b.search_limit - low) / (dense - low) >= _TIGHT_SHARE:
        return None
    unit = " ms" if b.metric == "latency_ms" else f" {b.metric}"
    fmt = (lambda v: f"{v:.2f}") if b.metric == "latency_ms" else (lambda v: f"{v:,.0f}")
    return (f"{b.text} is close to the thinnest network this space allows ({fmt(low)}{unit}; "
            f"dense {fmt(dense)}{unit}), so nearly every unit sits at its lower bound and "
            "accuracy after adaptive BN alone can fall to chance. Fine-tune the result "
            "(--finetune-steps), or allow a looser budget.")


def _budget_text(b: Budget) -> str:
    if b.metric != "latency_ms":
        return f"{b.text} (<= {b.limit:,.0f} {b.metric})"
    return (f"{b.text} (candidates <= {b.search_limit:.2f} ms predicted, a {100 * b.margin:.0f}% "
            f"margin for the table's error; the chosen one is measured)")


def _measured(m: LatencyMeasurement) -> dict[str, float]:
    return {"latency_ms": round(m.median_ms, 4), "p10_ms": round(m.p10_ms, 4),
            "p90_ms": round(m.p90_ms, 4), "wall_median_ms": round(m.wall_median_ms, 4)}


def _latency_summary(check: LatencyCheck, problem: PruningProblem,
                     table_info: Mapping[str, Any] | None) -> dict[str, Any]:
    budget = next(b for b in problem.budgets if b.metric == "latency_ms")
    return {"device": check.dense.device, "limit_ms": budget.limit,
            "search_limit_ms": budget.search_limit, "margin": budget.margin,
            "met_when_measured": check.met, "table": dict(table_info or {}),
            "checked": [{"trial": n, "rank": check.rank.get(n), "predicted_ms": check.predicted[n],
                         **_measured(m)} for n, m in check.measured.items()]}


def _check_run_folder(run_dir: Path, settings: SearchSettings) -> None:
    path = run_dir / "run.json"
    ident = settings.identity()
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SearchError(f"{path} is corrupt ({err}); remove the run folder or choose "
                              "another --run-dir") from None
        if saved.get("settings") != ident:
            diff = {k: (saved.get("settings", {}).get(k), v) for k, v in ident.items()
                    if saved.get("settings", {}).get(k) != v}
            raise SearchError(f"run folder {run_dir} holds a different search (saved vs now: "
                              f"{diff}); resume it with the same options or choose another "
                              "--run-dir")
        return
    _write_json(path, {"format": RUN_FORMAT, "settings": ident})


def load_pruned(run_dir: str | Path, *, choice: str = "best") -> nn.Module:
    """The pruned network a run chose (``choice="best"``) or that ``autoprune pick`` chose
    (``choice="pick-flops-30"``, the name of its JSON file), rebuilt and loaded (weights only,
    never unpickled code)."""
    run_dir = Path(run_dir)
    path = run_dir / f"{choice}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a finished autoprune "
                                "run folder (run autoprune search --run-dir ... first)")
    choice_json = json.loads(path.read_text())
    weights = run_dir / choice_json.get("weights", "pruned.pt")
    return _rebuild(choice_json, weights)


def _rebuild(choice: Mapping[str, Any], weights: Path) -> nn.Module:
    dense = build_model_from_spec(choice["model_spec"])
    space = ChannelSpace.from_model(dense, torch.zeros(choice["example_input_shape"]),
                                    round_to=choice["round_to"], min_ratio=choice["min_ratio"])
    model = space.apply(dense, choice["config"])
    state = torch.load(weights, weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    return model.eval()



def pick(run_dir: str | Path, target: str | Sequence[str], *, cache_dir: Path | None = None,
         console: Console | None = None) -> dict[str, Any]:
    """Choose from a finished run the best trial that meets ``target`` — typically from a Pareto
    run's front, for a budget decided after the search — without a new search: prune the dense
    model to it, score it (adaptive BN, validation and test), and write ``pick-<target>.json``
    and ``pick-<target>.pt`` into the run folder (``load_pruned(run_dir, choice=...)``)."""
    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    run_json, db = run_dir / "run.json", run_dir / "study.db"
    if not run_json.exists() or not db.exists():
        raise FileNotFoundError(f"{run_dir} is not an autoprune run folder (it needs run.json "
                                "and study.db; run autoprune search --run-dir ... first)")
    saved = json.loads(run_json.read_text())["settings"]
    targets = parse_targets(target)
    model, data, _ = load_or_train_baseline(
        saved["model"], saved["data"], image_size=saved["image_size"],
        width_mult=saved["width_mult"], cache_dir=cache_dir, progress=False)
    space = ChannelSpace.from_model(model, data.example_inputs(1), round_to=saved["round_to"],
                                    min_ratio=saved["min_ratio"])
    problem = PruningProblem(space, targets)
    records = StudyStore.in_folder(run_dir).records()
    best = best_record(records, problem)
    if best is None:
        finished = [r for r in records if not r.failed]
        cheapest = ", ".join(
            f"{b.metric} {min(r.costs[b.metric] for r in finished) / problem.dense_costs[b.metric]:.1%}"
            for b in problem.budgets) if finished else "no finished trial"
        raise SearchError(f"no trial of {run_dir} meets {', '.join(t.text for t in targets)} "
                          f"(cheapest: {cheapest} of dense); pick a looser target or run a "
                          "search for this budget")
    evaluator = ClassificationEvaluator(data, calib_batches=saved["calib_batches"],
                                        finetune_steps=saved["finetune_steps"],
                                        seed=saved["seed"])
    pruned = space.apply(model, best.config)
    val = evaluator(pruned)
    test = evaluator.test(pruned)
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(t.text for t in targets)).strip("-")
    name = f"pick-{slug}"
    torch.save(pruned.state_dict(), run_dir / f"{name}.pt")
    units = _units(space, best.config)
    choice = {
        "format": RUN_FORMAT, "model_spec": dict(model.autoprune_spec), "data": saved["data"],
        "example_input_shape": list(data.example_inputs(1).shape),
        "round_to": saved["round_to"], "min_ratio": saved["min_ratio"], "trial": best.number,
        "config": dict(best.config), "units": units, "costs": dict(best.costs),
        "metrics": {"val_accuracy": val["accuracy"], "val_loss": val["loss"],
                    "test_accuracy": test["accuracy"], "test_loss": test["loss"]},
        "budgets": [asdict(b) for b in problem.budgets], "weights": f"{name}.pt",
    }
    _write_json(run_dir / f"{name}.json", choice)
    console.print(
        f"picked trial {best.number} of {len(records)}: "
        + ", ".join(f"{b.metric} {best.costs[b.metric] / problem.dense_costs[b.metric]:.1%} of "
                    f"dense (budget {b.text})" for b in problem.budgets)
        + f"; validation accuracy {val['accuracy']:.4f}, test accuracy {test['accuracy']:.4f}"
        f"\nwrote {run_dir / (name + '.json')} and {name}.pt")
    return {"run_dir": str(run_dir), "choice": name, "trial": best.number,
            "costs": dict(best.costs), "metrics": choice["metrics"],
            "budgets_met": problem.feasible(best.costs),
            "units": {k: int(v) for k, v in best.config.items()},
            "files": {"choice": str(run_dir / f"{name}.json"),
                      "model": str(run_dir / f"{name}.pt")}}
