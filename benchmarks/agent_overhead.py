"""An agent's own time per proposal (ask + tell + state_dict) at several history lengths.

No model and no torch training: the landscape is the synthetic budget landscape
``autoprune.testing.landscape.BudgetLandscape`` (the agent tests' own) on ``--dim`` units (a linear cost, a budget at 45% of it, an
accuracy-like concave objective), with the search loop's repair. For each history length ``n``
one search per agent is run to ``n`` evaluated proposals of its own (asked, repaired, told, as
the search loop does), then the next ``--proposals`` are timed one by one: ask(1), repair, tell,
state_dict. The table shows the median milliseconds per proposal and the slowest one; the
league (``benchmarks/agents.py``) reports the mean over a whole run, which this bounds from the
history lengths it reaches.

    python benchmarks/agent_overhead.py                        # gp, tpe, nsga2 at 20/60/100/150
    python benchmarks/agent_overhead.py --agents gp --history 100 --profile

Writes benchmarks/results/agent-overhead.json (``--tag T``: agent-overhead-T.json).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import platform
import pstats
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from autoprune.agents import AGENTS, make_agent
from autoprune.testing.landscape import BudgetLandscape

__all__ = ["measure"]

RESULTS = Path(__file__).parent / "results"


def _step(agent: Any, land: BudgetLandscape) -> None:
    for x in agent.ask(1):
        r = land.repair(x)
        agent.tell(r, {"objective": land.value(r), "cost.macs": land.cost(r)})
    agent.state_dict()


def measure(name: str, *, dim: int, histories: list[int], proposals: int, seed: int = 0,
            profile: bool = False) -> list[dict[str, Any]]:
    """One search by ``name``: at each history length (evaluations told so far), time the next
    ``proposals`` proposals (they then count in the history too)."""
    land = BudgetLandscape(dim, seed)
    agent = make_agent(name, dim, seed=seed)
    told, rows = 0, []
    for n in sorted(histories):
        while told < n:
            _step(agent, land)
            told += 1
        times, prof = [], cProfile.Profile() if profile else None
        for _ in range(proposals):
            start = time.perf_counter()
            if prof is not None:
                prof.enable()
            _step(agent, land)
            if prof is not None:
                prof.disable()
            times.append(1e3 * (time.perf_counter() - start))
        told += proposals
        row = {"agent": name, "history": n, "median_ms": statistics.median(times),
               "max_ms": max(times), "times_ms": times}
        if prof is not None:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
            row["profile"] = out.getvalue()
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An agent's time per proposal.")
    parser.add_argument("--agents", nargs="+", default=["gp", "tpe", "nsga2"])
    parser.add_argument("--history", nargs="+", type=int, default=[20, 60, 100, 150],
                        help="evaluations already told before timing")
    parser.add_argument("--proposals", type=int, default=8, help="timed proposals per length")
    parser.add_argument("--dim", type=int, default=12, help="units (the search's dimensions)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print cProfile of timed steps")
    parser.add_argument("--tag", default="", help="results file agent-overhead-TAG.json")
    args = parser.parse_args(argv)
    unknown = [a for a in args.agents if a not in AGENTS]
    if unknown:
        parser.error(f"unknown agent(s) {unknown}; choose from {sorted(AGENTS)}")
    if min(args.history) < 0 or args.proposals < 1 or args.dim < 1:
        parser.error("--history must be >= 0, --proposals and --dim >= 1")
    console = Console()
    rows = []
    for name in args.agents:
        for row in measure(name, dim=args.dim, histories=args.history,
                           proposals=args.proposals, seed=args.seed, profile=args.profile):
            rows.append(row)
            if args.profile:
                console.print(f"[bold]{name} at {row['history']} evaluations[/bold]")
                print(row.pop("profile"))
    table = Table(title=f"agent time per proposal (ask + tell + state_dict), {args.dim} units")
    for col in ["agent", *[f"{n} evals" for n in sorted(args.history)]]:
        table.add_column(col, justify="right")
    for name in args.agents:
        cells = [f"{r['median_ms']:.1f} (max {r['max_ms']:.0f})" for r in rows
                 if r["agent"] == name]
        table.add_row(name, *cells)
    console.print(table)
    console.print("median ms per proposal (slowest of the timed ones)")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / (f"agent-overhead-{args.tag}.json" if args.tag else "agent-overhead.json")
    path.write_text(json.dumps({
        "settings": vars(args), "platform": platform.platform(),
        "python": platform.python_version(), "rows": rows,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
