"""Pruning criteria (search_spaces/criteria.py): each ranks a hand-built model's channels as
its definition says, ``apply`` keeps those, and the data criteria measure once per model."""

from __future__ import annotations

import pickle

import cloudpickle
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from autoprune.search_spaces import (CRITERIA, ChannelSpace, Criterion, criterion_names,
                                     make_criterion, make_space)
from autoprune.zoo.models import build_model


def _mlp(w0: torch.Tensor, w1: torch.Tensor, b0: torch.Tensor | None = None) -> nn.Sequential:
    """linear-relu-linear with the given weights (the first layer's channels are the unit)."""
    model = nn.Sequential(nn.Linear(w0.shape[1], w0.shape[0], bias=b0 is not None), nn.ReLU(),
                          nn.Linear(w0.shape[0], w1.shape[0], bias=False))
    with torch.no_grad():
        model[0].weight.copy_(w0)
        model[2].weight.copy_(w1)
        if b0 is not None:
            model[0].bias.copy_(b0)
    return model.eval()


def _space(model: nn.Module, x: torch.Tensor, criterion: str | Criterion) -> ChannelSpace:
    return ChannelSpace.from_model(model, x, round_to=1, min_ratio=0.2, criterion=criterion)


def _calibration(n_in: int, batches: int = 2, n: int = 6, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, n_in, generator=g) + 0.1, torch.randint(0, 3, (n,), generator=g))
            for _ in range(batches)]


def _order(space: ChannelSpace, model: nn.Module) -> list[int]:
    """The first unit's elements from least to most important."""
    return np.argsort(space.channel_scores(model)[0], kind="stable").tolist()


def test_registry_lists_every_criterion() -> None:
    assert criterion_names() == sorted(["apoz", "bn-scale", "fpgm", "hessian", "l1", "l2",
                                        "reconstruction", "taylor"])
    assert all(CRITERIA[n].name == n for n in criterion_names())
    assert [n for n in criterion_names() if CRITERIA[n].needs_data] == [
        "apoz", "hessian", "reconstruction", "taylor"]


def test_l1_and_l2_disagree_on_many_small_weights_against_one_large() -> None:
    w0 = torch.full((6, 4), 2.0)
    w0[0] = 0.5  # many small weights: L1 2.0, L2 1.0
    w0[1] = torch.tensor([1.5, 0.0, 0.0, 0.0])  # one large weight: L1 1.5, L2 2.25
    model, x = _mlp(w0, torch.zeros(3, 6)), torch.randn(2, 4)
    l1, l2 = _space(model, x, "l1"), _space(model, x, make_criterion("l2"))
    assert l1.criterion.name == "l1" and l2.criterion.name == "l2"
    assert np.allclose(l1.channel_scores(model)[0], w0.abs().sum(1).numpy())
    assert np.allclose(l2.channel_scores(model)[0], w0.pow(2).sum(1).numpy())
    assert _order(l1, model)[:2] == [1, 0] and _order(l2, model)[:2] == [0, 1]
    assert torch.equal(l1.apply(model, {"0": 5})[0].weight, w0[[0, 2, 3, 4, 5]])
    assert torch.equal(l2.apply(model, {"0": 5})[0].weight, w0[[1, 2, 3, 4, 5]])


@pytest.mark.parametrize("name", ["taylor", "hessian"])
def test_gradient_criteria_rank_last_a_large_channel_nothing_reads(name: str) -> None:
    torch.manual_seed(0)
    w0 = torch.rand(6, 4) + 0.1  # positive weights and inputs: every channel is active
    w0[2] = 10.0  # the largest weights, but no consumer reads them: zero gradient
    w1 = torch.randn(3, 6)
    w1[:, 2] = 0.0
    model, x = _mlp(w0, w1), torch.rand(2, 4)
    space = _space(model, x, make_criterion(name, calibration=_calibration(4)))
    scores = space.channel_scores(model)[0]
    assert scores[2] == 0.0 and (np.delete(scores, 2) > 0).all()
    assert _order(_space(model, x, "l2"), model)[-1] == 2  # magnitude keeps it first
    pruned = space.apply(model, {"0": 5})
    assert torch.equal(pruned[0].weight, w0[[0, 1, 3, 4, 5]])
    assert torch.equal(pruned[2].weight, w1[:, [0, 1, 3, 4, 5]])


def test_taylor_is_the_squared_group_sum_of_weight_times_gradient() -> None:
    torch.manual_seed(1)
    model, x = _mlp(torch.rand(5, 4) + 0.1, torch.randn(3, 5)), torch.rand(2, 4)
    calibration = _calibration(4)
    space = _space(model, x, make_criterion("taylor", calibration=calibration))
    for inputs, targets in calibration:
        F.cross_entropy(model(inputs), targets).backward()
    w0, w1 = model[0].weight, model[2].weight
    want = ((w0 * w0.grad).sum(1) + (w1 * w1.grad).sum(0)).pow(2).detach().numpy()
    assert np.allclose(space.channel_scores(model)[0], want, rtol=1e-5)


def test_hessian_is_half_the_fisher_times_squared_weights() -> None:
    torch.manual_seed(2)
    model, x = _mlp(torch.rand(5, 4) + 0.1, torch.randn(3, 5)), torch.rand(2, 4)
    calibration = _calibration(4, batches=1, n=4)
    space = _space(model, x, make_criterion("hessian", calibration=calibration))
    squares = [torch.zeros_like(model[0].weight), torch.zeros_like(model[2].weight)]
    inputs, targets = calibration[0]
    for k in range(4):  # per-sample gradients
        model.zero_grad()
        F.cross_entropy(model(inputs[k:k + 1]), targets[k:k + 1]).backward()
        squares[0] += model[0].weight.grad ** 2 / 4
        squares[1] += model[2].weight.grad ** 2 / 4
    w0, w1 = model[0].weight.detach(), model[2].weight.detach()
    want = 0.5 * ((squares[0] * w0 ** 2).sum(1) + (squares[1] * w1 ** 2).sum(0))
    assert np.allclose(space.channel_scores(model)[0], want.numpy(), rtol=1e-5)


def _conv_bn(gamma: torch.Tensor) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 4, 3, padding=1))
    with torch.no_grad():
        model[1].weight.copy_(gamma)
        model[1].running_mean.uniform_(-0.5, 0.5)
    return model.eval()


def test_bn_scale_follows_gamma() -> None:
    gamma = torch.tensor([0.5, -2.0, 0.1, 1.0, -0.05, 3.0])
    model, x = _conv_bn(gamma), torch.randn(2, 1, 8, 8)
    space = _space(model, x, "bn-scale")
    assert np.allclose(space.channel_scores(model)[0], gamma.abs().numpy())
    assert _order(space, model) == [4, 2, 0, 3, 1, 5]
    pruned = space.apply(model, {"0": 3})
    assert torch.equal(pruned[1].weight, gamma[[1, 3, 5]])
    assert torch.equal(pruned[0].weight, model[0].weight[[1, 3, 5]])


def test_bn_scale_without_a_norm_is_one_error_naming_the_units_and_the_fix() -> None:
    model, x = _mlp(torch.rand(5, 4), torch.rand(3, 5)), torch.rand(2, 4)
    with pytest.raises(ValueError, match=r"no norm layer.*: 0\. Fix: choose another criterion"
                                         r".*ignored_layers=\['0'\]"):
        _space(model, x, "bn-scale")


def test_fpgm_ranks_lowest_the_channel_at_the_geometric_median() -> None:
    centre = torch.tensor([2.0, 2.0])
    w0 = torch.stack([centre + torch.tensor(d) for d in
                      ([1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 0.0])])
    model, x = _mlp(w0, torch.ones(3, 5)), torch.rand(2, 2)
    space = _space(model, x, "fpgm")
    scores = space.channel_scores(model)[0]
    want = torch.cdist(w0, w0).sum(1).numpy()
    assert np.allclose(scores, want) and _order(space, model)[0] == 4
    assert _order(_space(model, x, "l2"), model)[0] in (1, 3)  # magnitude would drop another
    assert torch.equal(space.apply(model, {"0": 4})[0].weight, w0[:4])


def test_apoz_ranks_last_a_channel_mostly_below_zero() -> None:
    torch.manual_seed(0)
    w0, b0 = torch.randn(6, 4), torch.zeros(6)
    b0[3] = -100.0  # never positive after ReLU
    model, x = _mlp(w0, torch.randn(3, 6), b0), torch.randn(2, 4)
    calibration = [(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    space = _space(model, x, make_criterion("apoz", calibration=calibration))
    pre = torch.cat([model[0](inputs) for inputs, _ in calibration])
    want = 1.0 - (pre <= 0).double().mean(0).numpy()
    scores = space.channel_scores(model)[0]
    assert np.allclose(scores, want) and scores[3] == 0.0 and _order(space, model)[0] == 3
    assert torch.equal(space.apply(model, {"0": 5})[0].bias, b0[[0, 1, 2, 4, 5]])


def test_apoz_reads_the_norm_layer_output() -> None:
    model = _conv_bn(torch.ones(6))
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([0.0, -50.0, 0.5, 0.0, 50.0, -0.5]))
    calibration = [(torch.randn(3, 1, 8, 8), torch.zeros(3, dtype=torch.long))]
    space = _space(model, torch.randn(2, 1, 8, 8), make_criterion("apoz", calibration=calibration))
    with torch.no_grad():
        out = model[1](model[0](calibration[0][0]))
    want = 1.0 - (out <= 0).double().mean((0, 2, 3)).numpy()
    assert np.allclose(space.channel_scores(model)[0], want)
    assert _order(space, model)[0] == 1 and _order(space, model)[-1] == 4


def test_reconstruction_ranks_last_a_channel_its_consumer_barely_reads() -> None:
    torch.manual_seed(0)
    w0, w1 = torch.rand(6, 4) + 0.1, torch.randn(3, 6)
    w0[4] *= 20.0  # the largest channel ...
    w1[:, 4] = 1e-4  # ... whose consumer weights are tiny
    model, x = _mlp(w0, w1), torch.rand(2, 4)
    calibration = _calibration(4)
    space = _space(model, x, make_criterion("reconstruction", calibration=calibration))
    hidden = torch.cat([torch.relu(model[0](inputs)) for inputs, _ in calibration])
    want = (hidden.pow(2).sum(0) * w1.pow(2).sum(0)).detach().numpy()
    assert np.allclose(space.channel_scores(model)[0], want, rtol=1e-5)
    assert _order(space, model)[0] == 4 and _order(_space(model, x, "l2"), model)[-1] == 4
    assert torch.equal(space.apply(model, {"0": 5})[2].weight, w1[:, [0, 1, 2, 3, 5]])


def test_reconstruction_of_a_conv_consumer_is_each_input_channels_output_energy() -> None:
    model = _conv_bn(torch.rand(6) + 0.5)
    calibration = [(torch.randn(3, 1, 8, 8), torch.zeros(3, dtype=torch.long))]
    space = _space(model, torch.randn(2, 1, 8, 8),
                   make_criterion("reconstruction", calibration=calibration))
    with torch.no_grad():
        hidden = model[2](model[1](model[0](calibration[0][0])))
        want = [F.conv2d(hidden[:, c:c + 1], model[3].weight[:, c:c + 1], padding=1).pow(2).sum()
                for c in range(6)]
    assert np.allclose(space.channel_scores(model)[0], torch.stack(want).numpy(), rtol=1e-4)


def test_a_data_criterion_without_calibration_is_one_error_naming_the_fix() -> None:
    fix = r"pass calibration=\[\(inputs, targets\), \.\.\.\] from the training split"
    with pytest.raises(ValueError, match=fix):
        make_criterion("taylor")
    with pytest.raises(ValueError, match=fix):
        make_criterion("apoz", calibration=[])
    with pytest.raises(ValueError, match=fix):
        make_criterion("hessian", calibration=[torch.randn(2, 4)])
    model = _mlp(torch.rand(5, 4), torch.rand(3, 5))
    with pytest.raises(ValueError, match=fix):
        _space(model, torch.rand(2, 4), "reconstruction")


def test_an_unknown_criterion_is_one_error_listing_the_names() -> None:
    with pytest.raises(ValueError, match="unknown pruning criterion 'l3'; available: " +
                       ", ".join(criterion_names())):
        make_criterion("l3")
    with pytest.raises(ValueError, match="unknown pruning criterion"):
        _space(_mlp(torch.rand(5, 4), torch.rand(3, 5)), torch.rand(2, 4), "l3")


def test_l2_is_the_default_on_resnet20() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, width_mult=0.5,
                        input_size=8).eval()
    x = torch.randn(2, 1, 8, 8)
    default = make_space("channel", model, x, round_to=4)
    l2 = make_space("channel", model, x, round_to=4, criterion="l2")
    assert default.criterion.name == l2.criterion.name == "l2"
    config = default.decode(np.random.default_rng(0).random(default.dim))
    a, b = default.apply(model, config).state_dict(), l2.apply(model, config).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Counting(nn.Module):
    """linear-relu-linear counting its forward passes on calibration-sized batches."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 5:
            type(self).calls += 1
        return self.b(torch.relu(self.a(x)))


def test_a_data_criterion_measures_once_per_dense_model() -> None:
    torch.manual_seed(0)
    model, x = _Counting().eval(), torch.rand(2, 4)
    calibration = _calibration(4, batches=3, n=5)
    space = _space(model, x, make_criterion("taylor", calibration=calibration))
    _Counting.calls = 0  # building the space did not need the data
    first = space.apply(model, {"a": 4}).state_dict()
    space.apply(model, {"a": 6})
    space.channel_scores(model)
    assert _Counting.calls == 3  # one pass over the three batches
    with torch.no_grad():
        model.b.weight.mul_(-1.0)  # a changed model is measured again
    space.apply(model, {"a": 4})
    assert _Counting.calls == 6
    assert not any(p.grad is not None for p in model.parameters())
    assert set(first) == set(model.state_dict())


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_a_space_with_a_data_criterion_pickles_and_applies_identically(dumps) -> None:
    torch.manual_seed(0)
    model, x = _mlp(torch.rand(8, 4) + 0.1, torch.randn(3, 8)), torch.rand(2, 4)
    space = _space(model, x, make_criterion("hessian", calibration=_calibration(4)))
    want = space.apply(model, {"0": 3}).state_dict()
    copy = pickle.loads(dumps(space))
    assert copy.criterion.name == "hessian" and len(copy.criterion.calibration) == 2
    got = copy.apply(model, {"0": 3}).state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert pickle.loads(pickle.dumps(copy.criterion)).name == "hessian"


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 4, 4
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(16, 16) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = (p(x).view(n, t, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(n, t, -1))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn, self.up, self.down = _Attention(), nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return self.head(x + self.down(torch.relu(self.up(x))))


def test_heads_stay_ranked_by_magnitude_under_a_data_criterion_with_a_note() -> None:
    torch.manual_seed(0)
    model, x = _Block().eval(), torch.randn(2, 6, 16)
    calibration = [(torch.randn(3, 6, 16), torch.randint(0, 5, (3, 6)))]  # (N, T, C) logits
    taylor = ChannelSpace.from_model(model, x, round_to=4,
                                     criterion=make_criterion("taylor", calibration=calibration))
    plain = ChannelSpace.from_model(model, x, round_to=4)
    assert [u.name for u in taylor.units] == ["attn:heads", "up"]
    assert any("ranked by their L2 magnitude" in n and "'taylor'" in n for n in taylor.notes)
    assert not any("ranked by their L2 magnitude" in n for n in plain.notes)
    heads, up = taylor.channel_scores(model)
    assert np.array_equal(heads, plain.channel_scores(model)[0])
    assert not np.allclose(up, plain.channel_scores(model)[1])
    assert taylor.apply(model, taylor.min_config())(x).shape == (2, 6, 5)
