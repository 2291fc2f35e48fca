from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.costs import MacsCost, ParamsCost
from autoprune.testing.memory import peak_allocated
from autoprune.zoo.models import available_models, build_model
from autoprune.search_spaces import (ChannelSpace, UntraceableModelError, channel_choices,
                                     reference_macs, reference_params)


def _measured(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    # the reference: flop_counter with grad and math attention (attention matmuls
    # count), plus recurrent gate matmuls; every parameter
    return reference_macs(model, (x,)), reference_params(model)


def _check_configs(model: nn.Module, x: torch.Tensor, space: ChannelSpace, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = [np.zeros(space.dim), *[rng.random(space.dim) for _ in range(n)]]
    for point in points:
        config = space.decode(point)
        pruned = space.apply(model, config)
        out = pruned(x)
        assert out.shape == model(x).shape
        table = space.layer_table(config)
        macs, params = _measured(pruned, x)
        # Exact equality is what we get; the issue asks for 1%.
        assert MacsCost().estimate(table) == pytest.approx(macs, rel=1e-2)
        assert ParamsCost().estimate(table) == pytest.approx(params, rel=1e-2)
        # Physically smaller: each unit's primary layer has the configured channel count.
        modules = dict(pruned.named_modules())
        for unit in (u for u in space.units if u.kind == "channels"):
            layer = modules[unit.name]
            width = layer.out_channels if hasattr(layer, "out_channels") else layer.out_features
            assert width == config[unit.name]


@pytest.mark.parametrize("name", available_models("images"))
def test_zoo_models_prune_to_configured_shapes_and_costs(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, input_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    space = ChannelSpace.from_model(model, x)
    assert space.dim >= 3
    dense_macs, dense_params = _measured(model, x)
    dense_table = space.layer_table(space.dense_config())
    assert MacsCost().estimate(dense_table) == dense_macs
    assert ParamsCost().estimate(dense_table) == dense_params
    _check_configs(model, x, space, n=2, seed=1)


def test_user_model_with_residual_and_depthwise(user_model: nn.Module) -> None:
    x = torch.randn(2, 1, 16, 16)
    space = ChannelSpace.from_model(user_model, x, round_to=8)
    names = {u.name for u in space.units}
    # stem and project share a unit (residual add); expand and dw share one (depthwise).
    assert names == {"stem", "expand"}
    members = {u.name: set(u.members) for u in space.units}
    assert {"stem", "project", "stem_bn", "project_bn"} <= members["stem"]
    assert {"expand", "dw"} <= members["expand"]
    _check_configs(user_model, x, space, n=5, seed=0)


class SharedConvNet(nn.Module):
    """A conv applied twice (weights shared), at two resolutions: it works at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.mid = nn.Conv2d(16, 32, 3, padding=1)
        self.shared = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.shared(torch.relu(self.mid(torch.relu(self.stem(x))))))
        y = torch.relu(self.shared(nn.functional.max_pool2d(y, 2)))
        return self.head(y.mean(dim=(2, 3)))


def test_a_layer_called_twice_is_costed_at_every_call_and_its_weights_once() -> None:
    torch.manual_seed(0)
    model, x = SharedConvNet().eval(), torch.randn(2, 1, 16, 16)
    space = ChannelSpace.from_model(model, x, round_to=4)
    rows = {r.name: r for r in space.layer_table(space.dense_config())}
    assert rows["shared#2"].call == 1 and rows["shared#2"].module == "shared"
    assert rows["shared#2"].out_size == (8, 8) and rows["shared#2"].params == 0
    assert MacsCost().estimate(tuple(rows.values())) == _measured(model, x)[0]
    assert ParamsCost().estimate(tuple(rows.values())) == _measured(model, x)[1]
    assert sum(len(layers) for layers in space.unit_layers()) == 3  # mid, shared, stem: once
    _check_configs(model, x, space, n=3, seed=0)


def test_apply_leaves_the_model_untouched(user_model: nn.Module) -> None:
    x = torch.randn(1, 1, 8, 8)
    before = {k: v.clone() for k, v in user_model.state_dict().items()}
    space = ChannelSpace.from_model(user_model, x)
    space.apply(user_model, space.decode(np.zeros(space.dim)))
    after = user_model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_apply_keeps_the_largest_magnitude_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))
    with torch.no_grad():
        model[0].weight.mul_(0.01)
        model[0].weight[[3, 7, 11, 15]] *= 1000.0
    space = ChannelSpace.from_model(model, torch.randn(1, 1, 8, 8), round_to=4, min_ratio=0.25)
    pruned = space.apply(model, {"0": 4})
    kept = pruned[0].weight.abs().sum(dim=(1, 2, 3))
    assert torch.allclose(kept, model[0].weight[[3, 7, 11, 15]].abs().sum(dim=(1, 2, 3)))


def test_decode_encode_round_trip_and_bounds(user_model: nn.Module) -> None:
    space = ChannelSpace.from_model(user_model, torch.randn(1, 1, 8, 8), round_to=8, min_ratio=0.2)
    lo, hi = space.bounds
    assert lo.shape == hi.shape == (space.dim,)
    assert space.decode(hi) == space.dense_config()
    for unit in space.units:
        assert unit.minimum >= 1 and unit.minimum % 8 == 0
        assert all(c % 8 == 0 or c == unit.full for c in unit.choices)
    rng = np.random.default_rng(0)
    for _ in range(20):
        config = space.decode(rng.random(space.dim))
        assert space.decode(space.encode(config)) == config


def test_channel_choices_respect_rounding_and_lower_bound() -> None:
    assert channel_choices(64, round_to=8, min_ratio=0.2) == (16, 24, 32, 40, 48, 56, 64)
    assert channel_choices(16, round_to=8, min_ratio=0.2) == (8, 16)
    assert channel_choices(10, round_to=4, min_ratio=0.5) == (8, 10)
    assert channel_choices(6, round_to=8, min_ratio=0.2) == (6,)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean(dim=(2, 3))
        y = torch.from_numpy(y.detach().numpy())  # leaves autograd: the graph is broken
        return self.fc(y)


def test_untraceable_model_gets_one_clear_error() -> None:
    with pytest.raises(UntraceableModelError, match="Fix:"):
        ChannelSpace.from_model(_Untraceable(), torch.randn(1, 1, 8, 8))


def test_wrong_example_inputs_get_a_clear_error(user_model: nn.Module) -> None:
    with pytest.raises(UntraceableModelError, match="example inputs"):
        ChannelSpace.from_model(user_model, torch.randn(1, 3, 8, 8))


def test_unknown_unit_in_config_is_refused(user_model: nn.Module) -> None:
    space = ChannelSpace.from_model(user_model, torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="unknown units"):
        space.layer_table({"nope": 3})


def test_a_trial_never_copies_the_dense_network() -> None:
    # The issue: a trial builds its network at the pruned size from slices of the dense
    # weights; a deep copy of the dense model (and pruning it) allocated 2.1x the dense
    # weights for VGG-11 at its thinnest, this allocates the thin network and little more.
    torch.manual_seed(0)
    model = build_model("vgg11", num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    space = ChannelSpace.from_model(model, x)
    dense_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    thin = {u.name: u.minimum for u in space.units}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    space.apply(model, thin)  # (the first trial traces the model once for the space)
    pruned, peak = peak_allocated(lambda: space.apply(model, thin))
    pruned_bytes = sum(t.numel() * t.element_size() for t in pruned.state_dict().values())
    assert pruned_bytes < 0.1 * dense_bytes
    assert peak < 0.25 * dense_bytes, (peak, dense_bytes)
    # the pruned network owns its memory: recalibrating or training it leaves the dense alone
    theirs = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    assert not theirs & {t.untyped_storage().data_ptr() for t in pruned.state_dict().values()}
    with torch.no_grad():
        for t in pruned.state_dict().values():
            if t.is_floating_point():
                t.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # and is the same network as a trial on a fresh space would give
    fresh = ChannelSpace.from_model(model, x).apply(model, thin)
    with torch.no_grad():
        assert torch.equal(fresh(x), space.apply(model, thin)(x))


def test_a_changed_model_is_traced_again() -> None:
    # the space keeps the dense model traced between trials; weights changed in place (a
    # fine-tune) must not be pruned from the stale trace
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10).eval()
    x = torch.randn(1, 3, 16, 16)
    space = ChannelSpace.from_model(model, x)
    config = space.decode(np.full(space.dim, 0.5))
    first = space.apply(model, config)
    with torch.no_grad():  # new magnitudes: other channels rank first
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    again = space.apply(model, config)
    fresh = ChannelSpace.from_model(model, x).apply(model, config)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                  fresh.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                      first.state_dict().values()))


def test_cost_totals_sum_the_layer_table() -> None:
    # the cost forms are fitted from these sums: they must be the layer table's, at configs
    # near the thinnest (what the fit asks) and far from it
    torch.manual_seed(0)
    model = build_model("mobilenetv2", num_classes=10).eval()
    space = ChannelSpace.from_model(model, torch.randn(1, 3, 16, 16))
    totals = space.cost_totals()
    rng = np.random.default_rng(0)
    thin = space.min_config()
    configs = [thin, {**thin, space.units[0].name: space.units[0].full}]
    configs += [space.decode(rng.random(space.dim)) for _ in range(5)]
    for config in configs:
        table = space.layer_table(config)
        assert totals(config) == {"macs": MacsCost().estimate(table),
                                  "params": ParamsCost().estimate(table)}
