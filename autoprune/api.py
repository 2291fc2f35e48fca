"""The Python API: ``allocate`` finds the per-unit widths of any model for a budget, scored
by any evaluator (``Allocation`` is its result: ``apply`` it, ``save`` it as a run folder).
Whole runs of the command line are in ``autoprune.search_job`` (``search``) and
``autoprune.pick_run``; ``autoprune.run`` opens a run folder (``load_pruned``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from autoprune.agents import resolve_agent
from autoprune.allocation import Allocation
from autoprune.errors import SearchError
from autoprune.evaluator import Evaluator, as_evaluator
from autoprune.executors import EXECUTORS, Executor
from autoprune.latency.device import Device
from autoprune.latency.table import LatencyTable
from autoprune.phases import SearchCosts, space_progress
from autoprune.pipeline import check_agent, describe_problem, search_problem
from autoprune.placement import example_on, placed, resolve_device, to_device
from autoprune.precision import as_example, model_dtype, value_bytes
from autoprune.problem import build_problem
from autoprune.run_folder import check_run_folder, open_study
from autoprune.search_spaces import Criterion, SearchSpace, make_space
from autoprune.spaces import check_space, check_space_targets, criterion_options
from autoprune.settings import OBJECTIVES, SpaceSettings
from autoprune.study import StudyStore, check_storage
from autoprune.targets import parse_targets

__all__ = ["Allocation", "SearchError", "allocate"]

#: The entries of an evaluator's dict a search can optimise: accuracy (higher is better) or
#: loss (lower is better).
METRICS = ("accuracy", "loss")


def allocate(model: nn.Module, *, example_inputs: torch.Tensor | Sequence[torch.Tensor],
             target: str | Sequence[str],
             evaluate: Evaluator | Callable[[nn.Module], Mapping[str, float]],
             agent: str = "auto", trials: int = 30, seed: int = 0,
             space: str | SpaceSettings | SearchSpace = "channel",
             round_to: int | None = None, min_ratio: float | None = None,
             criterion: str | Criterion | None = None,
             space_options: Mapping[str, Any] | None = None, storage_format: str | None = None,
             calibration: Sequence[tuple[Any, Any]] | None = None,
             output: str | int | None = None, objective: str = "accuracy",
             metric: str | None = None, run_dir: str | Path | None = None, progress: bool = False,
             latency_table: LatencyTable | None = None, latency_device: Device | None = None,
             executor: str | Executor = "local", reward: str = "acc",
             storage: str | None = None, console: Console | None = None,
             dtype: str | torch.dtype | None = None,
             device: str | torch.device | None = None) -> Allocation:
    """Find how many channels each unit of ``model`` keeps so that every budget of ``target``
    is met and ``evaluate(pruned)`` is best. ``evaluate`` gets a pruned copy it may modify
    and returns a dict with ``accuracy`` (higher is better) or ``loss`` (lower is better); it
    is checked once before the first trial, in this process (not when ``metric=`` is given:
    for an evaluator that must run in the trials' workers only). It must prepare the network
    itself: a pruned network's BatchNorm statistics are the dense ones until re-estimated, so
    re-estimate them on a few training batches first (adaptive BN, as ``autoprune search``
    does) or its scores mislead the search.
    ``agent`` searches (``autoprune agents`` lists them); ``auto``, the default, measures each
    unit's sensitivity curve, allocates the budget from the curves and refines the allocation
    (``autoprune.agents.AUTO``; random search for ``objective="pareto"``).

    ``model`` is never modified. With ``run_dir`` the run folder is written as ``autoprune
    search`` writes it: the study in ``study.db`` (a repeated call with the same search
    resumes it; another search there is refused), run.json, and the chosen network in
    best.json, pruned.pt, pruned.pt2 and summary.json, which ``autoprune.load_pruned(run_dir,
    model=model)`` reads back; without, the study lives in memory (``Allocation.save(dir)``
    writes the same files later). ``storage`` (with ``run_dir``)
    keeps it in a shared database instead, an optuna RDB URL such as
    ``postgresql+psycopg://user@host/db``, under a study name of the folder's own (a folder
    whose run.json records a store uses that one). A latency budget is costed with
    ``latency_table`` (default: one built now for ``latency_device``, default torch, 1 thread,
    batch 1)
    and the chosen network is measured on this machine (``Allocation.latency``); a table timed
    on another device (``autoprune.latency.table_from_timings``) predicts for that device and
    nothing is measured here (``Allocation.latency["measured_here"]`` is False). ``executor``:
    ``"local"`` (in this process), ``"ray"`` (a local Ray, one trial per CPU) or an executor
    such as ``autoprune.executors.ray_tune.RayExecutor(workers=4, address="auto")``; with Ray,
    ``model`` and ``evaluate`` must pickle (cloudpickle: closures are fine). ``reward`` is what
    the RL agents (``ddpg``, ``td3``) learn from: ``"acc"`` or ``"acc-flops"``. ``objective`` is
    what the search looks for, as ``autoprune search --objective`` takes it: ``"accuracy"``
    (the best network within every budget) or ``"pareto"`` (the front of the metric against
    the first budget's cost, from the thinnest network up to that budget; an agent that
    handles two objectives). ``metric`` is the entry of evaluate's dict optimised,
    ``"accuracy"`` (higher is better) or ``"loss"`` (lower is better); default: accuracy when
    evaluate returns one, else loss. ``space`` is a
    registered space's name, a ``SpaceSettings`` (the name with its rounding, floor, criterion,
    levels, N:M patterns and storage format in one value) or a space already built on
    ``model``; ``round_to``, ``min_ratio``, ``criterion``, ``space_options`` and
    ``storage_format`` are the same options given one by one (not with a ``SpaceSettings``). ``output`` names the
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
    budgets count its bytes; default: the model's own. ``device`` is where the search works:
    ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (a GPU when torch sees one); the dense
    model is placed there once (a copy; ``model`` stays where it is), every trial's network is
    built there and ``evaluate`` receives it there, with a forward that moves tensor inputs
    there (move your targets to the outputs' device); default: where ``model`` is. It is not
    the latency target: that is ``latency_table`` / ``latency_device`` (``Device(backend=
    "cuda")`` for a GPU latency). ``resources`` on the result says where the time went and the
    peak memory.
    """
    _check_values(model, trials=trials, run_dir=run_dir, executor=executor,
                  latency_table=latency_table)
    place = _compute_device(device)
    try:
        model = placed(model, device=place, dtype=dtype)
    except ValueError as err:
        raise SearchError(str(err)) from None
    if dtype is not None:
        example_inputs = as_example(example_inputs, model_dtype(model))
    if place is not None:
        example_inputs = example_on(example_inputs, place)
        calibration = None if calibration is None else to_device(list(calibration), place)
    evaluator = as_evaluator(evaluate)
    if objective not in OBJECTIVES:
        raise SearchError(f"objective={objective!r}: the objective is what the search looks for, "
                          f"{' or '.join(map(repr, OBJECTIVES))}"
                          + ("; the entry of evaluate's dict to optimise is metric="
                             f"{objective!r}" if objective in METRICS else ""))
    if metric is not None and metric not in METRICS:
        raise SearchError(f"metric={metric!r}: the search optimises evaluate's "
                          f"{' or '.join(map(repr, METRICS))} (higher accuracy, lower loss)")
    pareto = objective == "pareto"
    targets = parse_targets(target)
    options = _space_settings(space, round_to=round_to, min_ratio=min_ratio,
                              criterion=criterion, space_options=space_options,
                              storage_format=storage_format)
    if isinstance(options, SpaceSettings):
        check_space(options, targets)  # a granularity, criterion and budgets that go together
    if storage is not None and run_dir is None:
        raise SearchError("storage= needs a run_dir: a run's study in a shared database is "
                          "named after its run folder")
    agent = resolve_agent(agent, objectives=2 if pareto else 1)
    check_agent(agent, pareto=pareto, reward=reward)  # bad names fail before any work
    folder = Path(run_dir) if run_dir is not None else None
    identity = None
    if folder is not None:
        identity = _identity(options, targets=[t.text for t in targets], agent=agent, seed=seed,
                             pareto=pareto)
        record = check_run_folder(folder, identity, write=False, storage=storage)
        if record is not None:  # an unreachable database fails before any work
            check_storage(record["storage"])
    costs = SearchCosts()
    say = console or Console(stderr=True)
    if isinstance(options, SpaceSettings):
        with space_progress(say, progress):
            searched = make_space(options.space, model, example_inputs,
                                  round_to=options.round_to, min_ratio=options.min_ratio,
                                  output=output, **options.options(),
                                  **criterion_options(options.space, criterion
                                                      if isinstance(criterion, Criterion)
                                                      else options.criterion, calibration))
        costs.build_s = time.perf_counter() - costs.started
    else:
        searched = options
        check_space_targets(searched.name, targets)
    started = time.perf_counter()
    with space_progress(say, progress):
        searched.prepare(model)  # once per search: a weight-sparse space's level store
    costs.prepare_s = time.perf_counter() - started
    table = None
    if any(t.metric == "latency_ms" for t in targets):
        table = latency_table or LatencyTable.build(model, example_inputs, space=searched,
                                                    device=latency_device)
        table.check_space(searched, source="latency_table")
    fmt = options.storage_format if isinstance(options, SpaceSettings) else \
        storage_format or "bitmap"
    started = time.perf_counter()
    problem = build_problem(searched, targets, table=table, storage_format=fmt,
                            value_bytes=value_bytes(model))
    costs.setup_s += time.perf_counter() - started
    if console is not None:
        describe_problem(problem, console)
    store = StudyStore.in_memory()
    if folder is not None:  # recorded once the search can start: a refused one leaves nothing
        folder.mkdir(parents=True, exist_ok=True)
        store = open_study(folder, check_run_folder(folder, identity, storage=storage,
                                                    made_by="allocate"))
    alloc = search_problem(problem, model=model, example=example_inputs, evaluator=evaluator,
                           store=store, agent=agent, trials=trials, seed=seed,
                           metric=metric, pareto=pareto, reward=reward, executor=executor,
                           progress=progress, console=console, costs=costs, table=table)
    if dtype:
        alloc = replace(alloc, dtype=str(model_dtype(model)).removeprefix("torch."))
    if folder is not None:
        alloc.save(folder, console=say)
    return alloc


def _compute_device(device: Any) -> torch.device | None:
    """``allocate``'s ``device=`` resolved (``None``: where the model is)."""
    if isinstance(device, Device):
        raise SearchError("device= is where the search works (cpu, cuda, cuda:N or auto); a "
                          "latency Device is what a latency is for: pass it as latency_device=")
    return None if device is None else resolve_device(device)


def _check_values(model: Any, *, trials: Any, run_dir: str | Path | None, executor: Any,
                  latency_table: Any) -> None:
    """The plain values ``allocate`` takes, refused before any work with the fix named."""
    if not isinstance(model, nn.Module):
        raise SearchError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SearchError(f"trials={trials!r}: give the number of trials, at least 1")
    if run_dir is not None and Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise SearchError(f"run_dir={str(run_dir)!r} is a file; pass a folder (new, or a run "
                          "folder to resume)")
    if isinstance(executor, str) and executor not in EXECUTORS:
        raise SearchError(f"unknown executor {executor!r}; use one of "
                          f"{', '.join(sorted(EXECUTORS))}, or an Executor such as "
                          "autoprune.executors.ray_tune.RayExecutor(workers=4)")
    if latency_table is not None and not isinstance(latency_table, LatencyTable):
        raise SearchError(f"latency_table must be a LatencyTable, not "
                          f"{type(latency_table).__name__}: load a saved one with "
                          "autoprune.LatencyTable.load(path)")


def _space_settings(space: str | SpaceSettings | SearchSpace, *, round_to: int | None,
                    min_ratio: float | None, criterion: str | Criterion | None,
                    space_options: Mapping[str, Any] | None,
                    storage_format: str | None) -> SpaceSettings | SearchSpace:
    """``space`` as one value: a built space as it is, a ``SpaceSettings`` as it is (refused
    beside the same options given one by one), a name with those options."""
    loose = {"round_to": round_to, "min_ratio": min_ratio, "space_options": space_options,
             "storage_format": storage_format,
             "criterion": criterion if isinstance(criterion, str) else None}
    given = [k for k, v in loose.items() if v is not None]
    if isinstance(space, SearchSpace):
        if given:
            raise SearchError(f"space= is a space already built, so {', '.join(given)} cannot "
                              "change it: build the space with them, or pass its name")
        return space
    if isinstance(space, SpaceSettings):
        if given:
            raise SearchError(f"the space's options are given twice (space=SpaceSettings(...) "
                              f"and {', '.join(given)}=): put them in the SpaceSettings")
        return space
    if not isinstance(space, str):
        raise SearchError(f"space= takes a space's name, a SpaceSettings or a built space, not "
                          f"{type(space).__name__}")
    extra = dict(space_options or {})
    unknown = sorted(set(extra) - {"levels", "nm", "include_ends"})
    if unknown:
        raise SearchError(f"unknown space_options {', '.join(unknown)}; a space takes levels, "
                          "nm and include_ends")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in extra.items()}
    if isinstance(criterion, str):
        fields["criterion"] = criterion
    try:
        return SpaceSettings(space=space, round_to=8 if round_to is None else round_to,
                             min_ratio=min_ratio, storage_format=storage_format or "bitmap",
                             **fields)
    except (TypeError, ValueError) as err:
        raise SearchError(f"bad space options: {err}") from None


def _identity(space: SpaceSettings | SearchSpace, *, targets: list[str], agent: str,
              seed: int, pareto: bool) -> dict[str, Any]:
    """What an ``allocate`` run folder records and a resume must match."""
    if isinstance(space, SpaceSettings):
        shape = {"space": space.space, "round_to": space.round_to,
                 "min_ratio": space.min_ratio, **space.recorded()}
    else:
        shape = {"space": space.name, "round_to": space.round_to, "min_ratio": space.min_ratio}
    return {**shape, "targets": targets, "agent": agent, "seed": seed,
            **({"objective": "pareto"} if pareto else {})}
