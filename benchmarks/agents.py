"""The agents league: every registered agent on the same work, side by side.

Same model (zoo ResNet-20 trained on digits by ``autoprune.train.load_or_train_baseline``), same
FLOPs budget (50% of the dense MACs), same number of evaluations, same evaluator (adaptive BN
on the same calibration batches, accuracy on the validation split), a few seeds. Every agent
runs through the real search loop (``autoprune.loop.run_search``: repair to the budget,
de-duplication, tell), so this measures what a user gets.

Columns: best validation accuracy (every candidate meets the budget), the test accuracy of that
best network (test split touched only here), evaluations the agent needed before it first
beat the uniform allocation, trials it ran (heuristics stop by themselves), wall time, and the
agent's own overhead per proposal (its ask, tell and state_dict).

Evaluation is deterministic for a configuration, so a configuration scored once (by any agent
or seed) is served from a cache; its measured evaluation time is still charged to every run
that proposes it, so wall time is what the run would take alone.

    python benchmarks/agents.py --quick         # 16x16 inputs, 30 evaluations, 1 seed: minutes
    python benchmarks/agents.py                 # 32x32, 50 evaluations, 3 seeds: hours on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from autoprune.agents import AGENTS, Agent, AgentContext, make_agent
from autoprune.evaluate import ClassificationEvaluator
from autoprune.executors import Executor
from autoprune.problem import PruningProblem
from autoprune.loop import best_record, run_search
from autoprune.search_spaces import ChannelSpace
from autoprune.study import StudyStore, TrialRecord
from autoprune.targets import parse_targets
from autoprune.train import load_or_train_baseline

__all__ = ["LeagueSettings", "main", "run_league"]


@dataclass(frozen=True, kw_only=True)
class LeagueSettings:
    model: str = "resnet20"
    data: str = "digits"
    image_size: int = 32
    target: str = "flops=50%"
    trials: int = 50
    seeds: tuple[int, ...] = (0, 1, 2)
    calib_batches: int = 16
    agents: tuple[str, ...] = ()  # empty: every registered agent
    threads: int = 1


# 30 evaluations: enough for sensitivity to finish on ResNet-20 (1 + 2 x 12 units + 2).
QUICK = LeagueSettings(image_size=16, trials=30, seeds=(0,), calib_batches=4)


class TimedAgent(Agent):
    """Forwards to an agent and adds up the time it spends (its overhead per proposal)."""

    def __init__(self, inner: Agent) -> None:
        super().__init__(inner.dim, seed=inner.seed)
        self.inner = inner
        self.seconds = 0.0
        self.proposals = 0

    @property
    def context_needs(self) -> frozenset[str]:  # type: ignore[override]
        return self.inner.context_needs

    def set_context(self, context: AgentContext) -> None:
        self.inner.set_context(context)

    def ask(self, n: int) -> list[np.ndarray]:
        t = time.perf_counter()
        points = self.inner.ask(n)
        self.seconds += time.perf_counter() - t
        self.proposals += len(points)
        return points

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:
        t = time.perf_counter()
        self.inner.tell(point, result)
        self.seconds += time.perf_counter() - t

    def state_dict(self) -> dict[str, Any]:
        t = time.perf_counter()
        state = self.inner.state_dict()
        self.seconds += time.perf_counter() - t
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)


class CachingExecutor(Executor):
    """In-process, with every configuration's result and evaluation time kept: a configuration
    another run already scored costs nothing now but is charged its measured time."""

    name = "caching"

    def __init__(self) -> None:
        self.cache: dict[tuple[tuple[str, int], ...], tuple[Any, float]] = {}
        self.spent = 0.0    # seconds really spent evaluating
        self.charged = 0.0  # seconds the runs would have spent without the cache

    def run(self, fn: Callable[[Any], Any], items: Sequence[Any]
            ) -> Iterator[tuple[int, Any | BaseException]]:
        for i, config in enumerate(items):
            key = tuple(sorted((k, int(v)) for k, v in config.items()))
            if key not in self.cache:
                t = time.perf_counter()
                try:
                    out: Any = fn(config)
                except Exception as err:  # noqa: BLE001 - a failed trial, as LocalExecutor
                    out = err
                self.cache[key] = (out, time.perf_counter() - t)
                self.spent += self.cache[key][1]
            out, seconds = self.cache[key]
            self.charged += seconds
            yield i, out


def _beat_at(records: Sequence[TrialRecord], reference: float) -> int | None:
    """1-based number of evaluations after which the best score first exceeds ``reference``."""
    for i, r in enumerate(records):
        if not r.failed and r.objective > reference + 1e-12:
            return i + 1
    return None


def run_league(settings: LeagueSettings, *, console: Console) -> dict[str, Any]:
    torch.set_num_threads(settings.threads)
    model, data, baseline = load_or_train_baseline(settings.model, settings.data,
                                                   image_size=settings.image_size)
    space = ChannelSpace.from_model(model, data.example_inputs(1))
    problem = PruningProblem(space, parse_targets(settings.target))
    evaluator = ClassificationEvaluator(data, calib_batches=settings.calib_batches, seed=0)
    dense_val = evaluator(space.apply(model, space.dense_config()))["accuracy"]
    executor = CachingExecutor()
    tests: dict[tuple[tuple[str, int], ...], float] = {}

    def test_accuracy(config: Mapping[str, int]) -> float:
        key = tuple(sorted((k, int(v)) for k, v in config.items()))
        if key not in tests:
            pruned = space.apply(model, config)
            tests[key] = evaluator.test(pruned, prepared=False)["accuracy"]
        return tests[key]

    names = list(settings.agents or sorted(AGENTS))
    if "uniform" in names:  # the reference every other agent is compared with runs first
        names.remove("uniform")
    names.insert(0, "uniform")
    uniform_val: float | None = None
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        # Agents without randomness (uniform, the heuristics) give the same run for every seed.
        deterministic = name in ("uniform", "global", "lamp", "erk", "sensitivity")
        runs = []
        for seed in settings.seeds[:1] if deterministic else settings.seeds:
            agent = TimedAgent(make_agent(name, space.dim, seed=seed))
            spent, charged = executor.spent, executor.charged
            t = time.perf_counter()
            records = run_search(problem, model=model, evaluate=evaluator, agent=agent,
                                 trials=settings.trials, store=StudyStore.in_memory(),
                                 executor=executor, progress=False)
            loop = time.perf_counter() - t
            best = best_record(records, problem)
            if best is None:
                raise RuntimeError(f"agent {name} (seed {seed}) produced no usable trial")
            if name == "uniform":
                uniform_val = best.objective
            runs.append({
                "seed": seed, "trials": len(records), "best_val": best.objective,
                "best_test": test_accuracy(best.config),
                "best_macs_fraction": best.costs["macs"] / problem.dense_costs["macs"],
                "beat_uniform_at": _beat_at(records, uniform_val) if name != "uniform" else None,
                # Loop time without the cache's savings: every evaluation at its full price.
                "wall_s": loop - (executor.spent - spent) + (executor.charged - charged),
                "overhead_ms": 1e3 * agent.seconds / max(1, agent.proposals),
                "best_config": dict(best.config)})
            console.print(f"  {name:12s} seed {seed}: best val {best.objective:.4f} "
                          f"({len(records)} trials, {runs[-1]['wall_s']:.0f}s)", highlight=False)
        rows[name] = {"runs": runs, **_summary(runs)}
    result = {
        "settings": asdict(settings), "dense": {"val_accuracy": dense_val,
                                                "costs": problem.dense_costs},
        "baseline": {k: baseline.get(k) for k in ("epochs", "metrics", "cached")},
        "budget": {"target": settings.target, "limit_macs": problem.budgets[0].limit},
        "units": space.dim, "uniform_val": uniform_val,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": settings.threads, "processor": platform.processor()},
        "agents": rows,
    }
    return result


def _summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def stats(key: str) -> tuple[float, float]:
        vals = np.array([r[key] for r in runs], dtype=float)
        return float(vals.mean()), float(vals.std())

    beats = [r["beat_uniform_at"] for r in runs]
    return {"best_val": stats("best_val"), "best_test": stats("best_test"),
            "trials": stats("trials")[0], "wall_s": stats("wall_s")[0],
            "overhead_ms": stats("overhead_ms")[0],
            "beat_uniform_at": (float(np.mean([b for b in beats if b is not None]))
                                if any(b is not None for b in beats) else None),
            "beat_uniform_runs": sum(b is not None for b in beats), "seeds": len(runs)}


def league_table(result: Mapping[str, Any]) -> Table:
    s = result["settings"]
    table = Table(title=f"agents league: {s['model']} on {s['data']} ({s['image_size']}px), "
                        f"{s['target']}, {s['trials']} evaluations, seeds {s['seeds']}")
    for col in ("agent", "best val acc", "test acc of best", "evals to beat uniform",
                "trials", "wall s", "overhead ms/proposal"):
        table.add_column(col, justify="left" if col == "agent" else "right")
    ranked = sorted(result["agents"].items(), key=lambda kv: -kv[1]["best_val"][0])
    for name, row in ranked:
        (val, val_sd), (test, test_sd) = row["best_val"], row["best_test"]
        spread = row["seeds"] > 1
        beat = row["beat_uniform_at"]
        beat_text = "-" if name == "uniform" else (
            "never" if beat is None else f"{beat:.1f} ({row['beat_uniform_runs']}/{row['seeds']})")
        table.add_row(name, f"{val:.4f}" + (f" ± {val_sd:.4f}" if spread else ""),
                      f"{test:.4f}" + (f" ± {test_sd:.4f}" if spread else ""), beat_text,
                      f"{row['trials']:.0f}", f"{row['wall_s']:.0f}", f"{row['overhead_ms']:.1f}")
    table.caption = (f"dense validation accuracy {result['dense']['val_accuracy']:.4f}; uniform "
                     f"{result['uniform_val']:.4f}; ± is the std over seeds; deterministic "
                     "agents run once; 'evals to beat uniform' is the mean over the seeds that "
                     "beat it (how many did)")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="16x16 inputs, 30 evaluations, one seed (a few minutes)")
    parser.add_argument("--trials", type=int, help="evaluations per run")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds of the stochastic agents")
    parser.add_argument("--agents", nargs="+", help="agents to run (default: all)")
    parser.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else LeagueSettings()
    overrides: dict[str, Any] = {}
    if args.trials:
        overrides["trials"] = args.trials
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    if args.agents:
        overrides["agents"] = tuple(args.agents)
    settings = LeagueSettings(**{**asdict(settings), **overrides})
    console = Console()
    console.width = max(console.width, 120)  # the table stays one line per agent in a log
    t = time.perf_counter()
    result = run_league(settings, console=console)
    result["total_s"] = time.perf_counter() - t
    console.print(league_table(result))
    out = args.out or Path(__file__).parent / "results" / (
        f"agents{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    console.print(f"results: {out} ({result['total_s']:.0f}s)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    main()
