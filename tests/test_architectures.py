"""The foreign-architecture conformance zoo: every model users bring prunes into a working
network whose costs are exact.

For each architecture (tests/architectures.py): the space builds; pruned networks at several
configurations run and keep the output's shape; MACs equal the reference count
(``torch.utils.flop_counter`` with grad and math attention, plus recurrent gate matmuls) and
parameters the real count, dense and pruned; the pruned weights save and reload into the same
network; and a 3-trial allocation runs end to end.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

import autoprune
from autoprune.testing.architectures import ARCHITECTURES
from autoprune.search_spaces import ChannelSpace, reference_macs, reference_params
from autoprune.search_spaces.tracing import call_model, output_tensor


def _out(model: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(call_model(model.eval(), inputs), output)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def built(request: pytest.FixtureRequest) -> tuple[str, nn.Module, tuple, dict, ChannelSpace]:
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES[request.param]()
    model.eval()
    space = ChannelSpace.from_model(model, inputs, **options)
    return request.param, model, inputs, options, space


def _configs(space: ChannelSpace) -> list[dict[str, int]]:
    rng = np.random.default_rng(0)
    return [space.dense_config(), space.min_config(),
            *(space.decode(rng.random(space.dim)) for _ in range(2))]


def test_pruned_networks_run_with_exact_costs(built: tuple) -> None:
    name, model, inputs, options, space = built
    assert space.dim >= 1, name
    output = options.get("output")
    shape = _out(model, inputs, output).shape
    for config in _configs(space):
        pruned = space.apply(model, config)
        assert _out(pruned, inputs, output).shape == shape, (name, config)
        table = space.layer_table(config)
        assert sum(r.macs for r in table) == reference_macs(pruned, inputs), (name, config)
        assert sum(r.params for r in table) == reference_params(pruned), (name, config)
    assert sum(p.numel() for p in model.parameters()) == \
        sum(r.params for r in space.layer_table({}))  # free parameters included


def test_pruned_weights_save_and_reload(built: tuple) -> None:
    name, model, inputs, options, space = built
    config = space.min_config()
    pruned = space.apply(model, config)
    buffer = io.BytesIO()
    torch.save(pruned.state_dict(), buffer)
    buffer.seek(0)
    again = space.apply(model, config)  # the architecture, rebuilt from the dense model
    again.load_state_dict(torch.load(buffer, weights_only=True))
    output = options.get("output")
    torch.testing.assert_close(_out(again, inputs, output), _out(pruned, inputs, output))


def test_a_three_trial_allocation_runs(built: tuple) -> None:
    name, model, inputs, options, space = built
    output = options.get("output")

    def score(pruned: nn.Module) -> dict[str, float]:  # runs the network; no training
        return {"loss": float(_out(pruned, inputs, output).float().pow(2).mean())}

    # half-way between the thinnest and the dense network: every space can meet it
    low, high = (sum(r.macs for r in space.layer_table(c))
                 for c in (space.min_config(), space.dense_config()))
    limit = (low + high) // 2
    alloc = autoprune.allocate(model, example_inputs=inputs, target=f"macs={limit}",
                               evaluate=score, trials=3, space=space)
    assert len(alloc.trials) >= 1 and not alloc.chosen.failed, name
    assert alloc.costs["macs"] <= limit


@pytest.mark.parametrize("name, layer, words", [
    ("lstm", "rnn", "Torch-Pruning"),                # its LSTM pruner fails: kept dense
    ("inception-grouped", "b1.0", "fails"),          # a grouped conv after a concat
    ("split-branches", "stem.0", "split_with_sizes"),  # split sizes written into forward()
])
def test_refused_patterns_are_kept_dense_with_a_note_naming_the_layer(
        name: str, layer: str, words: str) -> None:
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES[name]()
    space = ChannelSpace.from_model(model.eval(), inputs, **options)
    (note,) = [n for n in space.notes if n.startswith(layer)]
    assert "kept dense" in note and words in note and f"ignored_layers=['{layer}']" in note
    assert layer not in {m for u in space.units for m in u.members}


def test_a_model_with_nothing_prunable_is_refused_with_one_error() -> None:
    from autoprune.search_spaces import UntraceableModelError

    with pytest.raises(UntraceableModelError, match="No prunable") as err:
        ChannelSpace.from_model(nn.Sequential(nn.Linear(6, 4)), torch.randn(2, 6))
    assert "Fix:" in str(err.value)


def test_a_search_whose_pruned_networks_all_fail_blames_pruning_and_names_the_units() -> None:
    from autoprune.errors import SearchError

    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES["squeeze-excite"]()
    model.eval()
    space = ChannelSpace.from_model(model, inputs, **options)
    real = nn.Linear.forward

    def picky(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:  # breaks on any thinner input
        if self.out_features == 10 and self.in_features < 32:  # the classifier head
            raise RuntimeError("this head only takes 32 features")
        return real(self, x)

    def score(pruned: nn.Module) -> dict[str, float]:
        return {"loss": float(_out(pruned, inputs, None).pow(2).mean())}

    low = sum(r.macs for r in space.layer_table(space.min_config()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(model.head), "forward", picky)
        with pytest.raises(SearchError, match="pruning breaks this model") as err:
            autoprune.allocate(model, example_inputs=inputs, target=f"macs={low}",
                               evaluate=score, trials=3, space=space)
    assert "conv2.0" in str(err.value) and "evaluator" not in str(err.value).split("Fix")[0]


def test_rotary_attention_keeps_its_head_size_with_a_note() -> None:
    # Llama's rotary embeddings are computed for the configured head size: shortening heads
    # breaks them, which the space finds and says.
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES["hf-llama-gqa"]()
    space = ChannelSpace.from_model(model.eval(), inputs, **options, prune_head_dims=True)
    assert not [u for u in space.units if u.kind == "head_dim"]
    assert [u for u in space.units if u.kind == "heads"]
    notes = [n for n in space.notes if ":head_dim" in n]
    assert len(notes) == 2 and all("fails in forward" in n for n in notes)


@pytest.mark.parametrize("name", ["hf-bert", "hf-gpt2", "sdpa-attention"])
def test_head_dimensions_prune_as_an_option_with_exact_costs(name: str) -> None:
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES[name]()
    model.eval()
    space = ChannelSpace.from_model(model, inputs, **options, prune_head_dims=True)
    dims = [u for u in space.units if u.kind == "head_dim"]
    assert dims and all(u.full == 8 for u in dims), space.notes
    output = options.get("output")
    for config in (space.min_config(), {u.name: u.minimum for u in dims}):
        pruned = space.apply(model, config)
        assert _out(pruned, inputs, output).shape == _out(model, inputs, output).shape
        table = space.layer_table(config)
        assert sum(r.macs for r in table) == reference_macs(pruned, inputs), config
        assert sum(r.params for r in table) == reference_params(pruned)
    # by default the head size stays whole
    assert not [u for u in ChannelSpace.from_model(model, inputs, **options).units
                if u.kind == "head_dim"]
