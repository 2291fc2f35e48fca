"""The agents league's summaries: per-agent statistics over seeds, the fine-tune's noise, and
the printed table (``benchmarks/agents.py`` runs the league; this reads its results)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from rich.table import Table

from autoprune.study import TrialRecord

__all__ = ["FASTNAS", "finetune_noise", "first_at", "league_table", "records_of", "summary"]

#: The peer's row (``--fastnas``).
FASTNAS = "FastNAS (ModelOpt)"


def first_at(records: Sequence[TrialRecord], reference: float | None, *,
              strict: bool = True) -> int | None:
    """1-based number of evaluations after which the best score first exceeds (``strict``) or
    reaches ``reference``; None if it never does."""
    if reference is None:
        return None
    for i, r in enumerate(records):
        if not r.failed and (r.objective > reference + 1e-12 if strict
                             else r.objective >= reference - 1e-12):
            return i + 1
    return None


def finetune_noise(rows: Mapping[str, Mapping[str, Any]], seeds: int,
                    tuned: Any) -> dict[str, Any] | None:
    """How much the fine-tuned score of one network moves with the fine-tune's data order
    (``tuned(config, seed)``), beside how much the agents' fine-tuned scores differ."""
    if seeds < 2 or not rows:
        return None
    name = "uniform" if "uniform" in rows else next(n for n in rows if n != FASTNAS)
    config = rows[name]["runs"][0]["best_config"]
    values = [float(tuned(config, seed)) for seed in range(seeds)]
    means = [row["ft_val"][0] for row in rows.values()]
    return {"network": name, "seeds": seeds, "ft_val": values,
            "std": float(np.std(values, ddof=1)), "range": max(values) - min(values),
            "agents_spread": max(means) - min(means)}


def records_of(run: Mapping[str, Any], sign: float) -> list[TrialRecord]:
    """The run's scores as records in the study's higher-is-better terms (what ``first_at``
    reads)."""
    return [TrialRecord(number=i, point=(), config={}, costs={}, metrics={},
                        objective=sign * float(v) if v is not None else float("nan"),
                        failed=v is None or not math.isfinite(v))
            for i, v in enumerate(run["curve"])]


def summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def stats(key: str) -> tuple[float, float]:
        vals = np.array([r[key] for r in runs], dtype=float)
        return float(vals.mean()), float(vals.std())

    def first(key: str) -> tuple[float | None, int]:
        hits = [r[key] for r in runs if r[key] is not None]
        return (float(np.mean(hits)) if hits else None), len(hits)

    beat, beat_n = first("beat_uniform_at")
    reach, reach_n = first("reach_random_at")
    peer, peer_n = first("reach_fastnas_at")
    out = {"best_val": stats("best_val"), "best_test": stats("best_test"),
           "ft_val": stats("ft_val"), "ft_test": stats("ft_test"),
           "trials": stats("trials")[0], "wall_s": stats("wall_s")[0],
           "overhead_ms": stats("overhead_ms")[0],
           "beat_uniform_at": beat, "beat_uniform_runs": beat_n,
           "reach_random_at": reach, "reach_random_runs": reach_n,
           "reach_fastnas_at": peer, "reach_fastnas_runs": peer_n, "seeds": len(runs)}
    if all("measured_ms" in r for r in runs):
        out["measured_ms"] = stats("measured_ms")
        out["latency_met_runs"] = sum(bool(r["latency_met"]) for r in runs)
    return out


def league_table(result: Mapping[str, Any]) -> Table:
    s = result["settings"]
    metric = result.get("metric", "accuracy")
    latency = result["budget"]["metric"] == "latency_ms"
    where = f"{s['data']} ({s['image_size']}px)" if metric == "accuracy" else s["data"]
    table = Table(title=f"agents league: {s['model']} on {where}, "
                        f"{s['target']}, {s['trials']} evaluations, seeds {s['seeds']}")
    short = "acc" if metric == "accuracy" else metric
    orders = f" (mean of {s['ft_orders']} orders)" if s.get("ft_orders", 1) > 1 else ""
    cols = ["agent", f"best val {short}", f"test {short} of best",
            f"val after {s['finetune_steps']}-step fine-tune{orders}", "test after fine-tune",
            "evals to beat uniform",
            "evals to reach random's final", "trials", "wall s", "overhead ms/proposal"]
    if result.get("fastnas_val") is not None:
        cols.insert(7, "evals to reach FastNAS")
    if latency:
        cols.insert(5, "measured ms (met)")
    for col in cols:
        table.add_column(col, justify="left" if col == "agent" else "right")
    sign = -1.0 if metric == "loss" else 1.0
    ranked = sorted(result["agents"].items(), key=lambda kv: -sign * kv[1]["best_val"][0])

    def cell(pair: Sequence[float], spread: bool) -> str:
        return f"{pair[0]:.4f}" + (f" ± {pair[1]:.3f}" if spread else "")

    refs = {"beat_uniform": result["uniform_val"], "reach_random": result["random_final_val"],
            "reach_fastnas": result.get("fastnas_val")}

    def first(row: Mapping[str, Any], key: str) -> str:
        if refs[key] is None:  # the reference agent was not in this league
            return "-"
        at, hits = row[f"{key}_at"], row[f"{key}_runs"]
        return "never" if at is None else f"{at:.1f} ({hits}/{row['seeds']})"

    for name, row in ranked:
        spread = row["seeds"] > 1
        values = [name, cell(row["best_val"], spread), cell(row["best_test"], spread),
                  cell(row["ft_val"], spread), cell(row["ft_test"], spread),
                  "-" if name == "uniform" else first(row, "beat_uniform"),
                  first(row, "reach_random"), f"{row['trials']:.0f}", f"{row['wall_s']:.0f}",
                  f"{row['overhead_ms']:.1f}"]
        if refs["reach_fastnas"] is not None:
            values.insert(7, "-" if name == FASTNAS else first(row, "reach_fastnas"))
        if latency:
            values.insert(5, f"{row['measured_ms'][0]:.3f} "
                             f"({row['latency_met_runs']}/{row['seeds']})")
        table.add_row(*values)
    def ref(value: float | None) -> str:
        return "not run" if value is None else f"{value:.4f}"

    noise = result.get("noise")
    table.caption = (
        f"dense validation {metric} {result['dense'][f'val_{metric}']:.4f}; uniform "
        f"{ref(result['uniform_val'])}; random's final (mean best at {s['trials']}) "
        f"{ref(result['random_final_val'])}; ± is the std over seeds; deterministic agents run "
        "once; 'evals to ...' is the mean over the seeds that got there (how many did)"
        + (f"; budget {result['budget']['limit']:.3f} ms predicted by the table, best networks "
           "measured" if latency else "")
        + (f"; ModelOpt's FastNAS refused the budget ({result['fastnas_refused'][-120:]})"
           if result.get("fastnas_refused") else "")
        + (f"; after the fine-tune the agents' means span {noise['agents_spread']:.4f}, while "
           f"{noise['network']}'s network fine-tuned with {noise['seeds']} data orders spans "
           f"{noise['range']:.4f} (std {noise['std']:.4f})" if noise else ""))
    return table
