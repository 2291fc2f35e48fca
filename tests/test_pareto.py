"""Pareto searches: a range of budgets, the non-dominated set and its hypervolume, and picking
from a finished run without a new search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import autoprune
from autoprune.search_job import search
from autoprune.agents import make_agent
from autoprune.pareto import ParetoRange, hypervolume
from autoprune.problem import PruningProblem
from autoprune.session import run_search
from autoprune.search_spaces import ChannelSpace
from autoprune.study import StudyStore
from autoprune.targets import parse_targets
from autoprune.zoo.train import load_or_train_baseline


def test_hypervolume_of_a_staircase() -> None:
    pts = [(0.2, 0.5), (0.4, 0.8), (0.5, 0.7)]  # the last is dominated
    assert hypervolume(pts, ref_cost=1.0, ref_objective=0.0) == pytest.approx(
        (0.4 - 0.2) * 0.5 + (1.0 - 0.4) * 0.8)
    assert hypervolume([(1.2, 0.9)], ref_cost=1.0, ref_objective=0.0) == 0.0


def test_a_pareto_range_moves_only_the_first_budget_on_its_metric() -> None:
    r = ParetoRange(metric="macs", low=10.0, high=50.0, dense=100.0)
    from autoprune.targets import Budget

    budgets = [Budget(metric="macs", limit=50.0, text="a"), Budget(metric="params", limit=7.0,
                                                                     text="b")]
    moved = r.budgets(budgets, 0.25)
    assert [b.limit for b in moved] == [20.0, 7.0]
    assert r.cost_objective({"macs": 30.0}) == -0.3


def _width(model: nn.Module) -> dict[str, float]:
    n = sum(p.numel() for p in model.parameters())
    return {"accuracy": n / (n + 5000.0)}


@pytest.mark.parametrize("agent_name", ["nsga2", "random"])
def test_a_pareto_search_spreads_candidates_over_the_range(user_model: nn.Module,
                                                           agent_name: str) -> None:
    space = ChannelSpace.from_model(user_model, torch.randn(1, 1, 16, 16), round_to=4)
    problem = PruningProblem(space, parse_targets("flops=60%"))
    dense, high = problem.dense_costs["macs"], problem.budgets[0].limit
    pareto = ParetoRange(metric="macs", low=problem.min_costs["macs"], high=high, dense=dense)
    agent = make_agent(agent_name, space.dim + 1, seed=0, objectives=2)
    records = run_search(problem, model=user_model, evaluate=_width, agent=agent, trials=24,
                         store=StudyStore.in_memory(), progress=False, pareto=pareto)
    fractions = np.array([r.costs["macs"] / dense for r in records])
    assert fractions.max() <= 0.6 + 1e-9
    assert fractions.min() < 0.35 and fractions.max() > 0.5  # a range, not one budget
    for r in records:  # each candidate sits just inside its own budget level
        assert r.costs["macs"] <= pareto.limit(r.point[-1]) * (1 + 1e-9)


def test_pareto_search_writes_the_front_and_pick_chooses_from_it(tmp_path: Path) -> None:
    load_or_train_baseline("resnet20", "digits", epochs=1, cache_dir=tmp_path / "cache",
                           progress=False, image_size=8, width_mult=0.5)
    run_dir = tmp_path / "run"
    settings = autoprune.SearchSettings(
        source=autoprune.ModelSource(model="resnet20", image_size=8, width_mult=0.5),
        space=autoprune.SpaceSettings(round_to=4), targets=("flops=60%",), agent="nsga2",
        objective="pareto", trials=10, scoring=autoprune.ScoringSettings(calib_batches=2),
        run_dir=run_dir, cache_dir=tmp_path / "cache", progress=False)
    summary = search(settings)
    front = json.loads((run_dir / "front.json").read_text())
    assert summary["front"]["hypervolume"] == pytest.approx(front["hypervolume"])
    assert front["hypervolume"] > 0
    costs = [p["cost_fraction"] for p in front["points"]]
    accs = [p["objective"] for p in front["points"]]
    assert costs == sorted(costs) and accs == sorted(accs)  # non-dominated: both rise
    assert max(costs) <= 0.6 + 1e-9

    target = f"flops={100 * (costs[0] + costs[-1]) / 2:.1f}%"
    picked = autoprune.pick(run_dir, target, cache_dir=tmp_path / "cache")
    assert picked["budgets_met"]
    model = autoprune.load_pruned(run_dir, choice=picked["choice"])
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    # The command line makes the same call.
    from typer.testing import CliRunner

    from autoprune.cli import app

    out = CliRunner().invoke(app, ["pick", "--run", str(run_dir), "--target", target,
                                   "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout[out.stdout.index("{"):])["trial"] == picked["trial"]
    with pytest.raises(autoprune.TargetError, match="cannot be met"):
        autoprune.pick(run_dir, "flops=0.1%", cache_dir=tmp_path / "cache")
    cheapest = 100 * min(p["cost_fraction"] for p in front["points"])
    lowest = 100 * summary["front"]["range"][0] / summary["dense"]["costs"]["macs"]
    if cheapest > lowest + 0.5:  # a budget no trial of the run meets, though the space could
        with pytest.raises(autoprune.SearchError, match="no trial"):
            autoprune.pick(run_dir, f"flops={(cheapest + lowest) / 2:.2f}%",
                           cache_dir=tmp_path / "cache")
