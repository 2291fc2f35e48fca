"""The sensitivity agent: each unit's curve measured alone (probes scored outside the budget),
allocations from the curves under the real costs, refinement, chains, resume, and ``pick``
allocating a later budget from a finished study's curves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import autoprune
from autoprune.agents import AgentContext, is_probe, make_agent
from autoprune.agents.curves import Curve, knapsack, threshold
from autoprune.search_job import search
from autoprune.study import StudyStore
from autoprune.testing.landscape import BudgetLandscape, run_agent
from autoprune.zoo.train import load_or_train_baseline

sys.path.insert(0, str(Path(__file__).parent))
from test_agent_search import DIM  # noqa: E402


def _width(model: nn.Module) -> dict[str, float]:
    n = sum(p.numel() for p in model.parameters())
    return {"accuracy": n / (n + 5000.0)}


def test_a_curve_is_zero_when_dense_and_never_falls_as_the_unit_thins() -> None:
    c = Curve({0.0: 0.5, 0.5: 0.6, 0.75: 0.1}, choices=5)  # 0.5 is noise: below 0.6 at 0.5
    assert c.loss(1.0) == 0.0
    assert c.loss(0.0) == 0.6 and c.loss(0.5) == 0.6
    assert np.allclose(c.grid, [0.0, 0.25, 0.5, 0.75, 1.0])  # a unit's own 5 choices


def test_the_knapsack_thins_the_insensitive_unit_and_the_threshold_agrees() -> None:
    costs = lambda x: {"macs": float(np.sum(x))}  # noqa: E731 - two equal units
    curves = [Curve({0.0: 1.0, 0.5: 0.5}, 9), Curve({0.0: 0.1, 0.5: 0.05}, 9)]
    x = knapsack(curves, costs, {"macs": 1.0})
    assert x[0] == 1.0 and x[1] == 0.0  # all of the budget's cut from the cheap-to-lose unit
    assert np.allclose(threshold(curves, costs, {"macs": 1.0}), x)


def _landscape_context(land: BudgetLandscape, trials: int | None) -> AgentContext:
    return AgentContext(choices=tuple(tuple(range(1, 65)) for _ in range(land.dim)),
                        budget=land.point_costs(), trials=trials)


def test_sensitivity_measures_curves_then_allocates_within_the_budget() -> None:
    land = BudgetLandscape(DIM, 0)
    agent = make_agent("sensitivity", DIM)
    agent.set_context(_landscape_context(land, trials=60))
    asked = []
    while len(asked) < 60 and (points := agent.ask(1)):
        x = points[0]
        probing = is_probe(x)
        r = np.asarray(x, dtype=float) if probing else land.repair(x)
        asked.append((probing, r, land.value(r)))
        agent.tell(r, {"objective": land.value(r), **({"probe": 1.0} if probing else {})})
    uniform = asked[0][2]
    assert not asked[0][0]  # the uniform allocation first: a network within the budget at once
    probes = [r for probing, r, _ in asked if probing]
    # The dense point, then every unit thinned alone: one coordinate below 1 in each probe.
    assert np.all(probes[0] == 1.0)
    assert all(np.sum(p < 1.0) == 1 for p in probes[1:])
    assert {int(np.flatnonzero(p < 1.0)[0]) for p in probes[1:]} == set(range(DIM))
    assert len(probes) <= 0.7 * 60  # the curves take at most their share of the trials
    after = [(r, v) for probing, r, v in asked[len(probes) + 1:]]
    assert len(asked) == 60  # alone it goes on refining until the trials run out
    assert all(land.feasible(r) for r, _ in after)
    # The knapsack over the measured curves beats the uniform allocation at once, and the
    # refinement closes most of what remains to the optimum.
    assert after[0][1] > uniform
    assert land.optimum - max(v for _, v in after) < 0.25 * (land.optimum - uniform)


def test_sensitivity_in_a_chain_hands_over_after_its_allocations() -> None:
    land = BudgetLandscape(DIM, 1)
    agent = make_agent("sensitivity+tpe", DIM, seed=0)
    agent.set_context(_landscape_context(land, trials=80))
    regrets = run_agent(agent, land, evaluations=80)
    assert agent.stage == 1  # TPE took over after the probes and the allocations
    sens = agent.stages[0]
    assert sens.asked == 1 + len(sens.plan) + sens.HANDOVER  # uniform, probes, allocations
    assert regrets[-1] < regrets[sens.asked - 1] or regrets[-1] < 0.05


def test_sensitivity_resumes_from_its_saved_state() -> None:
    land = BudgetLandscape(DIM, 2)
    first = make_agent("sensitivity", DIM)
    first.set_context(_landscape_context(land, trials=40))
    run_agent(first, land, evaluations=25)
    again = make_agent("sensitivity", DIM)
    again.set_context(_landscape_context(land, trials=40))
    again.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert again.measured == first.measured
    assert np.allclose(again.ask(1)[0], first.ask(1)[0])


def test_a_sensitivity_search_records_its_probes_and_chooses_within_the_budget(
        user_model: nn.Module) -> None:
    x = torch.randn(1, 1, 16, 16)
    alloc = autoprune.allocate(user_model, example_inputs=x, target="flops=50%",
                               evaluate=_width, agent="sensitivity", trials=30, round_to=4)
    probes = [r for r in alloc.trials if r.extra.get("probe")]
    # The uniform allocation, then the dense point and each unit thinned alone (scored as they
    # are, outside the budget), then allocations within it.
    assert not alloc.trials[0].extra.get("probe")
    assert probes[0].costs["macs"] == alloc.dense_costs["macs"]
    assert {sum(p < 1.0 for p in r.point) for r in probes[1:]} == {1}
    assert len(alloc.trials) > len(probes) + 1
    for r in alloc.trials:
        if not r.extra.get("probe"):
            assert r.costs["macs"] <= 0.5 * alloc.dense_costs["macs"] + 1e-6
    assert alloc.costs["macs"] <= 0.5 * alloc.dense_costs["macs"] + 1e-6
    assert alloc.chosen.objective == max(r.objective for r in alloc.trials
                                       if r.costs["macs"] <= 0.5 * alloc.dense_costs["macs"])


def test_pick_allocates_a_later_budget_from_the_study_curves(tmp_path: Path) -> None:
    load_or_train_baseline("resnet20", "digits", epochs=1, cache_dir=tmp_path / "cache",
                           progress=False, image_size=8, width_mult=0.5)
    run_dir = tmp_path / "run"
    settings = autoprune.SearchSettings(
        source=autoprune.ModelSource(model="resnet20", image_size=8, width_mult=0.5),
        space=autoprune.SpaceSettings(round_to=4), targets=("flops=70%",), agent="sensitivity",
        trials=16, scoring=autoprune.ScoringSettings(calib_batches=2), run_dir=run_dir,
        cache_dir=tmp_path / "cache", progress=False)
    summary = search(settings)
    dense = summary["dense"]["costs"]["macs"]
    # A budget tighter than every trial of the search: only the curves can answer it.
    records = StudyStore.in_folder(run_dir).records()
    cheapest = min(r.costs["macs"] for r in records) / dense
    target = f"flops={100 * cheapest * 0.8:.1f}%"
    picked = autoprune.pick(run_dir, target, cache_dir=tmp_path / "cache")
    assert picked["trial"] is None  # the curves' allocation, not a trial of the study
    assert picked["budgets_met"]
    assert picked["costs"]["macs"] <= cheapest * 0.8 * dense * (1 + 1e-6)
    model = autoprune.load_pruned(run_dir, choice=picked["choice"])
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_a_resumed_sensitivity_search_never_measures_a_probe_again(user_model: nn.Module,
                                                                   tmp_path: Path) -> None:
    x = torch.randn(1, 1, 16, 16)
    run = dict(example_inputs=x, target="flops=50%", evaluate=_width, agent="sensitivity",
               round_to=4, run_dir=tmp_path / "run")
    first = autoprune.allocate(user_model, trials=8, **run)
    probes = [r.config for r in first.trials if r.extra.get("probe")]
    # More trials on resume: the same probes (planned for 8 trials), then refinement.
    again = autoprune.allocate(user_model, trials=20, **run)
    assert [r.config for r in again.trials if r.extra.get("probe")] == probes
    assert len(again.trials) > len(first.trials)
    keys = [tuple(sorted(r.config.items())) for r in again.trials]
    assert len(keys) == len(set(keys))  # no configuration scored twice


def test_too_few_trials_for_a_curve_search_at_random_after_the_uniform_allocation(
        user_model: nn.Module) -> None:
    alloc = autoprune.allocate(user_model, example_inputs=torch.randn(1, 1, 16, 16),
                               target="flops=50%", evaluate=_width, trials=4, round_to=4)
    assert len(alloc.trials) == 4 and not any(r.extra.get("probe") for r in alloc.trials)


def test_the_trials_table_ranks_candidates_and_counts_the_probes_apart() -> None:
    from rich.console import Console

    from autoprune.report import trials_table
    from autoprune.study import TrialRecord

    def rec(n: int, acc: float, macs: float, probe: bool) -> TrialRecord:
        return TrialRecord(number=n, point=(), config={}, costs={"macs": macs}, metrics={},
                           objective=acc, extra={"probe": True} if probe else {})

    records = [rec(0, 0.80, 50.0, False), rec(1, 0.99, 100.0, True), rec(2, 0.85, 49.0, False)]
    console = Console(width=120, record=True)
    console.print(trials_table(records, dense_costs={"macs": 100.0}, objective="accuracy"))
    text = console.export_text()
    assert "0.8500" in text and "0.8000" in text and "0.9900" not in text
    assert "1 sensitivity probe(s)" in text


def test_channels_keep_a_share_of_the_uniform_width_while_neurons_may_reach_their_floor() -> None:
    # Four CNN channel units (say the expansions of skip-connected blocks) that each lose
    # almost nothing thinned alone to the floor, and one MLP neurons unit; 60% of the width must
    # go. Unbounded, the knapsack cuts the channel units to the floor together (issue 34).
    from autoprune.agents import PointCosts
    from autoprune.agents.sensitivity import SensitivityAgent, allocation_from_probes, \
        lower_bounds
    choices = tuple(tuple(range(1, 101)) for _ in range(5))

    def costs(x: np.ndarray) -> dict[str, float]:
        return {"macs": float(sum(c[int(round(v * 99))] / 100 for c, v in zip(choices, x)))}

    kinds = ("channels",) * 4 + ("neurons",)
    ctx = AgentContext(choices=choices, kinds=kinds, trials=60,
                       budget=PointCosts(costs=costs, limits={"macs": 2.0},
                                         dense={"macs": 5.0}))
    floor_loss = [0.01, 0.011, 0.012, 0.013, 0.001]
    curves = [Curve({0.0: v}, 100) for v in floor_loss]
    free = knapsack(curves, costs, {"macs": 2.0})
    assert sum(free[:4] == 0.0) >= 2  # bang-bang: channel units at the floor together

    low = lower_bounds(ctx, SensitivityAgent.SPREAD)
    assert low[4] == 0.0 and np.all(low[:4] > 0.0)  # neurons keep their floor
    # Each channel unit may go down to SPREAD of the uniform allocation's width (0.4 here),
    # rounded down to its choices, and no lower.
    uniform = max(t for t in np.linspace(0, 1, 1001) if costs(np.full(5, t))["macs"] <= 2.0)
    for i in range(4):
        kept = choices[i][int(round(low[i] * 99))]
        want = SensitivityAgent.SPREAD * choices[i][int(round(uniform * 99))]
        assert want - 1 < kept <= want + 1e-9
    told = [(np.ones(5), {"objective": 1.0})]
    for i, v in enumerate(floor_loss):
        x = np.ones(5)
        x[i] = 0.0
        told.append((x, {"objective": 1.0 - v}))
    for x in (allocation_from_probes(ctx, told), threshold(curves, costs, {"macs": 2.0},
                                                             lower=low)):
        assert x is not None and costs(x)["macs"] <= 2.0
        assert np.all(x[:4] >= low[:4] - 1e-9) and not np.any(x[:4] == 0.0)
        assert x[4] == 0.0  # the insensitive neurons unit still goes to its floor
