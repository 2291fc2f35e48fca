"""What a person reads: tables of trials and the Pareto picture of accuracy against each cost."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.table import Table

from autoprune.latency.device import describe_device
from autoprune.latency.measure import LatencyMeasurement
from autoprune.latency.verify import LatencyCheck
from autoprune.study import TrialRecord
from autoprune.targets import Budget

__all__ = ["curve_table", "format_cost", "front_table", "latency_check_view", "pareto_front",
           "pareto_plot", "trials_table", "units_table"]


def format_cost(name: str, value: float) -> str:
    if name == "latency_ms":
        return f"{value:.2f} ms"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= div:
            return f"{value / div:.2f}{suffix}"
    return f"{value:.0f}"


def pareto_front(records: Sequence[TrialRecord], cost: str) -> list[TrialRecord]:
    """Finished trials not dominated in (higher objective, lower ``cost``), cheapest first."""
    ok = sorted((r for r in records if not r.failed and cost in r.costs),
                key=lambda r: (r.costs[cost], -r.objective))
    front: list[TrialRecord] = []
    for r in ok:
        if not front or r.objective > front[-1].objective:
            front.append(r)
    return front


def trials_table(records: Sequence[TrialRecord], *, dense_costs: Mapping[str, float],
                 objective: str, top: int = 10, title: str = "best trials") -> Table:
    costs = list(dense_costs)
    table = Table(title=title)
    table.add_column("trial", justify="right")
    table.add_column(objective, justify="right")
    for c in costs:  # latency_ms: its cells say ms, so the header fits 80 columns
        table.add_column("latency" if c == "latency_ms" else c, justify="right")
        table.add_column("% dense", justify="right")
    # Sensitivity probes (one unit thinned, the rest dense) were scored outside the budget on
    # purpose: measurements, never candidates, so they are counted below, not ranked.
    ranked = sorted((r for r in records if not r.failed and not r.extra.get("probe")),
                    key=lambda r: -r.objective)[:top]
    for r in ranked:
        row = [str(r.number), f"{abs(r.objective):.4f}"]
        for c in costs:
            row += [format_cost(c, r.costs[c]), f"{100 * r.costs[c] / dense_costs[c]:.1f}%"]
        table.add_row(*row)
    notes = []
    probes = sum(bool(r.extra.get("probe")) for r in records)
    if probes:
        notes.append(f"{probes} sensitivity probe(s), scored outside the budget, are in the "
                     "study and not ranked here")
    failed = sum(r.failed for r in records)
    if failed:
        notes.append(f"{failed} failed trial(s) recorded in the study with their reasons")
    if notes:
        table.caption = "; ".join(notes)
    return table


def front_table(front: Mapping[str, object], *, dense_objective: float | None = None,
                objective: str = "accuracy") -> Table:
    """The Pareto front of ``autoprune.pareto.front_summary``, cheapest first (a loss is
    shown as the loss, though the front stores it negated)."""
    metric = front["metric"]
    sign = -1.0 if objective == "loss" else 1.0
    table = Table(title=f"Pareto front: validation {objective} against {metric}")
    for col in ("trial", f"{metric} % dense", objective):
        table.add_column(col, justify="right")
    for p in front["points"]:
        table.add_row(str(p["trial"]), f"{100 * p['cost_fraction']:.1f}%",
                      f"{sign * p['objective']:.4f}")
    ref = front["reference"]
    table.caption = (f"hypervolume {front['hypervolume']:.4f} (fraction of dense {metric} x "
                     f"{objective}, reference {100 * ref['cost_fraction']:.0f}%, "
                     f"{sign * ref['objective']:g})"
                     + (f"; dense {objective} {dense_objective:.4f}" if dense_objective else ""))
    return table


def curve_table(curve: Sequence[Sequence[float]], *, best_step: int,
                title: str = "training curve") -> Table:
    """A training curve ``[(step, train_loss, val_loss), ...]``, the kept (best) step marked."""
    table = Table(title=title)
    for col in ("step", "train loss", "validation loss", ""):
        table.add_column(col, justify="right")
    for step, train, val in curve:
        table.add_row(str(int(step)), f"{train:.4f}", f"{val:.4f}",
                      "kept" if int(step) == best_step else "")
    return table


def units_table(units: Mapping[str, Mapping[str, float]], *, title: str = "channels per unit"
                ) -> Table:
    table = Table(title=title)
    for col in ("unit", "kept", "of", "ratio"):
        table.add_column(col, justify="left" if col == "unit" else "right")
    for name, u in units.items():
        table.add_row(name, str(int(u["channels"])), str(int(u["of"])), f"{u['ratio']:.2f}")
    return table


def pareto_plot(records: Sequence[TrialRecord], path: Path, *, dense_costs: Mapping[str, float],
                dense_objective: float | None, budgets: Sequence[Budget], objective: str,
                best: TrialRecord | None = None, title: str = "") -> Path:
    """One panel per cost: every trial, the non-dominated front, the dense model, the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = list(dense_costs)
    fig, axes = plt.subplots(1, len(costs), figsize=(5.2 * len(costs), 4.2), squeeze=False)
    ok = [r for r in records if not r.failed]
    sign = -1.0 if objective == "loss" else 1.0
    for ax, cost in zip(axes[0], costs):
        dense = dense_costs[cost]
        ax.scatter([100 * r.costs[cost] / dense for r in ok], [sign * r.objective for r in ok],
                   s=14, color="0.6", label="trials")
        front = pareto_front(ok, cost)
        ax.plot([100 * r.costs[cost] / dense for r in front], [sign * r.objective for r in front],
                "-o", color="tab:blue", ms=4, label="Pareto front")
        if dense_objective is not None:
            ax.scatter([100.0], [dense_objective], marker="*", s=160, color="tab:green",
                       label="dense", zorder=5)
        if best is not None:
            ax.scatter([100 * best.costs[cost] / dense], [sign * best.objective], marker="D",
                       s=60, color="tab:red", label="chosen", zorder=6)
        for b in budgets:
            if b.metric == cost:
                ax.axvline(100 * b.limit / dense, ls="--", color="tab:red", lw=1,
                           label=f"budget {b.text}")
        ax.set_xlabel(f"{cost} (% of dense {format_cost(cost, dense)})")
        ax.set_ylabel(f"validation {objective}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ms(value: float) -> str:
    """A latency in at most 5 characters up to 10 s, so the check's table fits 80 columns."""
    return f"{value:.2f}" if value < 100 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def latency_check_view(check: LatencyCheck) -> Table:
    """Predicted against measured latency, side by side, for the dense and every measured net;
    it fits an 80-column terminal (the wall-clock medians are summed up in the caption and kept
    in summary.json)."""
    t = Table(title=f"latency (ms): the table's prediction vs measured, budget "
                    f"{_ms(check.limit_ms)} ms")
    for col in ("network", "predicted", "measured", "p10-p90", "error", "meets"):
        t.add_column(col, justify="left" if col == "network" else "right")

    def row(name: str, pred: float, m: LatencyMeasurement, judged: bool) -> None:
        t.add_row(name, _ms(pred), _ms(m.median_ms), f"{_ms(m.p10_ms)}-{_ms(m.p90_ms)}",
                  f"{100 * (pred / m.median_ms - 1):+.1f}%",
                  ("yes" if m.median_ms <= check.limit_ms else "no") if judged else "-")

    row("dense", check.dense_predicted_ms, check.dense, False)
    for number, m in check.measured.items():
        how = "repair" if number in check.repaired else f"rank {check.rank.get(number, '?')}"
        row(f"trial {number} ({how})" + (" *" if number == check.chosen.number else ""),
            check.predicted[number], m, True)
    readings = [check.dense, *check.measured.values()]
    clock = check.dense.device.get("clock", "wall")
    wall = [100 * (m.wall_median_ms / m.median_ms - 1) for m in readings
            if clock != "wall" and m.median_ms > 0 and m.wall_median_ms == m.wall_median_ms]
    spread = (f"{min(wall):+.1f}%" + (f" to {max(wall):+.1f}%"
                                      if f"{min(wall):.1f}" != f"{max(wall):.1f}" else "")
              if wall else "")
    t.caption = (f"* chosen. measured: median of single calls ({clock} clock), p10-p90 their "
                 "spread; error: predicted / measured - 1"
                 + (f"; wall-clock medians {spread} off those" if wall else "")
                 + f". device: {describe_device(check.dense.device)}; load average "
                 f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return t
