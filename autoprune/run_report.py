"""What a whole search (``autoprune search``) leaves for people: the chosen network scored on
validation and test, the run folder's files (best.json, pruned.pt, pruned.pt2, pareto.png,
summary.json) and the tables printed at the end. ``api.search`` runs the search; this writes
what it found."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from autoprune.allocation import Allocation
from autoprune.coverage import space_coverage
from autoprune.evaluator import Evaluator
from autoprune.export import save_program
from autoprune.latency.measure import LatencyMeasurement
from autoprune.latency.verify import LatencyCheck
from autoprune.pareto import front_summary
from autoprune.problem import PruningProblem
from autoprune.report import front_table, latency_check_view, pareto_plot, trials_table, units_table
from autoprune.run_folder import describe_study, write_choice, write_json, write_sparse
from autoprune.settings import SearchSettings, SpaceSettings
from autoprune.study import masked
from autoprune.targets import parse_targets
from autoprune.zoo.tasks import Task

__all__ = ["measured_summary", "space_record", "split_metrics", "write_report"]


def space_record(space: SpaceSettings) -> dict[str, Any]:
    """What a chosen-network JSON holds of a weight-sparsity space, so that it rebuilds."""
    if not space.prunes_weights:
        return {}
    return {"space": space.space, "space_options": space.options(),
            "storage_format": space.storage_format}


def split_metrics(val: Mapping[str, float], test: Mapping[str, float]) -> dict[str, float]:
    """``val_<name>`` and ``test_<name>`` of every metric, as best.json records them."""
    return {**{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()}}


def write_report(settings: SearchSettings, run_dir: Path, alloc: Allocation, *, task: Task,
            metric: str, evaluator: Evaluator, dense_val: Mapping[str, Any], table_info: Mapping[str, Any] | None,
            console: Console, record: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Score the chosen network on validation and test, write the run folder's files and
    print the tables people read."""
    problem, records, check, pareto = alloc.problem, list(alloc.trials), alloc.check, alloc.pareto
    assert problem is not None
    model = task.model
    space, targets = alloc.space, parse_targets(settings.targets)
    pruned = space.apply(model, alloc.config)
    val = evaluator(pruned)  # recalibrates BN, as every candidate was scored
    test = evaluator.test(pruned)
    best = alloc.chosen
    dense: dict[str, Any] = {"costs": problem.dense_costs,
                             "metrics": {f"val_{metric}": dense_val["val"][metric],
                                         f"test_{metric}": dense_val["test"][metric]}}
    extra: dict[str, Any] = {"dense": dense, "criterion": settings.space.criterion,
                             **({"dtype": settings.source.dtype}
                                if settings.source.dtype != "float32" else {}),
                             **space_record(settings.space)}
    delivered = space.deployable(pruned)  # a weight-sparse network: masks baked in
    if check:
        extra["measured"] = measured_summary(check.best_measurement())
        dense["measured"] = measured_summary(check.dense)
    choice = write_choice(
        run_dir / "best.json", model=model, space=space, data=settings.source.data,
        example_inputs=task.example_inputs(1), config=alloc.config,
        costs=alloc.costs, trial=best.number if best else None,
        metrics=split_metrics(val, test),
        budgets=[asdict(b) for b in problem.budgets], weights=delivered,
        weights_file="pruned.pt", extra=extra)
    program = save_program(delivered, task.example_inputs(1), run_dir / "pruned.pt2", console)
    plot = pareto_plot(records, run_dir / "pareto.png", dense_costs=problem.dense_costs,
                       dense_objective=dense_val["val"][metric], budgets=problem.budgets,
                       objective=metric, best=best,
                       title=f"{settings.source.model} on {settings.source.data}, {', '.join(settings.targets)}, "
                             f"agent {settings.agent}")
    summary = {
        "target": {t.text: {"metric": t.metric, "limit": b.limit}
                   for t, b in zip(targets, problem.budgets)},
        "dense": {"costs": problem.dense_costs,
                  "metrics": {metric: dense_val["val"][metric],
                              f"test_{metric}": dense_val["test"][metric]}},
        "best": {"costs": alloc.costs,
                 "metrics": {**val, **{f"test_{k}": v for k, v in test.items()}},
                 "units": {k: int(v) for k, v in alloc.config.items()},
                 "ratios": {k: round(u["ratio"], 4) for k, u in alloc.units.items()},
                 "trial": choice["trial"]},
        "budgets_met": problem.feasible(alloc.costs) and (check is None or check.met),
        "criterion": settings.space.criterion,
        "trials": len(records),
        "failed_trials": sum(r.failed for r in records),
        # where the time went (space building, pruning, evaluating) and the peak memory
        "resources": dict(alloc.resources or {}),
        "baseline": {"cached": bool(task.baseline.get("cached")),
                     "epochs": task.baseline.get("epochs"), **(
                         {"steps": task.baseline["steps"]} if "steps" in task.baseline else {})},
        "data": task.data_info(),
        "run_dir": str(run_dir),
        "files": {"study": masked(record["storage"]) if record else str(run_dir / "study.db"),
                  "choice": str(run_dir / "best.json"),
                  "model": str(run_dir / "pruned.pt"), "plot": str(plot),
                  "program": program},
    }
    if settings.space.prunes_weights:  # the compressed file, and what size= predicted
        summary["sparse"] = write_sparse(run_dir, delivered, space.layer_table(alloc.config),
                                         storage_format=settings.space.storage_format)
        summary["files"]["sparse"] = summary["sparse"]["file"]
        console.print(
            f"{summary['sparse']['sparsity']:.1%} of the prunable weights are zero; MACs count "
            f"non-zero weights only ({summary['sparse']['macs_nonzero'] / 1e6:.2f}M of "
            f"{summary['sparse']['dense_equivalent_macs'] / 1e6:.2f}M dense-equivalent); "
            f"pruned.sparse.pt ({settings.space.storage_format}) is "
            f"{summary['sparse']['bytes']:,} bytes, {summary['sparse']['predicted_bytes']:,} "
            "predicted", highlight=False)
    if record is not None:  # a shared store: the URL as it may be printed, and the name
        summary["study"] = {"storage": masked(record["storage"]), "name": record["name"]}
    if pareto is not None:
        # accuracy is bounded below by 0; a loss front is measured from its worst trial
        worst = min((r.objective for r in records if not r.failed), default=0.0)
        front = front_summary(records, metric=pareto.metric, dense_cost=pareto.dense,
                              ref_cost=pareto.high,
                              ref_objective=0.0 if metric == "accuracy" else worst)
        write_json(run_dir / "front.json", front)
        summary["front"] = {"metric": pareto.metric, "hypervolume": front["hypervolume"],
                            "reference": front["reference"], "points": len(front["points"]),
                            "range": [pareto.low, pareto.high]}
        summary["files"]["front"] = str(run_dir / "front.json")
        console.print(front_table(front, dense_objective=dense_val["val"][metric],
                                  objective=metric))
    if check:
        summary["dense"]["measured"] = measured_summary(check.dense)
        summary["best"]["measured"] = measured_summary(check.best_measurement())
        summary["latency"] = _latency_summary(check, problem, table_info)
    elif table_info and table_info.get("remote"):
        summary["latency"] = _remote_summary(alloc.costs, problem, table_info)
    write_json(run_dir / "space.json", space_coverage(space, model))  # as autoprune space shows
    summary["files"]["space"] = str(run_dir / "space.json")
    write_json(run_dir / "summary.json", summary)
    console.print(trials_table(records, dense_costs=problem.dense_costs, objective=metric))
    if check:
        console.print(latency_check_view(check))
    console.print(units_table(alloc.units, title="chosen " + {
        "channel": "channels", "unstructured": "weights", "nm": "weights"}.get(
        settings.space.space, "channels and weights") + " per unit"))
    console.print(
        f"chosen: trial {choice['trial']}, {100 * alloc.costs['macs'] / problem.dense_costs['macs']:.1f}% "
        f"MACs, {100 * alloc.costs['params'] / problem.dense_costs['params']:.1f}% params; "
        f"validation {task.describe(val)}, test {task.describe(test)} "
        f"(dense: test {task.describe(dense_val['test'])}), {_scored_after(task, settings)}.\n"
        f"run folder: {run_dir}  ({'' if record else 'study.db, '}best.json, pruned.pt"
        + (", pruned.pt2" if program else "")
        + (", pruned.sparse.pt" if settings.space.prunes_weights else "")
        + ", pareto.png, summary.json, space.json"
        + (", front.json)" if pareto else ")")
        + (f"\n{describe_study(run_dir, record)}; serve it with optuna-dashboard "
           f"'{masked(record['storage'])}'"
           + (" (your password in place of ***)"
              if masked(record["storage"]) != record["storage"] else "") if record else ""),
        highlight=False)
    if not check and table_info and table_info.get("remote"):
        console.print(f"chosen network: {alloc.costs['latency_ms']:.3g} ms (budget "
                      f"{summary['latency']['limit_ms']:.3g} ms) {table_info['note']}. Check it there: "
                      f"autoprune export {run_dir} -o chosen.onnx, then on the device python "
                      "time_on_device.py --model chosen.onnx", highlight=False)
    if check and not check.met:
        console.print(
            f"[bold red]latency budget missed:[/] no candidate measured within "
            f"{check.limit_ms:.2f} ms (chosen trial {check.chosen.number} measured "
            f"{check.best_measurement().median_ms:.2f} ms). Other load on this machine slows "
            "measurements; rebuild the table when it is quiet (autoprune profile), or ask for "
            "a little more latency.")
    return summary


def _scored_after(task: Task, settings: SearchSettings) -> str:
    """What every score was taken after (the chosen network's, too)."""
    steps = settings.scoring.finetune_steps
    tune = f"a {steps}-step fine-tune" if steps else "no fine-tune"
    return f"after adaptive BN, {tune}" if task.metric == "accuracy" else f"after {tune}"


def measured_summary(m: LatencyMeasurement) -> dict[str, float]:
    return {"latency_ms": round(m.median_ms, 4), "p10_ms": round(m.p10_ms, 4),
            "p90_ms": round(m.p90_ms, 4), "wall_median_ms": round(m.wall_median_ms, 4)}


def _remote_summary(costs: Mapping[str, float], problem: PruningProblem,
                    table_info: Mapping[str, Any]) -> dict[str, Any]:
    """A latency budget costed with a table measured on another device: predicted for it,
    not measured here."""
    budget = next(b for b in problem.budgets if b.metric == "latency_ms")
    return {"device": dict(table_info["device"]), "limit_ms": budget.limit,
            "search_limit_ms": budget.search_limit, "margin": budget.margin,
            "predicted_ms": costs["latency_ms"], "measured_here": False,
            "note": table_info["note"], "table": {k: v for k, v in table_info.items()
                                                  if k not in ("device", "note")}}


def _latency_summary(check: LatencyCheck, problem: PruningProblem,
                     table_info: Mapping[str, Any] | None) -> dict[str, Any]:
    budget = next(b for b in problem.budgets if b.metric == "latency_ms")
    return {"device": check.dense.device, "limit_ms": budget.limit,
            "search_limit_ms": budget.search_limit, "margin": budget.margin,
            "met_when_measured": check.met, "misses": check.misses,
            "table": dict(table_info or {}),
            "checked": [{"trial": n, "rank": check.rank.get(n), "predicted_ms": check.predicted[n],
                         **measured_summary(m)} for n, m in check.measured.items()]}
