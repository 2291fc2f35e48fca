"""Which channels go, and how the chosen network recovers: every criterion, side by side.

For each model (ResNet-20 on digits at 16 px, the character-level GPT on the python-stdlib
corpus) and each MACs budget (30%, 50%), one allocation is fixed for everyone: the uniform
heuristic's, repaired to the budget. Every registered criterion then ranks the channels of
every unit, and the network it prunes is scored (adaptive BN, validation split):

- before recovery, without and with the training-free least-squares refit of the next layers
  (``autoprune.reconstruct``, on the same training-split calibration batches the data-driven
  criteria rank on);
- after an equal recovery budget (``--steps`` optimizer steps on the training split) for each
  recipe: plain fine-tune, distillation from the dense network, gradual (AGP's cubic schedule
  from the dense network to the allocation).

Then the search itself runs under the two best criteria (after fine-tune) at 50% MACs: does the
best allocation change with the criterion? Images report validation accuracy (higher is
better), text validation loss in nats per character (lower is better).

    python benchmarks/criteria.py --quick        # ResNet-20 only, 30% MACs, 60 steps
    python benchmarks/criteria.py                # both models, both budgets: ~30-60 min, 2 cores

Writes benchmarks/results/criteria.json (criteria-quick.json with --quick) and prints tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from autoprune.api import allocate
from autoprune.reconstruct import reconstruct
from autoprune.recover import recover
from autoprune.search_spaces import criterion_names, make_criterion, make_space
from autoprune.zoo.tasks import Task, load_task

RESULTS = Path(__file__).parent / "results"
MODELS = {"resnet20": ("digits", 16), "chargpt": ("python-stdlib", 32)}
RECIPES = ("finetune", "distill", "gradual")


def _metric(task: Task) -> str:
    return task.metric  # "accuracy" (higher is better) or "loss" (lower is better)


def _better(task: Task, a: float, b: float) -> bool:
    return a > b if task.metric == "accuracy" else a < b


def _recover(task: Task, pruned: torch.nn.Module, *, recipe: str, steps: int, evaluator: Any,
             space: Any, config: dict[str, int], seed: int) -> tuple[float, float]:
    """The validation score after ``steps`` of ``recipe``, and the seconds it took."""
    optimizer = str((task.baseline.get("recipe") or {}).get("optimizer", "sgd"))
    if task.metric == "loss":
        optimizer = "adamw"
    start = time.perf_counter()
    out = recover(copy.deepcopy(pruned), data=task.data, steps=steps, evaluate=evaluator,
                  dense=task.model, distill=recipe == "distill", gradual=recipe == "gradual",
                  space=space, config=config, optimizer=optimizer, seed=seed)
    return float(out.after[task.metric]), time.perf_counter() - start


def run_model(name: str, *, budgets: Sequence[int], steps: int, recipes: Sequence[str],
              criteria: Sequence[str], search_trials: int, seed: int,
              console: Console) -> dict[str, Any]:
    data, size = MODELS[name]
    task = load_task(name, data, image_size=size, progress=False)
    model, metric = task.model.eval(), task.metric
    evaluator = task.evaluator(calib_batches=16, seed=seed)
    example = task.example_inputs(1)
    calibration = task.calibration_batches(8, seed=seed)
    dense = float(evaluator(copy.deepcopy(model))[metric])
    console.print(f"[bold]{name}[/] on {data}: dense validation {metric} {dense:.4f}")
    rows: list[dict[str, Any]] = []
    for budget in budgets:
        alloc = allocate(model, example_inputs=example, target=f"flops={budget}%",
                         evaluate=evaluator, agent="uniform", trials=1, seed=seed)
        config = dict(alloc.config)
        for crit in criteria:
            row: dict[str, Any] = {"model": name, "budget": f"flops={budget}%",
                                   "criterion": crit}
            try:
                space = make_space("channel", model, example,
                                   criterion=make_criterion(crit, calibration=calibration))
                pruned = space.apply(model, config)
            except ValueError as err:  # e.g. bn-scale on a network without norms in its units
                row["skipped"] = str(err).splitlines()[0]
                rows.append(row)
                console.print(f"  {budget}% {crit}: skipped ({row['skipped'][:90]})")
                continue
            row["before"] = float(evaluator(copy.deepcopy(pruned))[metric])
            refit = copy.deepcopy(pruned)
            report = reconstruct(refit, model, [x for x, _ in calibration])
            row["reconstructed"] = float(evaluator(copy.deepcopy(refit))[metric])
            row["refitted_layers"] = len(report.refitted)
            for recipe in recipes:
                score, seconds = _recover(task, pruned, recipe=recipe, steps=steps,
                                          evaluator=evaluator, space=space, config=config,
                                          seed=seed)
                row[recipe], row[f"{recipe}_s"] = score, seconds
            rows.append(row)
            console.print(f"  {budget}% {crit}: " + ", ".join(
                f"{k} {row[k]:.4f}" for k in ("before", "reconstructed", *recipes)))
    searches = _searches(task, rows, budget=max(budgets), trials=search_trials, seed=seed,
                         evaluator=evaluator, calibration=calibration, console=console) \
        if search_trials else []
    return {"model": name, "data": data, "image_size": size, "metric": metric,
            "dense": dense, "rows": rows, "searches": searches}


def _searches(task: Task, rows: list[dict[str, Any]], *, budget: int, trials: int, seed: int,
              evaluator: Any, calibration: list, console: Console) -> list[dict[str, Any]]:
    """TPE under the two criteria best after fine-tune at ``budget``: the allocations found."""
    done = [r for r in rows if r["budget"] == f"flops={budget}%" and "finetune" in r]
    sign = -1.0 if task.metric == "accuracy" else 1.0
    best = [r["criterion"] for r in sorted(done, key=lambda r: sign * r["finetune"])[:2]]
    out = []
    for crit in best:
        space = make_space("channel", task.model, task.example_inputs(1),
                           criterion=make_criterion(crit, calibration=calibration))
        start = time.perf_counter()
        alloc = allocate(task.model, example_inputs=task.example_inputs(1),
                         target=f"flops={budget}%", evaluate=evaluator, agent="tpe",
                         trials=trials, seed=seed, space=space)
        ratios = {u: round(v["ratio"], 3) for u, v in alloc.units.items()}
        out.append({"criterion": crit, "trials": trials, "best": float(alloc.metrics[task.metric]),
                    "ratios": ratios, "seconds": time.perf_counter() - start})
        console.print(f"  search under {crit}: best {alloc.metrics[task.metric]:.4f}")
    if len(out) == 2:
        a, b = (np.array(list(o["ratios"].values())) for o in out)
        out.append({"mean_abs_ratio_difference": float(np.abs(a - b).mean()),
                    "max_abs_ratio_difference": float(np.abs(a - b).max())})
    return out


def _tables(results: list[dict[str, Any]], recipes: Sequence[str], console: Console) -> None:
    for res in results:
        arrow = "higher" if res["metric"] == "accuracy" else "lower"
        table = Table(title=f"{res['model']} ({res['data']}): validation {res['metric']} "
                            f"({arrow} is better; dense {res['dense']:.4f})")
        for col in ("budget", "criterion", "before", "+ least squares", *recipes):
            table.add_column(col, justify="left" if col in ("budget", "criterion") else "right")
        for r in res["rows"]:
            if "skipped" in r:
                table.add_row(r["budget"], r["criterion"], "skipped: " + r["skipped"][:60],
                              *[""] * (1 + len(recipes)))
                continue
            table.add_row(r["budget"], r["criterion"], f"{r['before']:.4f}",
                          f"{r['reconstructed']:.4f}", *[f"{r[k]:.4f}" for k in recipes])
        console.print(table)
        searches = [s for s in res["searches"] if "criterion" in s]
        if searches:
            diff = res["searches"][-1] if len(res["searches"]) == 3 else {}
            console.print(
                "search under the two best criteria: " + "; ".join(
                    f"{s['criterion']}: best {s['best']:.4f} ({s['trials']} trials)"
                    for s in searches)
                + (f"; allocations differ by {diff['mean_abs_ratio_difference']:.3f} per unit on "
                   f"average (max {diff['max_abs_ratio_difference']:.3f})" if diff else ""))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--budgets", nargs="*", type=int, default=[30, 50],
                        help="MACs budgets, percent of dense")
    parser.add_argument("--criteria", nargs="*", default=None, help="default: every registered")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=200, help="recovery steps (equal for all)")
    parser.add_argument("--search-trials", type=int, default=40,
                        help="trials of each search under the two best criteria (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default=None,
                        help="results file benchmarks/results/criteria-TAG.json")
    parser.add_argument("--quick", action="store_true",
                        help="ResNet-20 only, 30%% MACs, 60 steps, 20 search trials")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.budgets, args.steps, args.search_trials = ["resnet20"], [30], 60, 20
    criteria = args.criteria or list(criterion_names())
    torch.set_num_threads(1)
    console = Console(width=150)
    start = time.perf_counter()
    results = [run_model(m, budgets=args.budgets, steps=args.steps, recipes=args.recipes,
                         criteria=criteria, search_trials=args.search_trials, seed=args.seed,
                         console=console) for m in args.models]
    _tables(results, args.recipes, console)
    out = {"host": platform.processor() or platform.machine(), "torch": torch.__version__,
           "command": "python benchmarks/criteria.py " + " ".join(argv if argv is not None
                                                                 else sys.argv[1:]),
           "steps": args.steps, "budgets": args.budgets, "recipes": args.recipes,
           "seconds": time.perf_counter() - start, "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = args.tag or ("quick" if args.quick else None)
    path = RESULTS / (f"criteria-{tag}.json" if tag else "criteria.json")
    path.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
