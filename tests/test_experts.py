"""Mixture-of-experts layers: each fused-experts layer's width is a unit (search_spaces/experts.py),
costed exactly against the reference (the routed rows of ``torch._grouped_mm``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.search_spaces import ChannelSpace, reference_macs, reference_params
from autoprune.search_spaces.experts import count_scores, expert_scores

transformers = pytest.importorskip("transformers")


def _mixtral(implementation: str | None = None) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    extra = {"experts_implementation": implementation} if implementation else {}
    config = transformers.MixtralConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=64, **extra)
    model = transformers.MixtralForCausalLM(config).eval()
    return model, torch.randint(0, 64, (2, 16))


def _exact(space: ChannelSpace, model: torch.nn.Module, config: dict[str, int],
           x: torch.Tensor) -> torch.nn.Module:
    pruned = space.apply(model, config)
    table = space.layer_table(config)
    assert sum(r.macs for r in table) == reference_macs(pruned, (x,))
    assert sum(r.params for r in table) == reference_params(pruned)
    with torch.no_grad():
        assert pruned.eval()(x).logits.shape == (2, 16, 64)
    return pruned


#: The residual width's unit (named after its first layer).
_RESIDUAL = "model.layers.0.self_attn.o_proj"


@pytest.fixture(scope="module")
def mixtral() -> tuple[torch.nn.Module, torch.Tensor, ChannelSpace]:
    model, x = _mixtral()
    return model, x, ChannelSpace.from_model(model, x)


def test_the_reference_counts_the_routed_experts() -> None:
    """``torch._grouped_mm`` (the default kernel) is counted as the eager loop's matmuls are:
    every routed token-expert pair once."""
    grouped, x = _mixtral()
    eager, _ = _mixtral("eager")
    assert grouped.config._experts_implementation == "grouped_mm"
    macs = reference_macs(grouped, (x,))
    assert macs == reference_macs(eager, (x,))
    experts = 2 * 16 * 2 * 3 * 32 * 64  # tokens x top-k x (gate, up, down) x hidden x width
    no_experts = macs - 2 * experts  # (two layers)
    assert 0 < no_experts < macs / 2


def test_each_experts_layer_width_is_a_unit(mixtral) -> None:
    model, x, space = mixtral
    widths = {u.name: u for u in space.units if u.name.endswith(":expert_width")}
    assert set(widths) == {f"model.layers.{i}.mlp.experts:expert_width" for i in range(2)}
    for u in widths.values():
        assert u.full == 64 and u.kind == "neurons" and u.minimum == 8
        assert all(c % 4 == 0 for c in u.choices)  # grouped_mm's 16-byte strides (fp32)
    assert not any("experts" in n for n in space.notes)
    counts = {u.name: u for u in space.units if u.kind == "experts"}
    assert set(counts) == {f"model.layers.{i}.mlp.experts:experts" for i in range(2)}
    assert all(u.full == 4 and u.choices == (2, 3, 4) for u in counts.values())  # >= top-2
    residual = next(u for u in space.units if u.kind == "residual")
    assert residual.name == _RESIDUAL and residual.full == 32 and not space.notes


def test_costs_are_exact_at_dense_thinnest_and_random(mixtral) -> None:
    model, x, space = mixtral
    rng = np.random.default_rng(1)
    configs = [space.dense_config(), space.min_config()] + \
        [space.decode(rng.random(space.dim)) for _ in range(3)]
    for config in configs:
        pruned = _exact(space, model, config, x)
        hidden = config[_RESIDUAL]
        for i in range(2):
            moe = pruned.model.layers[i].mlp
            width = config[f"model.layers.{i}.mlp.experts:expert_width"]
            kept = config[f"model.layers.{i}.mlp.experts:experts"]
            assert moe.experts.gate_up_proj.shape == (kept, 2 * width, hidden)
            assert moe.experts.down_proj.shape == (kept, hidden, width)
            assert moe.experts.intermediate_dim == width
            assert moe.gate.weight.shape == (kept, hidden)  # the router's outputs follow
            assert moe.gate.hidden_dim == moe.experts.hidden_dim == hidden
            assert moe.gate.num_experts == moe.experts.num_experts == kept


def test_the_thinnest_network_keeps_under_a_fifth_of_the_macs(mixtral) -> None:
    model, x, space = mixtral
    dense = sum(r.macs for r in space.layer_table(space.dense_config()))
    thinnest = sum(r.macs for r in space.layer_table(space.min_config()))
    assert dense == reference_macs(model, (x,))
    assert thinnest / dense < 0.2  # 0.163 (heads, expert widths and counts, the residual)


def test_each_expert_keeps_its_own_most_important_neurons(mixtral) -> None:
    model, x, space = mixtral
    name = "model.layers.0.mlp.experts:expert_width"
    pruned = space.apply(model, {name: 16})
    dense = model.model.layers[0].mlp.experts
    kept = pruned.model.layers[0].mlp.experts
    spec = next(c.experts for c in space._candidates if c.unit.name == name)
    scores = expert_scores(dense, spec)
    for e in range(4):
        best = np.sort(np.argsort(-scores[e], kind="stable")[:16])
        assert torch.equal(kept.down_proj[e], dense.down_proj[e][:, best])
        rows = np.concatenate([best, best + 64])
        assert torch.equal(kept.gate_up_proj[e], dense.gate_up_proj[e][rows])
    chosen = [tuple(np.sort(np.argsort(-scores[e], kind="stable")[:16])) for e in range(4)]
    assert len(set(chosen)) > 1  # the experts chose differently
    assert dense.gate_up_proj.shape == (4, 128, 32)  # the dense model is untouched


def test_trials_are_the_unit_by_unit_networks(mixtral) -> None:
    model, x, space = mixtral
    rng = np.random.default_rng(3)
    for config in [space.min_config(), space.decode(rng.random(space.dim))]:
        a, b = space.apply(model, config), space.apply(model, config)
        assert not space._template_of(model).plannable  # experts prune unit by unit
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        with torch.no_grad():
            assert torch.equal(a(x).logits, b(x).logits)


def test_batched_mm_experts_are_exact_too() -> None:
    model, x = _mixtral("batched_mm")
    space = ChannelSpace.from_model(model, x)
    assert sum(u.name.endswith(":expert_width") for u in space.units) == 2
    _exact(space, model, space.min_config(), x)


class _Expert(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class _MoE(nn.Module):
    """Top-2 of 4 experts, each run only on the tokens routed to it."""

    def __init__(self, d: int = 16, h: int = 32, experts: int = 4, k: int = 2) -> None:
        super().__init__()
        self.router = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(_Expert(d, h) for _ in range(experts))
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, x = x.shape, x.reshape(-1, x.shape[-1])
        w, idx = torch.topk(torch.softmax(self.router(x), -1), self.k, dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            tok, slot = torch.where(idx == e)
            if len(tok):
                out.index_add_(0, tok, expert(x[tok]) * w[tok, slot, None])
        return out.reshape(shape)


class _Net(nn.Module):
    def __init__(self, experts: int = 4) -> None:
        super().__init__()
        self.inp, self.moe, self.out = nn.Linear(8, 16), _MoE(experts=experts), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.moe(h))


def test_plain_experts_share_a_width_and_cost_exactly_whatever_the_routing() -> None:
    """Pruning ``inp`` moves the routing: per-expert widths would be costed by the dense
    routing; one width for the list's experts is exact at every configuration."""
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 12, 8)
    space = ChannelSpace.from_model(model, x)
    assert [u.name for u in space.units] == ["inp", "moe.experts:fc1:expert_width",
                                             "moe.experts:experts"]  # (tests/test_expert_count.py)
    tied = space.units[1]
    assert tied.full == 32 and len(tied.members) == 4  # every expert's fc1
    rng = np.random.default_rng(1)
    configs = [space.dense_config(), space.min_config()] + \
        [space.decode(rng.random(space.dim)) for _ in range(12)]
    for config in configs:
        pruned = space.apply(model, config)
        table = space.layer_table(config)
        assert sum(r.macs for r in table) == reference_macs(pruned, (x,)), config
        assert sum(r.params for r in table) == reference_params(pruned)
        assert {e.fc1.out_features for e in pruned.moe.experts} == {config[tied.name]}
        assert len(pruned.moe.experts) == config["moe.experts:experts"]
        with torch.no_grad():
            assert pruned(x).shape == (2, 12, 3)
    pruned = space.apply(model, {tied.name: 8})  # each expert keeps its own neurons
    kept = [tuple(np.flatnonzero(np.isin(model.moe.experts[e].fc1.bias.detach().numpy(),
                                         pruned.moe.experts[e].fc1.bias.detach().numpy())))
            for e in range(4)]
    assert len(set(kept)) > 1


def test_eager_experts_keep_what_moves_the_routing_dense_and_stay_exact() -> None:
    """The eager loop runs one matmul per expert hit: a unit that moves the routing is kept
    dense with a note naming it, and what is searched is costed exactly."""
    model, x = _mixtral("eager")
    space = ChannelSpace.from_model(model, x)
    assert any("kept dense" in n and "self_attn" in n for n in space.notes)
    _exact(space, model, space.min_config(), x)


def test_qwen2_moe_experts_beside_a_shared_expert() -> None:
    torch.manual_seed(0)
    config = transformers.Qwen2MoeConfig(
        hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
        shared_expert_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, vocab_size=64)
    model = transformers.Qwen2MoeForCausalLM(config).eval()
    x = torch.randint(0, 64, (2, 16))
    space = ChannelSpace.from_model(model, x)
    names = {u.name for u in space.units}
    assert {f"model.layers.{i}.mlp.experts:expert_width" for i in range(2)} <= names
    assert {f"model.layers.{i}.mlp.shared_expert.gate_proj" for i in range(2)} <= names
    rng = np.random.default_rng(2)
    for config in [space.min_config(), space.decode(rng.random(space.dim))]:
        _exact(space, model, config, x)


@pytest.mark.parametrize("experts", [4, 16])
def test_the_residual_width_never_cuts_the_routers_outputs(experts: int) -> None:
    """The routing weight ``w[tok, slot, None]`` is broadcast over the expert's output: it must
    not couple the residual width to the router's outputs (the number of experts), which are
    no width unit either (16 experts would be one at ``round_to=8``). Pruning the residual
    width narrows the router's inputs only, and the network stays exact and working. Experts
    the example routes nothing to (of 16, over 24 tokens) are pruned as their siblings are."""
    torch.manual_seed(0)
    model, x = _Net(experts).eval(), torch.randn(2, 12, 8)
    with torch.no_grad():
        logits = model.moe.router(model.inp(x).reshape(-1, 16))
    hit = set(torch.topk(logits, 2, dim=-1).indices.flatten().tolist())
    assert len(hit) == 4 if experts == 4 else len(hit) < 16
    space = ChannelSpace.from_model(model, x)
    assert [u.name for u in space.units] == ["inp", "moe.experts:fc1:expert_width",
                                             "moe.experts:experts"]
    for keep in (4, 6, 8, 16):
        for config in ({"inp": keep}, {"inp": keep, "moe.experts:fc1:expert_width": 8}):
            pruned = space.apply(model, config)
            assert pruned.moe.router.weight.shape == (experts, keep)
            assert all(e.fc1.in_features == keep and e.fc2.out_features == keep
                       and e.fc1.out_features == config.get("moe.experts:fc1:expert_width", 32)
                       for e in pruned.moe.experts)
            table = space.layer_table(config)
            router = next(r for r in table if r.name == "moe.router")
            assert (router.in_channels, router.out_channels) == (keep, experts)
            assert sum(r.macs for r in table) == reference_macs(pruned, (x,)), config
            assert sum(r.params for r in table) == reference_params(pruned)
            with torch.no_grad():
                assert pruned(x).shape == (*x.shape[:2], 3)


def test_the_residual_width_prunes_the_fused_experts_and_the_router(mixtral) -> None:
    """The residual width's kept channels are the same in the embedding, every router's
    columns and every expert's hidden dimension (up rows' inputs, down outputs)."""
    model, x, space = mixtral
    pruned = _exact(space, model, {_RESIDUAL: 16}, x)
    dense_emb = model.model.embed_tokens.weight.detach()
    emb = pruned.model.embed_tokens.weight.detach()
    kept = [next(j for j in range(32) if torch.equal(dense_emb[:, j], emb[:, i]))
            for i in range(16)]
    assert kept == sorted(kept) and len(set(kept)) == 16
    for i in range(2):
        dense, moe = model.model.layers[i].mlp, pruned.model.layers[i].mlp
        assert torch.equal(moe.gate.weight, dense.gate.weight[:, kept])
        assert torch.equal(moe.experts.gate_up_proj, dense.experts.gate_up_proj[:, :, kept])
        assert torch.equal(moe.experts.down_proj, dense.experts.down_proj[:, kept, :])


def test_each_layer_keeps_its_most_routed_experts(mixtral) -> None:
    """An expert count keeps the experts of largest routed share (on the example) times
    weight norm: their weights, their router rows, in their order; top-2 routing still runs."""
    model, x, space = mixtral
    name = "model.layers.0.mlp.experts:experts"
    c = next(c for c in space._candidates if c.unit.name == name)
    assert len(c.share) == 4 and abs(sum(c.share) - 1) < 1e-9 and min(c.share) > 0
    dense = model.model.layers[0].mlp
    best = np.sort(np.argsort(-count_scores(dense.experts, c.share), kind="stable")[:2])
    pruned = _exact(space, model, {name: 2}, x)
    moe = pruned.model.layers[0].mlp
    assert torch.equal(moe.gate.weight, dense.gate.weight[best])
    assert torch.equal(moe.experts.gate_up_proj, dense.experts.gate_up_proj[best])
    assert torch.equal(moe.experts.down_proj, dense.experts.down_proj[best])
    assert moe.gate.top_k == 2 and pruned.model.layers[1].mlp.experts.num_experts == 4
    assert set(best) == set(np.argsort(-np.asarray(c.share))[:2])  # (norms alike at init)



def test_gpt_oss_transposed_experts_with_biases_prune_every_way() -> None:
    """GPT-OSS stores its experts transposed (``[experts, hidden, 2 * width]``, gate and up
    rows interleaved) with biases, and its router has a bias: the residual width, the expert
    width and the expert count all prune, exactly, into a working network."""
    torch.manual_seed(0)
    config = transformers.GptOssConfig(
        hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=64,
        head_dim=8, layer_types=["full_attention"] * 2)
    model = transformers.GptOssForCausalLM(config).eval()
    x = torch.randint(0, 64, (2, 16))
    space = ChannelSpace.from_model(model, x, output="logits")
    kinds = {u.kind for u in space.units}
    assert {"residual", "neurons", "experts"} <= kinds
    experts = model.model.layers[0].mlp.experts
    assert experts.is_transposed and experts.gate_up_proj_bias is not None
    rng = np.random.default_rng(0)
    for cfg in [space.min_config(), space.decode(rng.random(space.dim))]:
        pruned = _exact(space, model, cfg, x)
        moe = pruned.model.layers[0].mlp
        kept, hidden = cfg["model.layers.0.mlp.experts:experts"], moe.router.weight.shape[1]
        width = cfg["model.layers.0.mlp.experts:expert_width"]
        assert moe.router.weight.shape == (kept, hidden) and moe.router.bias.shape == (kept,)
        assert moe.experts.gate_up_proj.shape == (kept, hidden, 2 * width)
        assert moe.experts.down_proj.shape == (kept, width, hidden)
        assert moe.experts.down_proj_bias.shape == (kept, hidden)
