"""Heads under a shared position bias (T5): each stack's self-attention heads, and the
decoder's cross-attention heads, are one unit each; the relative-attention bias embedding
keeps the columns of the heads kept; costs stay exact and the pruned network runs."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.search_spaces import ChannelSpace, reference_macs, reference_params
from autoprune.search_spaces.attention import find_attention
from autoprune.search_spaces.shared_bias import tie_shared_heads


def _t5(cls: str = "T5ForConditionalGeneration") -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    warnings.filterwarnings("ignore", module="transformers")
    import transformers as t  # noqa: PLC0415 - a test dependency

    t.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = t.T5Config(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                     d_kv=8, vocab_size=64, decoder_start_token_id=0)
    model = getattr(t, cls)(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    return model, (ids, torch.ones_like(ids), torch.randint(0, 64, (2, 6)))


@pytest.fixture(scope="module")
def built() -> tuple[nn.Module, tuple, ChannelSpace]:
    model, inputs = _t5()
    return model, inputs, ChannelSpace.from_model(model, inputs, output="logits")


def _logits(model: nn.Module, inputs: tuple) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(*inputs).logits


def test_the_stacks_attention_heads_are_units(built: tuple) -> None:
    model, inputs, space = built
    heads = {u.name: u for u in space.units if u.kind == "heads"}
    assert set(heads) == {"encoder.block.0.layer.0.SelfAttention:heads",
                          "decoder.block.0.layer.0.SelfAttention:heads",
                          "decoder.block.0.layer.1.EncDecAttention:heads"}, space.notes
    enc = heads["encoder.block.0.layer.0.SelfAttention:heads"]
    assert "encoder.block.1.layer.0.SelfAttention.q" in enc.members
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias" in enc.members
    cross = heads["decoder.block.0.layer.1.EncDecAttention:heads"]
    assert "decoder.block.1.layer.1.EncDecAttention.o" in cross.members
    assert not any("Attention" in n and "heads" in n for n in space.notes), space.notes


def test_costs_are_exact_and_the_pruned_network_runs(built: tuple) -> None:
    model, inputs, space = built
    shape = _logits(model, inputs).shape
    rng = np.random.default_rng(0)
    for config in [space.dense_config(), space.min_config(), space.decode(rng.random(space.dim)),
                   space.decode(rng.random(space.dim))]:
        pruned = space.apply(model, config)
        assert _logits(pruned, inputs).shape == shape
        table = space.layer_table(config)
        assert sum(r.macs for r in table) == reference_macs(pruned, inputs), config
        assert sum(r.params for r in table) == reference_params(pruned), config
    pruned = space.apply(model, space.min_config())
    enc = pruned.encoder.block
    assert enc[0].layer[0].SelfAttention.relative_attention_bias.weight.shape[1] == 1
    assert all(b.layer[0].SelfAttention.n_heads == 1 for b in enc)
    assert all(b.layer[0].SelfAttention.inner_dim == 8 for b in enc)
    dense = sum(r.macs for r in space.layer_table({}))
    thinnest = sum(r.macs for r in space.layer_table(space.min_config())) / dense
    print(f"tiny T5: the thinnest network keeps {thinnest:.1%} of the dense MACs")
    assert thinnest < 0.75  # heads count now (the MLPs alone left 68-75%)


def test_the_kept_heads_see_the_bias_they_were_trained_with(built: tuple) -> None:
    """Pruning heads is the same function as zeroing their output-projection columns in every
    tied layer: every layer of a stack keeps the same heads, and the bias embedding their
    columns."""
    model, inputs, space = built
    pruned = space.apply(model, {u.name: 2 for u in space.units if u.kind == "heads"})
    silenced = copy.deepcopy(model)
    specs = tie_shared_heads(model, find_attention(model, [n for n, _ in model.named_modules()]))
    assert len(specs) == 3
    d = 8
    for spec in specs:
        first = spec.layers()[0].module
        dense_q = model.get_submodule(first).q.weight.view(4, d, -1)
        kept_q = pruned.get_submodule(first).q.weight.view(2, d, -1)
        kept = [h for h in range(4) if any(torch.equal(dense_q[h], k) for k in kept_q)]
        assert len(kept) == 2
        rows = [h * d + i for h in kept for i in range(d)]
        for layer in spec.layers():
            for proj in "qkv":
                assert torch.equal(pruned.get_submodule(f"{layer.module}.{proj}").weight,
                                   model.get_submodule(f"{layer.module}.{proj}").weight[rows])
            with torch.no_grad():
                o = silenced.get_submodule(layer.module).o.weight
                for h in set(range(4)) - set(kept):
                    o[:, h * d:(h + 1) * d] = 0
        for table in spec.bias:
            assert torch.equal(pruned.get_submodule(table).weight,
                               model.get_submodule(table).weight[:, kept])
    assert [len(s.bias) for s in specs] == [1, 1, 0]  # cross-attention: zeros, no table
    torch.testing.assert_close(_logits(pruned, inputs), _logits(silenced, inputs))


def test_gathered_trials_are_the_unit_by_unit_networks(built: tuple) -> None:
    model, inputs, space = built
    rng = np.random.default_rng(3)
    template = space._template_of(model)
    for config in [space.min_config()] + [space.decode(rng.random(space.dim)) for _ in range(2)]:
        gathered = space.apply(model, config)
        held, template.plannable = template.plannable, False
        try:
            direct = space.apply(model, config)
        finally:
            template.plannable = held
        a, b = gathered.state_dict(), direct.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(_logits(gathered, inputs), _logits(direct, inputs))


def test_head_positions_prune_in_every_tied_layer() -> None:
    model, inputs = _t5("T5Model")
    space = ChannelSpace.from_model(model, inputs, prune_head_dims=True)
    assert any(u.kind == "head_dim" for u in space.units)
    config = space.min_config()
    pruned = space.apply(model, config)
    with torch.no_grad():
        out = pruned.eval()(*inputs).last_hidden_state
    assert out.shape[:2] == inputs[2].shape
    table = space.layer_table(config)
    assert sum(r.macs for r in table) == reference_macs(pruned, inputs)
    assert sum(r.params for r in table) == reference_params(pruned)


class _Logits(nn.Module):
    """T5 whose only output is its logits (``T5ForConditionalGeneration`` also returns the
    encoder's last hidden state, whose width is the residual width: kept as an output, it
    keeps that width dense)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.t5 = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        return self.t5(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits


def test_the_residual_width_prunes_with_its_norms_and_tied_embeddings() -> None:
    model, inputs = _t5()
    wrapped = _Logits(model).eval()
    space = ChannelSpace.from_model(wrapped, inputs)
    residual = [u for u in space.units if u.kind == "residual"]
    assert len(residual) == 1, space.notes  # the encoder's and the decoder's: one weight
    assert {"t5.shared", "t5.encoder.embed_tokens", "t5.decoder.embed_tokens"} <= \
        set(residual[0].members)
    assert not any("added or removed" in n for n in space.notes), space.notes
    rng = np.random.default_rng(1)
    template = space._template_of(wrapped)
    for config in [space.dense_config(), space.min_config(), space.decode(rng.random(space.dim))]:
        pruned = space.apply(wrapped, config)
        with torch.no_grad():
            assert pruned.eval()(*inputs).shape == (2, 6, 64)
        table = space.layer_table(config)
        assert sum(r.macs for r in table) == reference_macs(pruned, inputs), config
        assert sum(r.params for r in table) == reference_params(pruned), config
        t5 = pruned.t5
        assert t5.shared.weight is t5.encoder.embed_tokens.weight is \
            t5.decoder.embed_tokens.weight is t5.lm_head.weight  # still tied
        width = config[residual[0].name]
        assert t5.shared.weight.shape == (64, width)
        assert t5.encoder.final_layer_norm.weight.shape == (width,)
        held, template.plannable = template.plannable, False
        try:  # the gathered trial is the unit-by-unit network
            direct = space.apply(wrapped, config)
        finally:
            template.plannable = held
        a, b = pruned.state_dict(), direct.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pruned, again = (space.apply(wrapped, space.min_config()) for _ in range(2))
    buffer = io.BytesIO()
    torch.save(pruned.state_dict(), buffer)
    buffer.seek(0)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        assert torch.equal(pruned.eval()(*inputs), again.eval()(*inputs))
    dense = sum(r.macs for r in space.layer_table({}))
    thinnest = sum(r.macs for r in space.layer_table(space.min_config())) / dense
    print(f"tiny T5 (logits only): the thinnest network keeps {thinnest:.1%} of the dense MACs")
    assert thinnest <= 0.40


def test_an_output_the_value_is_computed_from_may_change_width_and_says_so(built: tuple) -> None:
    _, _, space = built  # T5ForConditionalGeneration returns encoder_last_hidden_state
    assert [u.kind for u in space.units].count("residual") == 1, space.notes
    assert not any("changes the output's shape" in n for n in space.notes), space.notes
    (note,) = [n for n in space.notes if n.startswith("encoder_last_hidden_state")]
    assert "may change width" in note and "'logits'" in note


def test_a_stack_whose_layers_have_their_own_bias_prunes_each_layer_alone() -> None:
    """UMT5: every layer computes its own bias (and its cross-attention its own zeros), so
    nothing is tied, and each self-attention layer's embedding goes with its heads."""
    warnings.filterwarnings("ignore", module="transformers")
    import transformers as t  # noqa: PLC0415 - a test dependency

    torch.manual_seed(0)
    cfg = t.UMT5Config(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                       d_kv=8, vocab_size=64, decoder_start_token_id=0)
    model = t.UMT5ForConditionalGeneration(cfg).eval()
    _, inputs = _t5()
    space = ChannelSpace.from_model(model, inputs, output="logits")
    heads = [u for u in space.units if u.kind == "heads"]
    assert len(heads) == 6, space.notes
    assert sum("relative_attention_bias" in m for u in heads for m in u.members) == 4
    config = space.min_config()
    pruned = space.apply(model, config)
    assert _logits(pruned, inputs).shape == (2, 6, 64)
    table = space.layer_table(config)
    assert sum(r.macs for r in table) == reference_macs(pruned, inputs)
    assert sum(r.params for r in table) == reference_params(pruned)
