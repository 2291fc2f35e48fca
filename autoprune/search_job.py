"""``search``: a whole run of ``autoprune search`` on a zoo model (or a factory of the user's)
and an embedded dataset. It trains or loads the baseline, builds the evaluator, the space, the
latency table and the problem once, records the run folder only once the search can start,
runs the one pipeline (``autoprune.pipeline``) and writes the report (``run_report``)."""

from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from autoprune.agents import resolve_agent
from autoprune.errors import SearchError
from autoprune.executors import Executor, make_executor
from autoprune.latency.cache import table_for_search
from autoprune.latency.measure import measure_latency
from autoprune.latency.table import LatencyTable
from autoprune.phases import SearchCosts, space_progress
from autoprune.pipeline import check_agent, describe_problem, search_problem
from autoprune.placement import describe_compute, example_on, placed, resolve_device
from autoprune.precision import as_example, model_dtype, parse_dtype, value_bytes
from autoprune.problem import PruningProblem, build_problem
from autoprune.run import Run
from autoprune.run_folder import check_run_folder, describe_study, open_study, write_json
from autoprune.run_report import measured_summary, write_report
from autoprune.search_spaces import make_space
from autoprune.settings import OBJECTIVES, SearchSettings
from autoprune.spaces import check_space, space_options
from autoprune.study import StudyStore, check_storage, masked
from autoprune.targets import Target, parse_targets
from autoprune.zoo.tasks import Task, load_task
from autoprune.zoo.train import default_cache_dir

__all__ = ["search"]


def search(settings: SearchSettings, *, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) a whole search on a zoo model and an embedded dataset, write the run
    folder, and return its JSON summary. Every bad setting is refused before any work, and a
    refused or failed start leaves no folder behind that would refuse the corrected retry."""
    console = console or Console(stderr=True)
    if settings.objective not in OBJECTIVES:
        raise SearchError(f"unknown objective {settings.objective!r}; use one of "
                          f"{', '.join(OBJECTIVES)}")
    settings = replace(settings, agent=resolve_agent(
        settings.agent, objectives=2 if settings.objective == "pareto" else 1))
    # Unknown agents, or a single-objective agent for a Pareto search, fail before training.
    check_agent(settings.agent, pareto=settings.objective == "pareto", reward=settings.reward)
    targets = parse_targets(settings.targets)
    check_space(settings.space, targets)
    try:  # a bad --dtype fails before a baseline is trained
        parse_dtype(settings.source.dtype)
    except ValueError as err:
        raise SearchError(str(err)) from None
    ex = settings.executor
    place = resolve_device(ex.device)  # --device cuda without a GPU fails before any work
    if ex.executor == "ray" and place.type == "cuda" and not ex.gpus_per_trial:
        console.print("[yellow]note:[/] the Ray trials hold no GPU (--gpus-per-trial 0), so they "
                      "run on their workers' CPUs; give each a share, e.g. --gpus-per-trial 0.5, "
                      "to score them on GPUs", highlight=False)
    executor = make_executor(ex.executor, workers=ex.workers, address=ex.ray_address,
                             cpus_per_trial=ex.cpus_per_trial,
                             gpus_per_trial=ex.gpus_per_trial)
    run_dir = Path(settings.run_dir or settings.default_run_dir())
    created = not run_dir.exists()
    record = check_run_folder(run_dir, settings.identity(), write=False,
                              storage=settings.storage)
    if record is not None:  # an unreachable or unusable database fails before any work
        check_storage(record["storage"])
    try:
        executor.start()  # an unreachable cluster fails here, before a baseline is trained
        return _search(settings, targets, executor, run_dir, console, place)
    except BaseException:
        if created:
            _discard_unstarted(run_dir)
        raise
    finally:
        executor.close()


def _discard_unstarted(run_dir: Path) -> None:
    """Remove a run folder this command made when no trial finished in it."""
    if not run_dir.exists():
        return
    db = run_dir / "study.db"
    if db.exists():
        try:
            if StudyStore.in_folder(run_dir).records():
                return  # trials to resume from
        except Exception:  # noqa: BLE001 - an unreadable new store holds nothing to keep
            pass
    shutil.rmtree(run_dir, ignore_errors=True)


def _search(settings: SearchSettings, targets: list[Target], executor: Executor, run_dir: Path,
            console: Console, place: torch.device) -> dict[str, Any]:
    src = settings.source
    task = _load_task(src.model, src.data, image_size=src.image_size,
                      width_mult=src.width_mult, cache_dir=settings.cache_dir,
                      progress=settings.progress, model_args=src.model_args,
                      weights=src.weights, dtype=src.dtype, device=place)
    if place.type != "cpu":
        console.print(f"working on {describe_compute(place)}", highlight=False)
    resumed = (run_dir / "run.json").is_file()
    if resumed:  # trials scored on other dense weights are refused, before any work
        Run.open(run_dir).check_baseline(task)
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
        except SearchError:
            raise  # what it returned is not metrics: that message names the fix
        except Exception as err:  # noqa: BLE001 - the user's function: one error, before work
            raise SearchError(f"the evaluator {settings.scoring.evaluator} failed on the dense "
                              f"model ({type(err).__name__}: {err})") from None
        metric = "accuracy" if "accuracy" in dense_now["val"] else "loss"
        if not math.isfinite(dense_now["val"][metric]):
            raise SearchError(f"the evaluator {settings.scoring.evaluator} returned {metric} "
                              f"{dense_now['val'][metric]} for the dense model: the search "
                              f"needs a finite {metric}. Fix the evaluator")
    example = example_on(as_example(task.example_inputs(1), model_dtype(model)), place)
    costs = SearchCosts()
    with space_progress(console, settings.progress):
        space = make_space(settings.space.space, model, example,
                           round_to=settings.space.round_to, min_ratio=settings.space.min_ratio,
                           output=src.output, **space_options(settings.space, task,
                                                              seed=settings.seed))
    costs.build_s = time.perf_counter() - costs.started
    store = open_study(run_dir, check_run_folder(run_dir, settings.identity(), write=False,
                                                 storage=settings.storage)) if resumed else None
    table = table_info = None
    if settings.has_latency_target():
        # a resumed search costs with the speed it started with, so its trials stay comparable
        table, table_info = table_for_search(
            model, example, space, lut=settings.lut,
            cache_dir=Path(settings.cache_dir or default_cache_dir()), device=settings.device,
            console=console, speed=store.get_meta("latency_speed") if store else None)
    # One problem; an unreachable budget is refused here, before the folder is recorded.
    started = time.perf_counter()
    problem = build_problem(space, targets, table=table,
                            storage_format=settings.space.storage_format,
                            value_bytes=value_bytes(model))
    costs.setup_s += time.perf_counter() - started
    run_dir.mkdir(parents=True, exist_ok=True)
    sha = task.weights_hash()
    record = check_run_folder(run_dir, settings.identity(), storage=settings.storage,
                              baseline={"sha256": sha, "path": str(task.baseline.get(
                                  "weights_path"))} if sha else None)
    if record is not None:
        console.print(describe_study(run_dir, record), highlight=False)
    space.keep_in(run_dir / "levels")  # a weight-sparse run's level store, read on resume
    started = time.perf_counter()
    space.prepare(model)
    costs.prepare_s = time.perf_counter() - started
    store = store or open_study(run_dir, record)
    if table is not None:
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
    if (met := _dense_meets(settings, problem, model, example, table, console)) is not None:
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
    describe_problem(problem, console)
    alloc = search_problem(problem, model=model, example=example, evaluator=evaluator,
                           store=store, agent=settings.agent, trials=settings.trials,
                           seed=settings.seed, metric=metric,
                           pareto=settings.objective == "pareto", reward=settings.reward,
                           executor=executor, progress=settings.progress, console=console,
                           costs=costs, table=table)
    return write_report(settings, run_dir, alloc, task=task, metric=metric, evaluator=evaluator,
                        dense_val=dense_val, table_info=table_info, record=record,
                        console=console)


def _dense_meets(settings: SearchSettings, problem: PruningProblem, model: nn.Module,
                 example: torch.Tensor, table: LatencyTable | None, console: Console
                 ) -> dict[str, Any] | None:
    """The dense network's figures when it already meets every budget (a latency budget:
    predicted within it, then measured within it), after saying so; else None."""
    costs = problem.dense_costs
    if not all(costs[b.metric] <= b.limit for b in problem.budgets):
        return None
    measured = None
    if table is not None and not table.remote:
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


def _load_task(*args: Any, dtype: str | None = None, device: torch.device | None = None,
               **kwargs: Any) -> Task:
    """``load_task``, its model in ``dtype`` (a search's precision) on ``device`` (where the
    search works), its bad model/data pairs and dtypes as a ``SearchError``."""
    try:
        task = load_task(*args, device=device, **kwargs)  # a baseline trains there too
        return replace(task, model=placed(task.model, device=device, dtype=dtype)) \
            if dtype or device is not None else task
    except ValueError as err:
        raise SearchError(str(err)) from None
