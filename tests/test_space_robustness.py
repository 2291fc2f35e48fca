"""Building a channel space never crashes on one layer: a layer it cannot prune (a parametrised
weight, a failure inside Torch-Pruning) is kept dense with a note naming it, and the costs of
what is searched stay exact."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from autoprune.search_spaces import (ChannelSpace, UntraceableModelError, make_space,
                                     reference_macs, reference_params)


def _exact(space: ChannelSpace, model: nn.Module, x: torch.Tensor, config: dict) -> nn.Module:
    table = space.layer_table(config)
    pruned = space.apply(model, config).eval()
    assert sum(r.macs for r in table) == reference_macs(pruned, (x,))
    assert sum(r.params for r in table) == reference_params(pruned)
    return pruned


def test_wav2vec2_with_a_weight_normed_conv_builds_with_a_note() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4, vocab_size=10)
    model = transformers.Wav2Vec2Model(config).eval()
    x = torch.randn(1, 400)
    space = make_space("channel", model, (x,))  # raised IndexError in layers._channels
    assert space.units
    conv = "encoder.pos_conv_embed.conv"
    assert any(n.startswith(f"{conv} is kept dense") and "parametrised" in n
               for n in space.notes), space.notes
    assert all(conv not in u.members for u in space.units)
    with torch.no_grad():
        dense = model(x).last_hidden_state
        _exact(space, model, x, space.dense_config())
        pruned = _exact(space, model, x, space.min_config())
        assert pruned(x).last_hidden_state.shape == dense.shape


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


def test_a_weight_normed_conv_in_a_plain_cnn_is_kept_dense_and_the_rest_searched() -> None:
    model = _cnn()
    model[3] = weight_norm(model[3])
    x = torch.randn(2, 3, 8, 8)
    space = ChannelSpace.from_model(model, x, round_to=4)
    # conv 0's outputs feed the weight-normed conv 3: both groups through it stay dense
    assert [u.name for u in space.units] == ["6"]
    assert any(n.startswith("3 is kept dense") for n in space.notes), space.notes
    with torch.no_grad():
        pruned = _exact(space, model, x, space.min_config())
        assert pruned(x).shape == (2, 4)


def test_a_layer_that_fails_inside_torch_pruning_is_kept_dense_with_a_note(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = _cnn()
    original = tp.pruner.function.ConvPruner.prune_out_channels

    def prune_out_channels(self, layer: nn.Module, idxs):  # noqa: ANN001, ANN202
        if getattr(layer, "_broken", False):
            raise RuntimeError("a handler that fails on this layer")
        return original(self, layer, idxs)

    model[3]._broken = True  # copies keep the mark: the copies the space prunes fail too
    monkeypatch.setattr(tp.pruner.function.ConvPruner, "prune_out_channels", prune_out_channels)
    x = torch.randn(2, 3, 8, 8)
    space = ChannelSpace.from_model(model, x, round_to=4)
    assert [u.name for u in space.units] == ["0", "6"]
    note = next(n for n in space.notes if n.startswith("3 "))
    assert "kept dense" in note and "a handler that fails on this layer" in note
    with torch.no_grad():
        _exact(space, model, x, space.min_config())


def test_a_group_that_torch_pruning_cannot_size_is_kept_dense_with_a_note(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A dependency-graph method that raises for one layer while the units are found."""
    model = _cnn()
    model[6]._broken = True
    original = tp.DependencyGraph.get_pruner_of_module
    building = [True]

    def get_pruner_of_module(self, module: nn.Module):  # noqa: ANN001, ANN202
        if getattr(module, "_broken", False) and not building[0]:
            raise KeyError("no pruner for this layer")
        return original(self, module)

    monkeypatch.setattr(tp.DependencyGraph, "get_pruner_of_module", get_pruner_of_module)
    original_build = tp.DependencyGraph.build_dependency

    def build_dependency(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        building[0] = True
        try:
            return original_build(self, *args, **kwargs)
        finally:
            building[0] = False

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", build_dependency)
    x = torch.randn(2, 3, 8, 8)
    space = ChannelSpace.from_model(model, x, round_to=4)
    assert [u.name for u in space.units] == ["0", "3"]
    note = next(n for n in space.notes if n.startswith("6 "))
    assert "kept dense" in note and "KeyError" in note
    with torch.no_grad():
        _exact(space, model, x, space.min_config())


def test_bad_inputs_stay_one_clear_error() -> None:
    with pytest.raises(UntraceableModelError, match="Fix: pass example inputs"):
        ChannelSpace.from_model(_cnn(), torch.randn(2, 5, 8, 8))
