from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch.utils.flop_counter import FlopCounterMode

from autoprune.zoo.models import available_models, build_model, build_model_from_spec, make_divisible

ALL_MODELS = available_models("images")


def macs(model: torch.nn.Module, shape: tuple[int, ...] = (1, 3, 32, 32)) -> float:
    """Multiply-accumulates per torch's own counter (it reports FLOPs = 2 x MACs)."""
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(*shape))
    return counter.get_total_flops() / 2


def test_zoo_names() -> None:
    assert ALL_MODELS == ["resnet20", "resnet56", "vgg11", "vgg16", "mobilenetv1", "mobilenetv2",
                          "vit"]
    assert available_models("text") == ["chargpt"]
    assert available_models() == [*ALL_MODELS, "chargpt"]


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [8, 32])
def test_forward_shapes(name: str, in_channels: int, size: int) -> None:
    model = build_model(name, num_classes=7, in_channels=in_channels, input_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_smaller_input_than_planned_still_runs(name: str) -> None:
    # A model built for 32x32 must not crash on 8x8 (VGG's pools use ceil_mode).
    model = build_model(name, input_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_vgg_pool_count_follows_input_size() -> None:
    pools = lambda m: sum(isinstance(x, torch.nn.MaxPool2d) for x in m.modules())  # noqa: E731
    assert pools(build_model("vgg16", input_size=32)) == 5
    assert pools(build_model("vgg16", input_size=8)) == 3
    assert pools(build_model("vgg11", input_size=16)) == 4


def test_resnet_macs_match_he_et_al() -> None:
    # He et al. 2016 / the pruning literature: ResNet-56 ~125M MACs, ResNet-20 ~41M on CIFAR.
    assert macs(build_model("resnet56")) == pytest.approx(125e6, rel=0.03)
    assert macs(build_model("resnet20")) == pytest.approx(41e6, rel=0.05)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_width_mult_shrinks_macs(name: str) -> None:
    full = macs(build_model(name))
    half = macs(build_model(name, width_mult=0.5))
    assert half < 0.45 * full


@pytest.mark.parametrize("name", ALL_MODELS)
def test_channels_stay_at_least_eight(name: str) -> None:
    model = build_model(name, width_mult=0.05, in_channels=1)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            assert module.out_channels >= 8
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_make_divisible() -> None:
    assert make_divisible(32 * 0.5) == 16
    assert make_divisible(1) == 8
    assert make_divisible(100) == 104
    assert all(make_divisible(v) >= 0.9 * v for v in range(8, 2000, 7))


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ValueError) as info:
        build_model("resnet18")
    for name in ALL_MODELS:
        assert name in str(info.value)


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ValueError, match="width_mult"):
        build_model("resnet20", width_mult=0)
    with pytest.raises(ValueError, match="input_size"):
        build_model("vgg11", input_size=4)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_spec_rebuilds_same_architecture(name: str) -> None:
    model = build_model(name, num_classes=5, in_channels=1, width_mult=0.5, input_size=8)
    assert model.autoprune_spec == {
        "name": name,
        "num_classes": 5,
        "in_channels": 1,
        "width_mult": 0.5,
        "input_size": 8,
    }
    rebuilt = build_model_from_spec(model.autoprune_spec)
    assert rebuilt.autoprune_spec == model.autoprune_spec
    # Same architecture means the state dict loads strictly.
    rebuilt.load_state_dict(model.state_dict())


def test_spec_missing_field_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="input_size"):
        build_model_from_spec({"name": "resnet20", "num_classes": 10, "in_channels": 3, "width_mult": 1.0})


def test_convs_are_kaiming_initialised() -> None:
    conv = build_model("vgg16").features[3]  # a 64->64 3x3 conv
    assert isinstance(conv, torch.nn.Conv2d)
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5  # fan-out mode
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.1)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_traceable_by_torch_pruning(name: str) -> None:
    model = build_model(name)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    assert graph.module2node  # every module was reached by the trace


def test_resnet_residual_couples_shortcut_and_block_output() -> None:
    # The add in BasicBlock is what makes channel pruning of ResNets non-trivial: pruning
    # a stage's output channels must shrink conv2 of every block and the projection too.
    model = build_model("resnet20")
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    block = model.layer2[0]
    group = graph.get_pruning_group(block.conv2, tp.prune_conv_out_channels, idxs=[0, 1])
    coupled = {item.dep.target.module for item in group}
    assert block.shortcut[0] in coupled
    assert model.layer2[1].conv2 in coupled and model.layer2[2].conv2 in coupled
    group.prune()
    assert block.shortcut[0].out_channels == model.layer2[2].conv2.out_channels == 30
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
