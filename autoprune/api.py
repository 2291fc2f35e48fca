"""The Python API: ``allocate`` for any model and evaluator -- the one search pipeline --,
``search`` for a whole run (what ``autoprune search`` calls: it builds the model, data,
evaluator and latency table, then runs ``allocate``), ``pick`` to choose from a finished run,
and ``load_pruned`` to get a run's network back."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from autoprune.agents import Agent, AgentOptionError, make_agent, resolve_agent
from autoprune.agents.sensitivity import allocation_from_probes
from autoprune.context import agent_context
from autoprune.allocation import Allocation
from autoprune.errors import SearchError
from autoprune.evaluator import Evaluator, as_evaluator
from autoprune.executors import Executor, make_executor
from autoprune.latency.cache import table_for_search
from autoprune.latency.device import Device
from autoprune.latency.measure import measure_latency
from autoprune.latency.table import LatencyTable
from autoprune.latency.verify import LatencyCheck, check_summary, verify_latency
from autoprune.pareto import ParetoRange
from autoprune.phases import SearchCosts, space_progress
from autoprune.precision import as_example, in_dtype, model_dtype, parse_dtype, value_bytes
from autoprune.problem import PruningProblem, build_problem
from autoprune.run_report import measured_summary, space_record, split_metrics, write_report
from autoprune.run_folder import (check_run_folder, describe_study, load_pruned, open_study,
                                  read_run_settings, study_record, unit_table, write_choice,
                                  write_json)
from autoprune.search_spaces import Criterion, SearchSpace, make_space, release, watch
from autoprune.spaces import (check_space, check_space_targets, criterion_options,
                              space_options)
from autoprune.session import (PruneAndEvaluate, best_record, evaluate_point, objective_value,
                               run_search)
from autoprune.settings import OBJECTIVES, SearchSettings, SpaceSettings, slug
from autoprune.study import StudyStore, TrialRecord, check_storage, masked
from autoprune.targets import Budget, parse_targets
from autoprune.zoo.tasks import Task, load_task
from autoprune.zoo.train import default_cache_dir

__all__ = ["OBJECTIVES", "Allocation", "SearchError", "SearchSettings", "allocate", "load_pruned",
           "pick", "search"]


def _objective_of(metrics: Mapping[str, float]) -> str:
    return "accuracy" if "accuracy" in metrics else "loss"


def _probe_metrics(space: SearchSpace, model: nn.Module,
                   evaluator: Evaluator) -> Mapping[str, float]:
    """What the evaluator returns (which metric the search optimises), asked of the thinnest
    network: a copy of the dense model would double the memory of a large one. A thinnest
    network that does not run is left to its trial; the dense model's copy answers then."""
    try:
        thin = space.apply(model, space.min_config())
    except Exception:  # noqa: BLE001 - the trial will name it
        thin = None
    if thin is not None:
        try:
            return evaluator(thin)
        except Exception:  # noqa: BLE001 - an evaluator failing on this network only
            pass
        finally:
            gone = watch(thin)
            del thin
            release(gone)  # its memory back to the system before the trials build theirs
    return evaluator(copy.deepcopy(model))


def _agent(name: str, dim: int, *, seed: int = 0, pareto: bool = False,
           reward: str = "acc") -> Agent:
    """``make_agent`` with the search's options; a bad name or option is a ``SearchError``."""
    try:
        return make_agent(name, dim, seed=seed, objectives=2 if pareto else 1,
                          options={"reward": reward})
    except AgentOptionError as err:
        raise SearchError(str(err)) from None


def allocate(model: nn.Module, *, example_inputs: torch.Tensor | Sequence[torch.Tensor],
             target: str | Sequence[str],
             evaluate: Evaluator | Callable[[nn.Module], Mapping[str, float]],
             agent: str = "auto", trials: int = 30, seed: int = 0, round_to: int = 8,
             min_ratio: float | None = None, space: str | SearchSpace = "channel",
             output: str | int | None = None, objective: str | None = None,
             pareto: bool = False, run_dir: str | Path | None = None, progress: bool = False,
             latency_table: LatencyTable | None = None, device: Device | None = None,
             executor: str | Executor = "local", reward: str = "acc",
             storage: str | None = None, criterion: str | Criterion = "l2",
             calibration: Sequence[tuple[Any, Any]] | None = None,
             space_options: Mapping[str, Any] | None = None, storage_format: str = "bitmap",
             console: Console | None = None, dtype: str | torch.dtype | None = None
             ) -> Allocation:
    """Find how many channels each unit of ``model`` keeps so that every budget of ``target``
    is met and ``evaluate(pruned)`` (a dict with ``accuracy`` or ``loss``) is best.
    ``agent`` searches (``autoprune agents`` lists them); ``auto``, the default, measures each
    unit's sensitivity curve, allocates the budget from the curves and refines the allocation
    (``autoprune.agents.AUTO``; random search for ``pareto``).

    ``model`` is never modified. With ``run_dir`` the study is kept in ``run_dir/study.db`` and
    a repeated call resumes it; without, it lives in memory. ``storage`` (with ``run_dir``)
    keeps it in a shared database instead, an optuna RDB URL such as
    ``postgresql+psycopg://user@host/db``, under a study name of the folder's own (a folder
    whose run.json records a store uses that one). A latency budget is costed with
    ``latency_table`` (default: one built now for ``device``, default torch, 1 thread, batch 1)
    and the chosen network is measured on this machine (``Allocation.latency``). ``executor``:
    ``"local"`` (in this process), ``"ray"`` (a local Ray, one trial per CPU) or an executor
    such as ``autoprune.executors.ray_tune.RayExecutor(workers=4, address="auto")``; with Ray,
    ``model`` and ``evaluate`` must pickle (cloudpickle: closures are fine). ``reward`` is what
    the RL agents (``ddpg``, ``td3``) learn from: ``"acc"`` or ``"acc-flops"``. ``pareto``
    searches the front of the objective against the first budget's cost, from the thinnest
    network up to that budget (an agent that handles two objectives). ``space`` is a
    registered space's name or a space already built on ``model``; ``output`` names the
    model's output tensor that pruning must keep (a ``ModelOutput`` field such as
    ``"logits"``, a dict key or a tuple position; default: the first tensor). ``criterion``
    ranks the channels within each unit (``autoprune.search_spaces.criterion_names()``); the
    data-driven ones (taylor, hessian, apoz, reconstruction) rank on ``calibration``, a few
    ``(inputs, targets)`` batches of the training split. ``space="unstructured"`` or
    ``"nm"`` prunes single weights instead (``space_options``: ``levels``, ``nm``,
    ``include_ends``; ``criterion`` magnitude, wanda or sparsegpt), where ``sparsity=`` and
    ``size=`` budgets apply (``size=`` for ``storage_format`` dense, bitmap or csr) and a
    latency budget is refused. ``dtype`` (``"bfloat16"``, ``"float16"``, ``"float32"``)
    searches the model in that precision: the dense weights and every trial in it (a copy of
    ``model`` converted without a float32 copy, casting floating inputs to it), and ``size=``
    budgets count its bytes; default: the model's own. ``resources`` on the result says where
    the time went and the peak memory.
    """
    try:
        model = in_dtype(model, dtype)
    except ValueError as err:
        raise SearchError(str(err)) from None
    if dtype is not None:
        example_inputs = as_example(example_inputs, model_dtype(model))
    evaluator = as_evaluator(evaluate)
    targets = parse_targets(target)
    if storage is not None and run_dir is None:
        raise SearchError("storage= needs a run_dir: a run's study in a shared database is "
                          "named after its run folder")
    record = study_record(Path(run_dir), storage) if run_dir else None
    if record is not None:  # an unreachable database fails before any work
        check_storage(record["storage"])
    agent = resolve_agent(agent, objectives=2 if pareto else 1)
    _agent(agent, 1, seed=seed, pareto=pareto, reward=reward)  # bad names fail before any work
    costs = SearchCosts()
    if not isinstance(space, SearchSpace):
        with space_progress(console or Console(stderr=True), progress):
            space = make_space(space, model, example_inputs, round_to=round_to,
                               min_ratio=min_ratio, output=output,
                               **criterion_options(space, criterion, calibration),
                               **(space_options or {}))
        costs.build_s = time.perf_counter() - costs.started
    searched = space
    check_space_targets(searched.name, targets)
    started = time.perf_counter()
    with space_progress(console or Console(stderr=True), progress):
        searched.prepare(model)  # once per search: a weight-sparse space's level store
    costs.prepare_s = time.perf_counter() - started
    table = None
    if any(t.metric == "latency_ms" for t in targets):
        table = latency_table or LatencyTable.build(model, example_inputs, space=searched,
                                                    device=device)
        table.check_space(searched, source="latency_table")
    problem = build_problem(searched, targets, table=table, storage_format=storage_format,
                            value_bytes=value_bytes(model))
    if console is not None:
        console.print(f"{searched.dim} units, dense {problem.dense_costs['macs'] / 1e6:.1f}M MACs, "
                      f"{problem.dense_costs['params'] / 1e6:.3f}M params"
                      + (f", predicted latency {problem.dense_costs['latency_ms']:.2f} ms"
                         if table else "")
                      + "; budgets: " + ", ".join(_budget_text(b) for b in problem.budgets))
        for b in problem.budgets:
            if (tight := _tightness(problem, b)) is not None:
                console.print(f"[yellow]note:[/] {tight}", highlight=False)
        for note in getattr(searched, "notes", ()):
            console.print(f"[yellow]note:[/] {note}", highlight=False)
    store = open_study(Path(run_dir), record) if run_dir else StudyStore.in_memory()
    if objective is None:
        objective = store.get_meta("objective") or _objective_of(_probe_metrics(searched, model,
                                                                              evaluator))
    store.set_meta("objective", objective)
    ranges = _pareto_range(problem) if pareto else None
    runner = make_executor(executor) if isinstance(executor, str) else executor
    try:
        with space_progress(console or Console(stderr=True), progress):
            records = run_search(problem, model=model, evaluate=evaluator,
                                 agent=_agent(agent, searched.dim + (1 if ranges else 0),
                                              seed=seed, pareto=pareto, reward=reward),
                                 trials=trials, store=store, executor=runner,
                                 objective=objective, progress=progress, console=console,
                                 pareto=ranges, costs=costs)
    finally:
        if isinstance(executor, str):  # ours to release; a caller's executor stays theirs
            runner.close()
    check = None
    if table is not None:  # never report a latency that was not measured
        work = PruneAndEvaluate(problem, model, evaluator)
        check = verify_latency(
            problem, records, model=model, example=example_inputs,
            device=Device.of(table.device), console=console,
            record=lambda x: evaluate_point(problem, x, work=work, store=store, records=records,
                                            objective=objective,
                                            extra={"latency_repair": True}))
    alloc = _allocation(problem, records, check=check, pareto=ranges, costs=costs)
    return replace(alloc, dtype=str(model_dtype(model)).removeprefix("torch.")) if dtype else alloc


def _allocation(problem: PruningProblem, records: list[TrialRecord], *,
                check: LatencyCheck | None = None, pareto: ParetoRange | None = None,
                costs: SearchCosts | None = None) -> Allocation:
    best = check.chosen if check else best_record(records, problem)
    if best is None:
        reasons = sorted({r.reason for r in records if r.failed})[:3]
        broke = [r for r in records if r.failed and r.reason.startswith("PruningBrokeModel")]
        if broke and len(broke) == sum(r.failed for r in records):
            units = sorted({u for r in broke for u in r.extra.get("broken_units", ())})
            raise SearchError(
                f"no trial finished: pruning breaks this model ({len(broke)} of {len(records)} "
                f"pruned networks fail in forward{'; units: ' + ', '.join(units) if units else ''}"
                f"). First failure: {broke[0].reason.split(': ', 1)[-1]}. Fix: leave those "
                "layers out (ignored_layers), or tell us the model: the space should have kept "
                "them dense.")
        raise SearchError(f"no trial finished with a usable score ({len(records)} trials); "
                          f"failures: {reasons or 'none'}. Fix the evaluator so it returns a "
                          "finite accuracy or loss.")
    return Allocation(config=dict(best.config), units=unit_table(problem.space, best.config),
                      costs=dict(best.costs), metrics=dict(best.metrics),
                      dense_costs=dict(problem.dense_costs), budgets=list(problem.budgets),
                      trials=list(records), space=problem.space,
                      latency=check_summary(check) if check else None, chosen=best,
                      problem=problem, check=check, pareto=pareto,
                      resources=costs.summary() if costs is not None else None)


# ---------------------------------------------------------------------- whole runs (the CLI)
def search(settings: SearchSettings, *, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) a whole search on a zoo model and an embedded dataset, write the run
    folder, and return its JSON summary."""
    console = console or Console(stderr=True)
    if settings.objective not in OBJECTIVES:
        raise SearchError(f"unknown objective {settings.objective!r}; use one of "
                          f"{', '.join(OBJECTIVES)}")
    settings = replace(settings, agent=resolve_agent(
        settings.agent, objectives=2 if settings.objective == "pareto" else 1))
    # Unknown agents, or a single-objective agent for a Pareto search, fail before training.
    _agent(settings.agent, 1, pareto=settings.objective == "pareto", reward=settings.reward)
    parse_targets(settings.targets)
    check_space(settings.space, parse_targets(settings.targets))
    try:  # a bad --dtype fails before a baseline is trained
        parse_dtype(settings.source.dtype)
    except ValueError as err:
        raise SearchError(str(err)) from None
    ex = settings.executor
    executor = make_executor(ex.executor, workers=ex.workers, address=ex.ray_address,
                             cpus_per_trial=ex.cpus_per_trial)
    run_dir = Path(settings.run_dir or settings.default_run_dir())
    run_dir.mkdir(parents=True, exist_ok=True)
    # Checked now; recorded once the model and data have loaded, so a bad --model or
    # --weights leaves no half-made run folder that the corrected command would refuse.
    record = check_run_folder(run_dir, settings.identity(), write=False,
                              storage=settings.storage)
    if record is not None:  # an unreachable or unusable database fails before any work
        check_storage(record["storage"])
    try:
        executor.start()  # an unreachable cluster fails here, before a baseline is trained
        return _search(settings, executor, run_dir, console)
    finally:
        executor.close()


def _search(settings: SearchSettings, executor: Executor, run_dir: Path,
            console: Console) -> dict[str, Any]:
    src = settings.source
    task = _load_task(src.model, src.data, image_size=src.image_size,
                      width_mult=src.width_mult, cache_dir=settings.cache_dir,
                      progress=settings.progress, model_args=src.model_args,
                      weights=src.weights, dtype=src.dtype)
    try:
        evaluator = task.evaluator(calib_batches=settings.scoring.calib_batches,
                                   finetune_steps=settings.scoring.finetune_steps,
                                   seed=settings.seed, user=settings.scoring.evaluator)
    except ValueError as err:
        raise SearchError(str(err)) from None
    model, metric = task.model, task.metric
    dense_now = None
    if settings.scoring.evaluator:  # the user's metric decides: accuracy if it has one
        dense_copy = copy.deepcopy(model)
        try:
            dense_now = {"val": evaluator(dense_copy), "test": evaluator.test(dense_copy)}
        except Exception as err:  # noqa: BLE001 - the user's function: one error, before work
            raise SearchError(f"the evaluator {settings.scoring.evaluator} failed on the dense "
                              f"model ({type(err).__name__}: {err})") from None
        metric = "accuracy" if "accuracy" in dense_now["val"] else "loss"
    record = check_run_folder(run_dir, settings.identity(), storage=settings.storage)
    if record is not None:
        console.print(describe_study(run_dir, record), highlight=False)
    example = as_example(task.example_inputs(1), model_dtype(model))
    table = table_info = None
    started = time.perf_counter()
    with space_progress(console, settings.progress):
        space = make_space(settings.space.space, model, example,
                           round_to=settings.space.round_to, min_ratio=settings.space.min_ratio,
                           output=src.output, **space_options(settings.space, task,
                                                              seed=settings.seed))
    built = time.perf_counter() - started
    space.keep_in(run_dir / "levels")  # a weight-sparse run's level store, read on resume
    store = open_study(run_dir, record)
    if settings.has_latency_target():
        # a resumed search costs with the speed it started with, so its trials stay comparable
        speed = store.get_meta("latency_speed")
        table, table_info = table_for_search(
            model, example, space, lut=settings.lut,
            cache_dir=Path(settings.cache_dir or default_cache_dir()), device=settings.device,
            console=console, speed=speed)
        store.set_meta("latency_speed", table.speed)
    dense_val = store.get_meta("dense_metrics")
    if dense_val is None:
        if dense_now is None:
            dense_copy = copy.deepcopy(model)
            dense_now = {"val": evaluator(dense_copy), "test": evaluator.test(dense_copy)}
        dense_val = dense_now
        store.set_meta("dense_metrics", dense_val)
    console.print(f"[bold]{src.model}[/] on {src.data}: dense validation "
                  f"{task.describe(dense_val['val'])}")
    if (met := _dense_meets(settings, model, example, space, table, console)) is not None:
        summary = {"target": {b.text: {"metric": b.metric, "limit": b.limit}
                              for b in met["budgets"]},
                   "dense": {"costs": met["costs"], "metrics": {
                       metric: dense_val["val"][metric],
                       f"test_{metric}": dense_val["test"][metric]},
                       **({"measured": met["measured"]} if met["measured"] else {})},
                   "budgets_met": True, "dense_meets_budgets": True, "trials": 0,
                   "run_dir": str(run_dir), "data": task.data_info(),
                   **({"study": {"storage": masked(record["storage"]), "name": record["name"]}}
                      if record else {})}
        write_json(run_dir / "summary.json", summary)
        return summary
    alloc = allocate(model, example_inputs=example, target=settings.targets, evaluate=evaluator,
                     agent=settings.agent, trials=settings.trials, seed=settings.seed,
                     round_to=settings.space.round_to, min_ratio=settings.space.min_ratio,
                     space=space, objective=metric,
                     pareto=settings.objective == "pareto", run_dir=run_dir,
                     progress=settings.progress, latency_table=table, device=settings.device,
                     executor=executor, reward=settings.reward,
                     storage=record["storage"] if record else None,
                     storage_format=settings.space.storage_format, console=console)
    alloc = replace(alloc, resources={**(alloc.resources or {}), "build_s": round(built, 3)})
    return write_report(settings, run_dir, alloc, task=task, metric=metric, evaluator=evaluator,
                   dense_val=dense_val, table_info=table_info, record=record, console=console)


def _dense_meets(settings: SearchSettings, model: nn.Module, example: torch.Tensor,
                 space: SearchSpace, table: LatencyTable | None, console: Console
                 ) -> dict[str, Any] | None:
    """The dense network's figures when it already meets every budget (a latency budget:
    predicted within it, then measured within it), after saying so; else None."""
    problem = build_problem(space, parse_targets(settings.targets), table=table,
                            storage_format=settings.space.storage_format)
    costs = problem.dense_costs
    if not all(costs[b.metric] <= b.limit for b in problem.budgets):
        return None
    measured = None
    if table is not None:
        m = measure_latency(model, example, device=settings.device)
        if any(m.median_ms > b.limit for b in problem.budgets if b.metric == "latency_ms"):
            return None  # predicted within the budget but measured over it: search
        measured = measured_summary(m)
    figures = ", ".join(
        f"{b.text}: dense "
        + (f"{measured['latency_ms']:.2f} ms measured ({costs[b.metric]:.2f} predicted)"
           if b.metric == "latency_ms" and measured else f"{costs[b.metric]:,.0f} {b.metric}")
        + (f" <= {b.limit:.2f} ms" if b.metric == "latency_ms" else f" <= {b.limit:,.0f}")
        for b in problem.budgets)
    console.print(f"[bold green]The dense network already meets every budget[/] ({figures}); "
                  "nothing to prune, no search run. Ask for a tighter budget to prune it.",
                  highlight=False)
    return {"budgets": problem.budgets, "costs": dict(costs), "measured": measured}


def _load_task(*args: Any, dtype: str | None = None, **kwargs: Any) -> Task:
    """``load_task``, its model in ``dtype`` (a search's precision), its bad model/data pairs
    and dtypes as a ``SearchError``."""
    try:
        task = load_task(*args, **kwargs)
        return replace(task, model=in_dtype(task.model, dtype)) if dtype else task
    except ValueError as err:
        raise SearchError(str(err)) from None


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


def pick(run_dir: str | Path, target: str | Sequence[str], *, cache_dir: Path | None = None,
         console: Console | None = None) -> dict[str, Any]:
    """Choose from a finished run the best trial that meets ``target`` — typically from a Pareto
    run's front, for a budget decided after the search — without a new search: prune the dense
    model to it, score it (adaptive BN, validation and test), and write ``pick-<target>.json``
    and ``pick-<target>.pt`` into the run folder (``load_pruned(run_dir, choice=...)``)."""
    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    saved = read_run_settings(run_dir)
    targets = parse_targets(target)
    store = open_study(run_dir, study_record(run_dir))  # a shared store: from run.json
    task = _load_task(saved["model"], saved["data"], image_size=saved["image_size"],
                      width_mult=saved["width_mult"], cache_dir=cache_dir, progress=False,
                      model_args=tuple(saved.get("model_args", ())),
                      weights=saved.get("weights"), dtype=saved.get("dtype"))
    model = task.model
    example = as_example(task.example_inputs(1), model_dtype(model))
    evaluator = task.evaluator(calib_batches=saved["calib_batches"],
                               finetune_steps=saved["finetune_steps"], seed=saved["seed"],
                               user=saved.get("evaluator"))
    space = make_space(saved.get("space", "channel"), model, example,
                       round_to=saved["round_to"], min_ratio=saved["min_ratio"],
                       **space_options(SpaceSettings.from_recorded(saved), task,
                                       seed=saved["seed"]))
    space.keep_in(run_dir / "levels")  # the search's level store: read, never rebuilt
    problem = build_problem(space, targets, storage_format=saved.get("storage_format", "bitmap"),
                            value_bytes=value_bytes(model))
    records = store.records()
    best = best_record(records, problem)
    # A study with sensitivity curves (its probes) allocates this budget from them too.
    curve = _curve_trial(records, problem, model, objective=store.get_meta("objective")
                         or task.metric, evaluator=evaluator)
    if best is None and curve is None:
        finished = [r for r in records if not r.failed]
        cheapest = ", ".join(
            f"{b.metric} {min(r.costs[b.metric] for r in finished) / problem.dense_costs[b.metric]:.1%}"
            for b in problem.budgets) if finished else "no finished trial"
        raise SearchError(f"no trial of {run_dir} meets {', '.join(t.text for t in targets)} "
                          f"(cheapest: {cheapest} of dense); pick a looser target or run a "
                          "search for this budget")
    if curve is not None and (best is None or curve.objective > best.objective):
        best = curve
    pruned = space.apply(model, best.config)
    val = evaluator(pruned)
    test = evaluator.test(pruned)
    name = f"pick-{slug('_'.join(t.text for t in targets))}"
    choice = write_choice(
        run_dir / f"{name}.json", model=model, space=space, data=saved["data"],
        example_inputs=example, config=best.config,
        costs=best.costs, trial=None if best is curve else best.number,
        metrics=split_metrics(val, test),
        budgets=[asdict(b) for b in problem.budgets], weights=space.deployable(pruned),
        extra={**space_record(SpaceSettings.from_recorded(saved)),
               **({"dtype": saved["dtype"]} if saved.get("dtype", "float32") != "float32" else {})})
    console.print(
        (f"picked trial {best.number} of {len(records)}: " if best is not curve else
         f"picked the allocation of the study's sensitivity curves for this budget (better "
         f"than its {len(records)} trials): ")
        + ", ".join(f"{b.metric} {best.costs[b.metric] / problem.dense_costs[b.metric]:.1%} of "
                    f"dense (budget {b.text})" for b in problem.budgets)
        + f"; validation {task.describe(val)}, test {task.describe(test)}"
        f"\nwrote {run_dir / (name + '.json')} and {name}.pt")
    return {"run_dir": str(run_dir), "choice": name,
            "trial": None if best is curve else best.number,
            "costs": dict(best.costs), "metrics": choice["metrics"],
            "budgets_met": problem.feasible(best.costs),
            "units": {k: int(v) for k, v in best.config.items()},
            "files": {"choice": str(run_dir / f"{name}.json"),
                      "model": str(run_dir / f"{name}.pt")}}


def _curve_trial(records: Sequence[TrialRecord], problem: PruningProblem, model: nn.Module, *,
                 objective: str, evaluator: Evaluator) -> TrialRecord | None:
    """The knapsack's allocation for ``problem``'s budget from the sensitivity probes of a
    study (``agents.sensitivity``), scored now; ``None`` when the study has none, or when the
    allocation is a configuration the study already scored."""
    probes = [(np.asarray(r.point, dtype=float)[:problem.space.dim], _told(r))
              for r in records if r.extra.get("probe") and not r.failed]
    if not probes:
        return None
    context = agent_context(problem.space, model, needs={"budget"}, problem=problem)
    x = allocation_from_probes(context, probes)
    if x is None:
        return None
    x = problem.repair(x)
    config = problem.space.decode(x)
    if any(dict(r.config) == config for r in records):
        return None  # scored in the search: best_record has seen it
    metrics = evaluator(problem.space.apply(model, config))
    return TrialRecord(number=len(records), point=tuple(x), config=config,
                       costs=problem.costs(config), metrics=metrics,
                       objective=objective_value(metrics, objective),
                       extra={"from": "sensitivity curves"})


def _told(record: TrialRecord) -> dict[str, float]:
    return {"objective": record.objective,
            **{f"metric.{k}": float(v) for k, v in record.metrics.items()}}
