"""Per-layer budgets for single weights and N:M patterns: every heuristic and search agent on
the same work, and the weight criteria side by side.

For each model (ResNet-20 and the ViT on digits at 16 px, the character-level GPT on the
python-stdlib corpus), each setting (unstructured at 80%, 90% and 95% sparsity of the
prunable weights; N:M with the patterns 2:4 and 1:4 at 50%, the share 2:4 keeps), and each
agent (the heuristics uniform, global magnitude, LAMP, ERK and OWL in their native, per-weight
form, then TPE, evolution and td3), the search runs through the real loop
(``autoprune.allocate``: repair to the budget, de-duplication) with ``--trials`` evaluations
at most (heuristics stop by themselves), ranking weights by magnitude. Reported: the best
validation score of the search (adaptive BN, masks in place) and the same network after an
equal fine-tune (``--finetune`` steps on the training split, masks kept). A second table
prunes the uniform allocation with each weight criterion (magnitude, Wanda, SparseGPT).

Images report validation accuracy (higher is better), text validation loss in nats per
character (lower is better).

    python benchmarks/sparsity.py --quick       # ResNet-20, 90% and 2:4, 12 evaluations
    python benchmarks/sparsity.py               # all three models: about an hour on 2 cores

Writes benchmarks/results/sparsity.json (sparsity-quick.json with --quick) and prints tables.
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

import torch
from rich.console import Console
from rich.table import Table

from autoprune.agents import AGENTS
from autoprune.api import allocate
from autoprune.search_spaces import make_space
from autoprune.zoo.tasks import load_task

RESULTS = Path(__file__).parent / "results"
MODELS = {"resnet20": ("digits", 16), "vit": ("digits", 16), "chargpt": ("python-stdlib", 32)}
#: (name, space, options, target)
SETTINGS = {
    "80%": ("unstructured", {}, "sparsity=80%"),
    "90%": ("unstructured", {}, "sparsity=90%"),
    "95%": ("unstructured", {}, "sparsity=95%"),
    "2:4": ("nm", {"nm": ("2:4", "1:4")}, "sparsity=50%"),
}
HEURISTICS = ("uniform", "global", "lamp", "erk", "owl")
SEARCHES = ("tpe", "evolution", "td3")
CRITERIA = ("magnitude", "wanda", "sparsegpt")


def run_model(name: str, *, settings: Sequence[str], agents: Sequence[str], trials: int,
              finetune: int, seed: int, console: Console) -> dict[str, Any]:
    data, size = MODELS[name]
    task = load_task(name, data, image_size=size, progress=False)
    model, metric = task.model.eval(), task.metric
    example = task.example_inputs(1)
    evaluator = task.evaluator(calib_batches=16, seed=seed)
    tuned = task.evaluator(calib_batches=16, finetune_steps=finetune, seed=seed)
    calibration = task.calibration_batches(8, seed=seed)
    dense = float(evaluator(copy.deepcopy(model))[metric])
    console.print(f"[bold]{name}[/] on {data}: dense validation {metric} {dense:.4f}")
    rows: list[dict[str, Any]] = []
    crit_rows: list[dict[str, Any]] = []
    for setting in settings:
        kind, options, target = SETTINGS[setting]
        space = make_space(kind, model, example, **options)
        for agent in agents:
            start = time.perf_counter()
            alloc = allocate(model, example_inputs=example, target=target, evaluate=evaluator,
                             agent=agent, trials=trials, seed=seed, space=space)
            pruned = space.apply(model, alloc.config)
            after = float(tuned(pruned)[metric])
            row = {"model": name, "setting": setting, "agent": agent, "trials": len(alloc.trials),
                   "best": float(alloc.metrics[metric]), "finetuned": after,
                   "sparsity": 1 - alloc.costs["weights"] / alloc.dense_costs["weights"],
                   "macs": alloc.costs["macs"] / alloc.dense_costs["macs"],
                   "seconds": time.perf_counter() - start}
            rows.append(row)
            console.print(f"  {setting} {agent}: best {row['best']:.4f}, fine-tuned "
                          f"{after:.4f} ({row['trials']} trials, sparsity {row['sparsity']:.1%})")
        uniform = allocate(model, example_inputs=example, target=target, evaluate=evaluator,
                           agent="uniform", trials=1, seed=seed, space=space).config
        for crit in CRITERIA:
            ranked = make_space(kind, model, example, criterion=crit, calibration=calibration,
                                **options)
            start = time.perf_counter()
            pruned = ranked.apply(model, uniform)
            seconds = time.perf_counter() - start
            crit_rows.append({"model": name, "setting": setting, "criterion": crit,
                              "score": float(evaluator(copy.deepcopy(pruned))[metric]),
                              "finetuned": float(tuned(pruned)[metric]),
                              "apply_seconds": seconds})
    return {"model": name, "data": data, "metric": metric, "dense": dense, "rows": rows,
            "criteria": crit_rows}


def _tables(results: list[dict[str, Any]], console: Console) -> None:
    for res in results:
        arrow = "higher" if res["metric"] == "accuracy" else "lower"
        settings = list(dict.fromkeys(r["setting"] for r in res["rows"]))
        table = Table(title=f"{res['model']}: best validation {res['metric']} of the search / after "
                            f"the fine-tune ({arrow} is better; dense {res['dense']:.4f})")
        table.add_column("agent")
        for s in settings:
            table.add_column(s, justify="right")
        for agent in dict.fromkeys(r["agent"] for r in res["rows"]):
            cells = []
            for s in settings:
                r = next((r for r in res["rows"] if r["agent"] == agent and r["setting"] == s), None)
                cells.append(f"{r['best']:.4f} / {r['finetuned']:.4f} ({r['trials']})" if r else "")
            table.add_row(agent, *cells)
        console.print(table)
        table = Table(title=f"{res['model']}: the uniform allocation pruned by each criterion "
                            f"(validation {res['metric']} / after the fine-tune)")
        table.add_column("criterion")
        for s in settings:
            table.add_column(s, justify="right")
        for crit in CRITERIA:
            cells = []
            for s in settings:
                r = next((r for r in res["criteria"] if r["criterion"] == crit
                          and r["setting"] == s), None)
                cells.append(f"{r['score']:.4f} / {r['finetuned']:.4f}" if r else "")
            table.add_row(crit, *cells)
        console.print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--agents", nargs="*", default=None,
                        help="default: the heuristics, then tpe, evolution and td3")
    parser.add_argument("--trials", type=int, default=24, help="evaluations per search at most")
    parser.add_argument("--finetune", type=int, default=100, help="fine-tune steps (equal)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default=None, help="results file sparsity-TAG.json")
    parser.add_argument("--quick", action="store_true",
                        help="ResNet-20 only, 90%% and 2:4, 12 evaluations, 40 fine-tune steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.settings, args.trials, args.finetune = ["resnet20"], ["90%", "2:4"], 12, 40
    agents = args.agents or [a for a in (*HEURISTICS, *SEARCHES) if a in AGENTS]
    torch.set_num_threads(1)
    console = Console(width=160)
    start = time.perf_counter()
    results = [run_model(m, settings=args.settings, agents=agents, trials=args.trials,
                         finetune=args.finetune, seed=args.seed, console=console)
               for m in args.models]
    _tables(results, console)
    out = {"host": platform.processor() or platform.machine(), "torch": torch.__version__,
           "command": "python benchmarks/sparsity.py " + " ".join(argv if argv is not None
                                                                  else sys.argv[1:]),
           "trials": args.trials, "finetune": args.finetune,
           "seconds": time.perf_counter() - start, "results": results}
    tag = args.tag or ("quick" if args.quick else None)
    path = RESULTS / (f"sparsity-{tag}.json" if tag else "sparsity.json")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
