"""Search quality without a model: each agent's regret on the synthetic budget landscape.

The landscape is ``autoprune.testing.landscape.BudgetLandscape`` (the agent tests' own):
``--dim`` units with a linear cost, a budget at 45% of it and a concave accuracy-like
objective whose optimum is known in closed form, with the search loop's repair. Each agent runs
``--evaluations`` evaluations per seed; the *regret* is the optimum minus the best value found
(0 is perfect). The table shows mean +- standard deviation over seeds of the final regret, and
of the regret halfway, with random search beside every agent, and the share of random's final
regret each agent keeps. It is how a change to an agent's internals (the GP's capped
proposals, say) is checked for search quality before the league (``benchmarks/agents.py``)
confirms it on real networks.

    python benchmarks/agent_regret.py                       # random, tpe, gp, evolution, cmaes
    python benchmarks/agent_regret.py --agents random gp --dim 12 --evaluations 60 --seeds 24

Writes benchmarks/results/agent-regret.json (``--tag T``: agent-regret-T.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from autoprune.agents import AGENTS, make_agent
from autoprune.testing.landscape import BudgetLandscape, run_agent

RESULTS = Path(__file__).parent / "results"


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Agents' regret on the synthetic budget "
                                                 "landscape (no model, no torch).")
    parser.add_argument("--agents", nargs="+", default=["random", "tpe", "gp", "evolution",
                                                        "cmaes"])
    parser.add_argument("--dim", type=int, default=8, help="units (default 8, as the tests)")
    parser.add_argument("--evaluations", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0 .. N-1 (default 8)")
    parser.add_argument("--tag", default="", help="results file agent-regret-TAG.json")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.agents) - set(AGENTS))
    if unknown:
        parser.error(f"unknown agent(s) {unknown}; choose from {sorted(AGENTS)}")
    if args.dim < 1 or args.evaluations < 2 or args.seeds < 1:
        parser.error("--dim and --seeds must be >= 1, --evaluations >= 2")
    agents = list(dict.fromkeys(["random", *args.agents]))  # random is the yardstick
    console = Console()
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in agents}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("searching", total=len(agents) * args.seeds)
        for name in agents:
            for seed in range(args.seeds):
                started = time.perf_counter()
                regrets = run_agent(make_agent(name, args.dim, seed=seed),
                                    BudgetLandscape(args.dim, seed),
                                    evaluations=args.evaluations)
                runs[name].append({"seed": seed, "regrets": regrets,
                                   "seconds": time.perf_counter() - started})
                progress.advance(task)
    half = args.evaluations // 2
    summary = {}
    for name, rs in runs.items():
        final = [r["regrets"][-1] for r in rs]  # type: ignore[index]
        mid = [r["regrets"][half - 1] for r in rs]  # type: ignore[index]
        summary[name] = {"final_mean": statistics.mean(final),
                         "final_std": statistics.stdev(final) if len(final) > 1 else 0.0,
                         "half_mean": statistics.mean(mid),
                         "seconds_median": statistics.median(r["seconds"] for r in rs)}  # type: ignore[misc]
    base = summary["random"]["final_mean"]
    table = Table(title=f"regret on the budget landscape: {args.dim} units, {args.evaluations} "
                        f"evaluations, seeds 0-{args.seeds - 1} (0 = the optimum)")
    for col in ("agent", f"after {half}", f"after {args.evaluations}", "of random's",
                "s per search (median)"):
        table.add_column(col, justify="right")
    for name, rs in runs.items():
        s = summary[name]
        table.add_row(name, _mean_std([r["regrets"][half - 1] for r in rs]),  # type: ignore[index]
                      _mean_std([r["regrets"][-1] for r in rs]),  # type: ignore[index]
                      f"{s['final_mean'] / base:.2f}" if base > 0 else "-",
                      f"{s['seconds_median']:.2f}")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / (f"agent-regret-{args.tag}.json" if args.tag else "agent-regret.json")
    path.write_text(json.dumps({"settings": vars(args), "platform": platform.platform(),
                                "python": platform.python_version(), "summary": summary,
                                "runs": runs, "time": time.strftime("%Y-%m-%d %H:%M:%S")},
                               indent=2))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
