"""The heuristics on the weight-sparsity spaces (unstructured, N:M), in their papers' own form:
global magnitude and LAMP thresholds on single weights, ERK densities, uniform levels, OWL's
outlier-weighted layer sparsities; all through the real search loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import autoprune
from autoprune.agents import make_agent
from autoprune.agents.erk import erk_factors
from autoprune.agents.owl import outlier_ratios, owl_sparsities
from autoprune.context import agent_context
from autoprune.problem import build_problem
from autoprune.search_spaces import make_space
from autoprune.targets import parse_targets
from autoprune.zoo.models import build_model

HEURISTICS = ["uniform", "global", "lamp", "erk", "sensitivity", "owl"]
BUDGETS = {"unstructured": ("sparsity=80%", 0.8), "nm": ("sparsity=50%", 0.5)}
FINE = tuple(round(v, 2) for v in np.arange(0.0, 0.99, 0.01))  # a near-continuous grid


class SmallNet(nn.Module):
    """Four hidden convs of different shapes between a stem and a head (kept dense)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, padding=1)
        self.c4 = nn.Conv2d(32, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.stem, self.c1, self.c2, self.c3, self.c4):
            x = torch.relu(conv(x))
        return self.head(x.mean(dim=(2, 3)))


def _small(outliers: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = SmallNet().eval()
    with torch.no_grad():
        for conv in (net.c1, net.c2, net.c3, net.c4):
            conv.weight.normal_(0.0, 0.1)  # Gaussian: almost no weight above 5x the mean |w|
        if outliers:  # a few huge weights in c2 only
            flat = net.c2.weight.view(-1)
            flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(1))[:40]] = 5.0
    return net


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet20", in_channels=1, input_size=16).eval()


X = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))


def _nonzero(model: nn.Module) -> dict[str, float]:
    n = sum(int((p != 0).sum()) for p in model.parameters())
    return {"accuracy": n / (n + 5000.0)}


def _sparsity(space, config) -> float:
    return 1.0 - sum(config[u.name] for u in space.units) / sum(u.full for u in space.units)


def _all_magnitudes(model: nn.Module, space) -> list[torch.Tensor]:
    return [model.get_submodule(u.name).weight.detach().abs().reshape(-1) for u in space.units]


@pytest.mark.parametrize("granularity", ["unstructured", "nm"])
@pytest.mark.parametrize("name", HEURISTICS)
def test_every_heuristic_runs_on_the_weight_spaces_and_meets_the_budget(
        resnet: nn.Module, granularity: str, name: str) -> None:
    target, sparsity = BUDGETS[granularity]
    space = make_space(granularity, resnet, X, nm=("2:4", "1:4"))
    alloc = autoprune.allocate(resnet, example_inputs=X, target=target, evaluate=_nonzero,
                               agent=name, trials=45, space=space)
    if name != "sensitivity":  # it refines until the trials run out
        assert 1 <= len(alloc.trials) < 45  # each stops by itself
    for r in alloc.trials:  # sensitivity's probes are scored outside the budget, as asked
        if not r.extra.get("probe"):
            assert r.costs["weights"] <= (1 - sparsity) * alloc.dense_costs["weights"] + 1e-6
    assert alloc.costs["weights"] <= (1 - sparsity) * alloc.dense_costs["weights"] + 1e-6
    assert _sparsity(space, alloc.config) >= sparsity - 1e-9
    if granularity == "nm":  # every unit dense or one of the patterns
        assert all(alloc.config[u.name] == u.full or space.pattern(u.name, alloc.config[u.name])
                   for u in space.units)
    if name == "uniform":  # one level (one pattern) everywhere
        levels = {round(1 - alloc.config[u.name] / u.full, 2) for u in space.units}
        assert len(levels) == 1, levels


def test_weight_space_context_holds_numpy_magnitudes_and_channel_space_floats(
        resnet: nn.Module) -> None:
    space = make_space("unstructured", resnet, X)
    ctx = agent_context(space, resnet, needs={"scores", "layers"})
    assert ctx.granularity == "unstructured" and ctx.weights
    for u, s, w, rows in zip(space.units, ctx.scores, _all_magnitudes(resnet, space), ctx.layers):
        assert isinstance(s, np.ndarray) and not s.flags.writeable and s.shape == (u.full,)
        assert np.array_equal(s, w.numpy())
        (i, o, kh, kw), = rows
        assert i * o * kh * kw == u.full
    assert agent_context(make_space("nm", resnet, X), resnet, needs=set()).granularity == "nm"
    channel = make_space("channel", resnet, X, round_to=4)
    cctx = agent_context(channel, resnet, needs={"scores"})
    assert cctx.granularity == "channels" and not cctx.weights
    assert all(isinstance(s, tuple) and all(type(v) is float for v in s) for s in cctx.scores)


def _direct_counts(model: nn.Module, space, keep: int) -> np.ndarray:
    """Per unit, how many of its weights reach one |w| threshold across all units' weights that
    keeps ``keep`` weights (computed here with torch, not by the agent's code)."""
    mags = _all_magnitudes(model, space)
    tau = torch.topk(torch.cat(mags), keep).values[-1]
    return np.array([int((m >= tau).sum()) for m in mags])


def test_global_magnitude_is_one_threshold_on_all_weights(resnet: nn.Module) -> None:
    space = make_space("unstructured", resnet, X, levels=FINE)
    full = np.array([u.full for u in space.units])
    agent = make_agent("global", space.dim)
    agent.set_context(agent_context(space, resnet, needs=agent.context_needs))
    for s in (0.2, 0.35):  # the family's members are the exact per-layer threshold counts
        keep = int(round(s * full.sum()))
        assert np.array_equal(np.rint(agent.fractions(s) * full), _direct_counts(resnet, space, keep))
    # Through the search loop: the last member of the bisection, on the grid, is the threshold.
    alloc = autoprune.allocate(resnet, example_inputs=X, target="sparsity=80%", evaluate=_nonzero,
                               agent="global", trials=20, space=space)
    last = alloc.trials[-1].config
    got = np.array([last[u.name] for u in space.units])
    want = _direct_counts(resnet, space, int(got.sum()))
    step = np.array([max(np.diff(u.choices)) for u in space.units])  # one grid step
    assert np.all(np.abs(got - want) <= step + 1), (got, want)
    assert not np.allclose(got / full, got.sum() / full.sum(), atol=0.02)  # not uniform


def test_erk_densities_follow_the_formula(resnet: nn.Module) -> None:
    space = make_space("unstructured", resnet, X, levels=FINE)
    agent = make_agent("erk", space.dim)
    ctx = agent_context(space, resnet, needs=agent.context_needs)
    agent.set_context(ctx)
    f = erk_factors(ctx.layers)
    shapes = [rows[0] for rows in ctx.layers]
    assert np.allclose(f, [(i + o + kh + kw) / (i * o * kh * kw) for i, o, kh, kw in shapes])
    d = agent.fractions(0.3)
    free = d < 1.0  # layers under the cap: density proportional to the ERK factor
    assert free.any() and np.allclose(d[free] / d[free].max(), f[free] / f[free].max())
    alloc = autoprune.allocate(resnet, example_inputs=X, target="sparsity=80%", evaluate=_nonzero,
                               agent="erk", trials=20, space=space)
    share = np.array([alloc.config[u.name] / u.full for u in space.units])
    # More weights per (n_in + n_out + k_h + k_w) (a smaller factor): sparser, never denser.
    order = np.argsort(f, kind="stable")
    # (counts are rounded per layer: the same level may differ by under one weight)
    assert np.all(np.diff(share[order]) >= -1.0 / min(u.full for u in space.units)), share[order]
    assert share[order][0] < share[order][-1]


def test_owl_follows_its_rule() -> None:
    ratios = np.array([0.0, 0.01, 0.002, 0.0])
    s = owl_sparsities(ratios, 0.8, 0.08)
    n = ratios / 0.01
    assert np.allclose(s, np.clip(0.8 - 0.16 * (n - n.mean()), 0.72, 0.88))
    assert s[1] == pytest.approx(0.72) and s.argmin() == 1 and s[0] == s[3] == s.max()
    assert np.allclose(owl_sparsities(np.zeros(3), 0.5), 0.5)  # no outliers anywhere: uniform
    assert np.allclose(outlier_ratios([np.r_[np.ones(99), 1000.0], np.ones(10)]), [0.01, 0.0])


@pytest.mark.parametrize("granularity", ["unstructured", "nm"])
def test_owl_prunes_the_layer_with_outliers_less(granularity: str) -> None:
    net = _small(outliers=True)
    target, sparsity = BUDGETS[granularity]
    space = make_space(granularity, net, X, levels=FINE, nm=("2:4", "1:4"))
    names = [u.name for u in space.units]
    assert names == ["c1", "c2", "c3", "c4"]
    ctx = agent_context(space, net, needs={"scores"})
    ratios = outlier_ratios(ctx.scores)
    assert ratios.argmax() == 1 and ratios[1] > 0.005
    alloc = autoprune.allocate(net, example_inputs=X, target=target, evaluate=_nonzero,
                               agent="owl", trials=5, space=space)
    assert len(alloc.trials) == 1  # one proposal
    assert _sparsity(space, alloc.config) >= sparsity - 1e-9
    layer = {u.name: 1 - alloc.config[u.name] / u.full for u in space.units}
    others = [layer[n] for n in names if n != "c2"]
    if granularity == "unstructured":
        assert layer["c2"] < min(others) - 0.05  # about S - lam against S + a little
    else:  # the outlier-rich layer gets the densest pattern
        assert layer["c2"] < min(others)


def test_owl_takes_its_options_and_runs_on_the_channel_space(user_model: nn.Module) -> None:
    agent = make_agent("owl", 3, options={"M": "3", "lam": "0.04"})
    assert (agent.M, agent.lam) == (3.0, 0.04)
    with pytest.raises(ValueError, match="lam"):
        make_agent("owl", 3, options={"lam": "0.5"})
    alloc = autoprune.allocate(user_model, example_inputs=X, target="flops=50%",
                               evaluate=_nonzero, agent="owl", trials=5, round_to=4)
    assert len(alloc.trials) == 1
    assert alloc.trials[0].costs["macs"] <= 0.5 * alloc.dense_costs["macs"] + 1e-6


def test_owl_meets_a_flops_budget_on_a_weight_space(resnet: nn.Module) -> None:
    space = make_space("unstructured", resnet, X)
    problem = build_problem(space, parse_targets("flops=40%"))
    agent = make_agent("owl", space.dim)
    agent.set_context(agent_context(space, resnet, needs=agent.context_needs, problem=problem))
    (x,) = agent.ask(1)
    assert agent.ask(1) == []
    assert problem.feasible(problem.costs(space.decode(x)))
