"""T5's residual width (issue 31): the zoo's ``T5ForConditionalGeneration`` with
``output="logits"`` searches its encoder's and decoder's width as one unit (their embeddings
share one weight, tied to the LM head), pruned with every RMS norm, every projection reading or
writing the residual stream and the cross-attention's key/value inputs; the relative position
bias (per head) is left as it is. Only the value the user names keeps its shape: the
``encoder_last_hidden_state`` it is computed from changes width with the unit, and a note
says so; an output the value does not read keeps its shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.search_spaces import ChannelSpace, reference_macs, reference_params
from autoprune.search_spaces.tracing import call_model, output_tensor
from autoprune.testing.architectures import ARCHITECTURES


@pytest.fixture(scope="module")
def built() -> tuple[nn.Module, tuple, ChannelSpace]:
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES["hf-t5"]()
    assert options == {"output": "logits"}
    model.eval()
    return model, inputs, ChannelSpace.from_model(model, inputs, **options)


def _residual(space: ChannelSpace):
    (unit,) = [u for u in space.units if u.kind == "residual"]
    return unit


def _run(model: nn.Module, inputs: tuple):
    with torch.no_grad():
        return call_model(model.eval(), inputs)


def test_one_residual_unit_spans_encoder_decoder_and_the_tied_embeddings(built: tuple) -> None:
    model, _, space = built
    unit = _residual(space)
    assert unit.full == 32
    members = set(unit.members)
    assert {"shared", "encoder.embed_tokens", "decoder.embed_tokens"} <= members
    assert {f"{s}.block.{i}.layer.0.SelfAttention.o" for s in ("encoder", "decoder")
            for i in range(2)} <= members
    assert {f"decoder.block.{i}.layer.1.EncDecAttention.o" for i in range(2)} <= members
    assert {u.kind for u in space.units} == {"heads", "neurons", "residual"}


@pytest.mark.parametrize("which", ["min", "residual-only", "random"])
def test_the_width_prunes_with_norms_projections_and_tied_weights(built: tuple,
                                                                  which: str) -> None:
    model, inputs, space = built
    unit = _residual(space)
    config = {"min": space.min_config(), "residual-only": {unit.name: 24},
              "random": {**space.decode(np.random.default_rng(5).random(space.dim)),
                         unit.name: 24}}[which]
    width = config[unit.name]
    assert width < 32
    pruned = space.apply(model, config)
    out, dense = _run(pruned, inputs), _run(model, inputs)
    assert out.logits.shape == dense.logits.shape == (2, 6, 64)
    assert out.encoder_last_hidden_state.shape == (2, 8, width)  # the logits' inside
    table = space.layer_table(config)
    assert sum(r.macs for r in table) == reference_macs(pruned, inputs)
    assert sum(r.params for r in table) == reference_params(pruned)
    assert pruned.shared.weight is pruned.encoder.embed_tokens.weight is \
        pruned.decoder.embed_tokens.weight is pruned.lm_head.weight  # still tied
    # the same channels go everywhere: those the embedding keeps
    cols = model.shared.weight.T
    kept = [next(i for i in range(32) if torch.equal(cols[i], c)) for c in pruned.shared.weight.T]
    assert len(set(kept)) == width
    dense_mods, mods = dict(model.named_modules()), dict(pruned.named_modules())
    for name, m in mods.items():
        d = dense_mods[name]
        if type(m).__name__ == "T5LayerNorm":  # every RMS norm, final ones included
            assert torch.equal(m.weight, d.weight[kept]), name
        elif isinstance(m, nn.Linear) and name != "lm_head":
            if name.endswith((".o", ".wo")):  # writes the residual stream
                assert m.out_features == width, name
                if m.in_features == d.in_features:  # (its heads or neurons all kept)
                    assert torch.equal(m.weight, d.weight[kept]), name
            else:  # reads it: q, k, v (the cross-attention's k/v from the encoder), wi
                assert m.in_features == width, name
                if m.out_features == d.out_features:
                    assert torch.equal(m.weight, d.weight[:, kept]), name
    for stack in (pruned.encoder, pruned.decoder):  # the per-head bias: no residual channel
        bias = stack.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        assert bias.shape[0] == model.config.relative_attention_num_buckets


def test_the_thinnest_network_keeps_at_most_40_percent_of_the_macs(built: tuple) -> None:
    model, inputs, space = built
    dense = sum(r.macs for r in space.layer_table({}))
    thinnest = sum(r.macs for r in space.layer_table(space.min_config())) / dense
    print(f"hf-t5: the thinnest network keeps {thinnest:.1%} of the dense MACs")
    assert thinnest <= 0.40


def test_the_pruned_model_generates(built: tuple) -> None:
    model, inputs, space = built
    pruned = space.apply(model, space.min_config()).eval()
    with torch.no_grad():
        tokens = pruned.generate(input_ids=inputs[0], attention_mask=inputs[1],
                                 max_new_tokens=4, do_sample=False)
    assert tokens.shape[0] == 2 and 1 < tokens.shape[1] <= 5


def test_without_a_named_value_every_output_keeps_its_shape() -> None:
    """``output=None``: the first tensor is the value but nothing was chosen, so every output
    keeps its shape, the encoder's last hidden state too, and the residual stays dense."""
    torch.manual_seed(0)
    model, inputs, _ = ARCHITECTURES["hf-t5"]()
    space = ChannelSpace.from_model(model.eval(), inputs)
    assert not any(u.kind == "residual" for u in space.units)
    assert any("residual" in n and "changes the output's shape" in n for n in space.notes), space.notes


class _Outputs(nn.Module):
    """The value, the features it is computed from, and an auxiliary head it does not read."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.head, self.aux = nn.Linear(16, 5), nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body[1](self.body[0](x))
        f = self.body[3](self.body[2](h))
        return {"logits": self.head(f), "features": f, "aux": self.aux(h)}


def test_a_named_value_frees_only_the_outputs_it_reads() -> None:
    torch.manual_seed(0)
    model, x = _Outputs().eval(), torch.randn(4, 12)
    space = ChannelSpace.from_model(model, x, output="logits", round_to=4)
    (note,) = [n for n in space.notes if n.startswith("features")]
    assert "'logits'" in note and "aux" not in note
    config = space.min_config()
    pruned = space.apply(model, config)
    with torch.no_grad():
        out = pruned(x)
    assert output_tensor(out, "logits").shape == (4, 5)
    assert out["aux"].shape == (4, 3)  # not read by the value: kept
    assert out["features"].shape[1] < 16  # read by it: its width is the unit's
    table = space.layer_table(config)
    assert sum(r.macs for r in table) == reference_macs(pruned, (x,))
    assert sum(r.params for r in table) == reference_params(pruned)


@pytest.mark.parametrize("family", ["t5-v1.1", "umt5"])
def test_untied_gated_and_per_layer_bias_variants_prune_their_width(family: str) -> None:
    """T5 v1.1 / mT5 (an LM head of its own, gated-GELU MLPs) and UMT5 (a bias per layer)."""
    import transformers as t  # noqa: PLC0415 - a test dependency

    torch.manual_seed(0)
    common = dict(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8,
                  vocab_size=64, decoder_start_token_id=0)
    model = (t.T5ForConditionalGeneration(t.T5Config(
        tie_word_embeddings=False, feed_forward_proj="gated-gelu", **common))
        if family == "t5-v1.1" else t.UMT5ForConditionalGeneration(t.UMT5Config(**common)))
    _, inputs, _ = ARCHITECTURES["hf-t5"]()
    space = ChannelSpace.from_model(model.eval(), inputs, output="logits")
    assert [u.kind for u in space.units].count("residual") == 1, space.notes
    config = space.min_config()
    pruned = space.apply(model, config)
    out = _run(pruned, inputs)
    assert out.logits.shape == (2, 6, 64)
    width = config[_residual(space).name]
    assert pruned.lm_head.in_features == width == out.encoder_last_hidden_state.shape[-1]
    table = space.layer_table(config)
    assert sum(r.macs for r in table) == reference_macs(pruned, inputs)
    assert sum(r.params for r in table) == reference_params(pruned)
    dense = sum(r.macs for r in space.layer_table({}))
    assert sum(r.macs for r in table) <= 0.40 * dense
