"""Specialising a supernet: accuracy predictor, evolution under the budget, extraction with a
measured latency check, and the accuracy-cost front (``autoprune ofa extract`` / ``front``).

Once-for-All (Cai et al., ICLR 2020) searches sub-networks per device without evaluating any:
an accuracy predictor (there an MLP on 1k-4k sampled sub-networks) scores candidates, a latency
table costs them, and an evolutionary search keeps the best that meet the constraint. Here:

* **Predictor**: scikit-learn gradient boosting on the vector of kept ratios per unit, fitted on
  the sub-networks ``ofa train`` sampled and scored (BN recalibrated, validation split). A
  hundred samples is what our budget affords, far below OFA's thousands, which favours trees
  over a 3x400 MLP; its rank correlation on held-out samples is measured and reported.
  sklearn models are refitted from ``samples.json`` at load (< 1 s), so nothing is unpickled.
* **Evolution**: our aging evolution (``agents/evolution.py``: OFA's parents = best quarter,
  mutation p = 0.1, uniform crossover), every child repaired onto the budget with
  ``PruningProblem.repair`` (AMC's uniform scaling), so each scored candidate is feasible and
  uses its budget — OFA instead resamples until a child meets the constraint.
* **Latency** budgets are costed with the device's lookup table (searched a margin inside the
  limit) and the extracted network is *measured*; if it misses, the search is repeated with
  the limit scaled by measured / predicted (DESIGN.md, "Latency, measured honestly").
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
import torch
from torch import nn

from autoprune.agents.evolution import EvolutionAgent, EvolutionConfig
from autoprune.export import ExportError, export_program
from autoprune.latency.cache import table_for_search
from autoprune.latency.device import Device
from autoprune.latency.measure import LatencyMeasurement, measure_latency
from autoprune.latency.verify import measure_and_repair
from autoprune.latency.table import LatencyTable
from autoprune.ofa.elastic import ElasticNet, SupernetError
from autoprune.ofa.predictor import AccuracyPredictor
from autoprune.placement import on_cpu
from autoprune.problem import PruningProblem, build_problem
from autoprune.run_folder import write_choice
from autoprune.targets import Target, parse_targets
from autoprune.zoo.evaluate import evaluate_accuracy
from autoprune.zoo.train import default_cache_dir

__all__ = ["Extraction", "LatencySetup", "check_channel_targets", "extraction_table",
           "find_config", "front", "front_view", "save_subnetwork", "specialise"]

_MAX_LATENCY_RETRIES = 3


def _predictor(supernet: ElasticNet) -> AccuracyPredictor:
    cached = supernet.derived.get("predictor")
    if cached is None:
        if not supernet.samples:
            raise SupernetError(f"the supernet in {supernet.path} has no scored sub-networks "
                                "(samples.json). Fix: finish `autoprune ofa train` on it.")
        cached = AccuracyPredictor(supernet.space, seed=int(supernet.meta.get("seed", 0))).fit(
            [s["config"] for s in supernet.samples],
            [s["val_accuracy"] for s in supernet.samples])
        supernet.derived["predictor"] = cached
    return cached


# ---------------------------------------------------------------------- evolution
def find_config(problem: PruningProblem, predictor: AccuracyPredictor, *, generations: int = 12,
                population: int = 64, seed: int = 0) -> tuple[dict[str, int], float]:
    """The configuration of best predicted accuracy meeting every budget of ``problem``.

    Generational use of the aging evolution: ``population`` random points, then per generation
    half as many children (OFA: 100 individuals, 50 mutated and crossed children, 500
    generations; a predictor over ~10-60 units converges in far fewer here). Every point is
    repaired onto the budget before it is scored. The uniform allocation (every unit scaled
    alike, AMC's baseline) is always a candidate.
    """
    space = problem.space
    agent = EvolutionAgent(space.dim, seed=seed, config=EvolutionConfig(population=population))
    seen: dict[tuple[int, ...], float] = {}
    best: tuple[float, dict[str, int]] | None = None
    batch = [np.ones(space.dim)] + agent.ask(population - 1)
    for _ in range(max(1, generations) + 1):
        repaired = [problem.repair(p) for p in batch]
        configs = [space.decode(r) for r in repaired]
        keys = [tuple(c[u.name] for u in space.units) for c in configs]
        new = [i for i, k in enumerate(keys) if k not in seen]
        if new:
            for i, v in zip(new, predictor.predict([configs[i] for i in new])):
                seen[keys[i]] = float(v)
        for r, c, k in zip(repaired, configs, keys):
            agent.tell(r, {"objective": seen[k]})
            if best is None or seen[k] > best[0]:
                best = (seen[k], c)
        batch = agent.ask(max(2, population // 2))
    assert best is not None
    return dict(best[1]), best[0]


# ---------------------------------------------------------------------- extraction
@dataclass(frozen=True, kw_only=True)
class LatencySetup:
    """What a latency budget refers to (the device's lookup table is built once and cached)."""

    lut: Path | None = None
    device: Device = field(default_factory=Device)
    cache_dir: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Extraction:
    """One sub-network for one target: its channels, costs, accuracy and the model itself."""

    target: str
    config: dict[str, int]
    costs: dict[str, float]
    dense_costs: dict[str, float]
    predicted_accuracy: float
    val_accuracy: float
    seconds: float
    met: bool
    budgets: list[dict[str, Any]]
    measured: dict[str, Any] | None = None
    model: nn.Module = field(repr=False)

    def summary(self) -> dict[str, Any]:
        return {"target": self.target, "config": self.config, "costs": self.costs,
                "fraction_of_dense": {k: v / self.dense_costs[k] for k, v in self.costs.items()},
                "predicted_accuracy": self.predicted_accuracy,
                "val_accuracy": self.val_accuracy, "seconds": self.seconds, "met": self.met,
                "budgets": self.budgets, "measured": self.measured}


def _latency_table(supernet: ElasticNet, setup: LatencySetup, console: Console) -> LatencyTable:
    """The device's table, anchored to the machine's speed once per loaded supernet and setup
    (every extraction of a session costs with the same numbers)."""
    tables = supernet.derived.setdefault("latency_tables", {})
    if repr(setup) not in tables:
        tables[repr(setup)], _ = table_for_search(
            supernet.model, supernet.data.example_inputs(1), supernet.space, lut=setup.lut,
            cache_dir=Path(setup.cache_dir or default_cache_dir()), device=setup.device,
            console=console)
    return tables[repr(setup)]


def _measure(model: nn.Module, supernet: ElasticNet, setup: LatencySetup) -> LatencyMeasurement:
    return measure_latency(model, supernet.data.example_inputs(1), device=setup.device)


def _problem(supernet: ElasticNet, targets: Sequence[Target], table: LatencyTable | None
             ) -> PruningProblem:
    return build_problem(supernet.space, targets, table=table)  # fast costs: see problem.py


def check_channel_targets(parsed: Sequence[Sequence[Target]]) -> None:
    """A supernet's sub-networks differ in channel widths only: a budget of single weights
    (sparsity=, size=) cannot steer them, and is refused before any work."""
    for ts in parsed:
        for t in ts:
            if t.metric in ("weights", "size_bytes"):
                raise SupernetError(
                    f"target {t.text!r}: a supernet's sub-networks differ in channel widths "
                    "only, so sparsity= and size= budgets (single weights) cannot steer them. "
                    "Budget latency=, flops= or params= instead (single weights are pruned by "
                    "a search: autoprune search --granularity unstructured)")


def specialise(supernet: ElasticNet, targets: Sequence[str | Sequence[Target]], *,
               latency: LatencySetup | None = None, generations: int = 12, population: int = 64,
               seed: int = 0, score: bool = True, latency_retries: int = _MAX_LATENCY_RETRIES,
               console: Console | None = None) -> list[Extraction]:
    """One extracted sub-network per entry of ``targets`` (a string such as ``"flops=50%"`` or
    ``"latency=2ms,params=60%"`` for joint budgets). Bad or impossible targets are refused
    before any work. ``score`` adds the validation accuracy (not counted in ``seconds``).
    A latency budget is checked by measuring the extracted network; ``latency_retries``
    searches again for the measured speed when it misses."""
    console = console or Console(stderr=True, quiet=True)
    latency = latency or LatencySetup()
    parsed = [parse_targets(t) if isinstance(t, str) else list(t) for t in targets]
    check_channel_targets(parsed)
    table = None
    if any(t.metric == "latency_ms" for ts in parsed for t in ts):
        table = _latency_table(supernet, latency, console)
    remote = table is not None and table.remote  # predicted for another device: not timed here
    # Impossible budgets are refused here, before any work; only latency budgets pay for
    # costing every candidate with the table.
    problems = [_problem(supernet, ts, table if any(t.metric == "latency_ms" for t in ts)
                         else None) for ts in parsed]
    predictor = _predictor(supernet)
    out = []
    for ts, problem in zip(parsed, problems):
        started = time.perf_counter()
        config, predicted = find_config(problem, predictor, generations=generations,
                                        population=population, seed=seed)
        model = supernet.subnetwork(config)
        measured, met = None, True
        if any(b.metric == "latency_ms" for b in problem.budgets) and not remote:
            model, config, predicted, measured, met = _check_latency(
                supernet, problem, predictor, model, config, predicted, latency, console,
                retries=latency_retries, generations=generations, population=population,
                seed=seed)
        seconds = time.perf_counter() - started
        val = evaluate_accuracy(model, supernet.data.val_x, supernet.data.val_y)[0] \
            if score else float("nan")
        costs = problem.costs(config)
        # Analytic budgets against their limits; a latency budget was judged by measurement
        # (by its prediction, for a table measured on another device).
        met = met and problem.feasible(costs, budgets=[replace(b, margin=0.0)
                                                       for b in problem.budgets
                                                       if remote or b.metric != "latency_ms"])
        out.append(Extraction(
            target=",".join(t.text for t in ts), config=config, costs=costs,
            dense_costs=dict(problem.dense_costs), predicted_accuracy=float(predicted),
            val_accuracy=val, seconds=seconds, met=met, measured=measured, model=model,
            budgets=[{"metric": b.metric, "limit": b.limit, "text": b.text,
                      "search_limit": b.search_limit} for b in problem.budgets]))
    return out


def _check_latency(supernet: ElasticNet, problem: PruningProblem, predictor: AccuracyPredictor,
                   model: nn.Module, config: dict[str, int], predicted: float,
                   setup: LatencySetup, console: Console, *, retries: int, **search: Any
                   ) -> tuple[nn.Module, dict[str, int], float, dict[str, Any], bool]:
    """Measure the extracted network; while it misses the budget, search again for the speed
    measured (``autoprune.latency.verify.measure_and_repair``, the search's own loop), at most
    ``retries`` times; when no network is predicted that fast, the thinnest one is measured as
    the last resort."""
    budget = next(b for b in problem.budgets if b.metric == "latency_ms")
    thinnest = problem.space.min_config()
    found: dict[tuple[int, ...], tuple[nn.Module, float]] = {_key(config): (model, predicted)}

    def measure(c: dict[str, int]) -> LatencyMeasurement:
        m = _measure(found[_key(c)][0], supernet, setup)
        console.print(f"measured {m.median_ms:.3f} ms (predicted "
                      f"{problem.costs(c)['latency_ms']:.3f} ms, budget {budget.limit:.3f} ms)",
                      highlight=False)
        return m

    def repair(want: float, slow: float) -> dict[str, int] | None:
        if problem.costs(thinnest)["latency_ms"] > want:
            # No network is predicted that fast: the thinnest one is the last resort (machine
            # noise can make the scaled target look out of reach when it is not).
            if _key(thinnest) in found:
                return None
            c, acc = dict(thinnest), float(predictor.predict([thinnest])[0])
        else:
            tight = problem.with_margin("latency_ms", 1 - want / budget.limit)
            c, acc = find_config(tight, predictor, **search)
        found.setdefault(_key(c), (supernet.subnetwork(c), acc))
        return c

    met, readings = measure_and_repair(
        [config], limit_ms=budget.limit, measure=measure,
        predict=lambda c: problem.costs(c)["latency_ms"], repair=repair, max_repairs=retries)
    last = readings[-1]
    tries = [{"predicted_ms": r.predicted_ms, "latency_ms": r.measured.median_ms,
              "p10_ms": r.measured.p10_ms, "p90_ms": r.measured.p90_ms} for r in readings]
    model, predicted = found[_key(last.candidate)]
    return model, dict(last.candidate), predicted, {**tries[-1], "device": dict(
        last.measured.device), "tries": tries}, met is not None


def _key(config: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(int(v) for _, v in sorted(config.items()))


def save_subnetwork(extraction: Extraction, path: str | Path, supernet: ElasticNet) -> Path:
    """Write ``<path>.pt`` (weights) and ``<path>.json`` in the form of a search result, so
    ``autoprune.load_pruned(path.parent, choice=path.stem)`` rebuilds the network, and
    ``<path>.pt2``, the network as a ``torch.export`` program (no model code needed)."""
    path = Path(path)
    if path.suffix != ".pt":
        path = path.with_name(path.name + ".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = supernet.meta
    extra: dict[str, Any] = {"source": {"kind": "ofa", "supernet": str(supernet.path),
                                        "target": extraction.target,
                                        "seconds": extraction.seconds, "met": extraction.met}}
    if extraction.measured:
        extra["measured"] = extraction.measured
    example = torch.zeros(meta["example_input_shape"])
    try:
        export_program(on_cpu(extraction.model), Device().inputs(example),
                       path.with_suffix(".pt2"))
        extra["program"] = path.with_suffix(".pt2").name
    except ExportError as err:
        extra["program_error"] = str(err)
    write_choice(path.with_suffix(".json"), model=meta["model_spec"], space=supernet.space,
                 data=meta["data"], example_inputs=torch.zeros(meta["example_input_shape"]),
                 config=extraction.config, costs=extraction.costs, budgets=extraction.budgets,
                 metrics={"val_accuracy": None if math.isnan(extraction.val_accuracy)
                          else extraction.val_accuracy,
                          "predicted_val_accuracy": extraction.predicted_accuracy},
                 weights=extraction.model, weights_file=path.name, extra=extra)
    return path


def extraction_table(extractions: Sequence[Extraction], *, title: str = "extracted sub-networks"
                     ) -> Table:
    t = Table(title=title, caption="% of the dense model; predicted accuracy from the "
                                   "predictor, validation accuracy after BN recalibration")
    for col in ("target", "MACs %", "params %", "pred. acc", "val acc", "measured ms", "met",
                "seconds"):
        t.add_column(col, justify="left" if col == "target" else "right")
    for e in extractions:
        frac = {k: 100 * v / e.dense_costs[k] for k, v in e.costs.items()}
        t.add_row(e.target, f"{frac['macs']:.1f}", f"{frac['params']:.1f}",
                  f"{e.predicted_accuracy:.4f}",
                  "-" if math.isnan(e.val_accuracy) else f"{e.val_accuracy:.4f}",
                  f"{e.measured['latency_ms']:.3f}" if e.measured else "-",
                  "yes" if e.met else "[red]no[/]", f"{e.seconds:.2f}")
    return t


# ---------------------------------------------------------------------- the front
_METRIC_NAMES = {"flops": "macs", "macs": "macs", "params": "params", "latency": "latency_ms"}


def front(supernet: ElasticNet, *, metric: str = "flops", points: int = 8,
          latency: LatencySetup | None = None, generations: int = 12, population: int = 64,
          seed: int = 0, plot: Path | None = None, console: Console | None = None
          ) -> dict[str, Any]:
    """The predicted-best sub-network at ``points`` budgets evenly spread from the thinnest
    network's cost to the dense one's, each extracted, BN-recalibrated and scored on the
    validation split (and measured, for latency). Returns a JSON-ready dict."""
    if metric not in _METRIC_NAMES:
        raise SupernetError(f"unknown front metric {metric!r}; use one of flops, params, latency")
    if points < 2:
        raise SupernetError("a front needs at least 2 points")
    name = _METRIC_NAMES[metric]
    latency = latency or LatencySetup()
    table = _latency_table(supernet, latency, console or Console(stderr=True, quiet=True)) \
        if name == "latency_ms" else None
    base = _problem(supernet, [], table)
    low, dense = base.min_costs[name], base.dense_costs[name]
    rows = []
    for frac in np.linspace(low / dense, 1.0, points):
        frac = min(1.0, float(frac) * (1 + 1e-6))
        target = Target(metric=name, value=frac, relative=True, text=f"{metric}={100 * frac:.1f}%")
        # Descriptive: each point is measured, not re-searched when load slows a measurement.
        e = specialise(supernet, [[target]], latency=latency, generations=generations,
                       population=population, seed=seed, latency_retries=0,
                       console=console)[0]
        rows.append({"target": e.target, "fraction": frac, "costs": e.costs,
                     "predicted_accuracy": e.predicted_accuracy, "val_accuracy": e.val_accuracy,
                     "measured_ms": e.measured["latency_ms"] if e.measured else None,
                     "config": e.config, "seconds": e.seconds})
    result = {"metric": name, "dense_costs": dict(base.dense_costs), "points": rows,
              "baseline_val_accuracy": supernet.meta["baseline"]["val_accuracy"],
              "predictor": supernet.meta.get("predictor")}
    if plot is not None:
        result["plot"] = str(_front_plot(result, supernet, base, plot))
    return result


def front_view(result: Mapping[str, Any]) -> Table:
    name = result["metric"]
    t = Table(title=f"once-for-all front: validation accuracy vs {name}")
    for col in ("budget", f"{name} % of dense", "MACs % of dense", "predicted acc", "val acc",
                "measured ms", "seconds"):
        t.add_column(col, justify="left" if col == "budget" else "right")
    for r in result["points"]:
        t.add_row(r["target"], f"{100 * r['costs'][name] / result['dense_costs'][name]:.1f}",
                  f"{100 * r['costs']['macs'] / result['dense_costs']['macs']:.1f}",
                  f"{r['predicted_accuracy']:.4f}", f"{r['val_accuracy']:.4f}",
                  "-" if r["measured_ms"] is None else f"{r['measured_ms']:.3f}",
                  f"{r['seconds']:.2f}")
    t.caption = (f"dense baseline validation accuracy {result['baseline_val_accuracy']:.4f}"
                 + (f"; predictor Spearman {result['predictor']['spearman']:.3f} on held-out "
                    "sub-networks" if result.get("predictor") else ""))
    return t


def _front_plot(result: Mapping[str, Any], supernet: ElasticNet, base: PruningProblem,
                path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, dense = result["metric"], result["dense_costs"][result["metric"]]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    samples = supernet.samples
    if samples:
        ax.scatter([100 * base.costs(s["config"])[name] / dense for s in samples],
                   [s["val_accuracy"] for s in samples], s=10, color="0.65",
                   label="sampled sub-networks")
    xs = [100 * r["costs"][name] / dense for r in result["points"]]
    ax.plot(xs, [r["val_accuracy"] for r in result["points"]], "-o", color="tab:blue",
            label="front (extracted, BN recalibrated)")
    ax.plot(xs, [r["predicted_accuracy"] for r in result["points"]], "--", color="tab:orange",
            label="predicted")
    ax.scatter([100.0], [result["baseline_val_accuracy"]], marker="*", s=150, color="tab:green",
               label="dense baseline", zorder=5)
    ax.set_xlabel(f"{name} (% of dense" + (", predicted by the latency table)"
                                           if name == "latency_ms" else ")"))
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
