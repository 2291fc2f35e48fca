"""How many experts a plain-PyTorch MoE layer keeps (an ``nn.ModuleList`` of MLPs behind an
``nn.Linear`` router): a unit of kind ``experts`` (search_spaces/expert_lists.py), its
experts ranked by routed share times weight norm, the router's rows and ``num_experts``
following, the costs exact and the routing right."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.search_spaces import ChannelSpace, reference_macs, reference_params
from autoprune.search_spaces.criteria import make_criterion
from autoprune.search_spaces.expert_lists import list_scores
from autoprune.testing.architectures import ARCHITECTURES

_COUNT = "moe.experts:experts"


class _Expert(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class _MoE(nn.Module):
    """Top-k of ``num_experts`` experts, each run only on the tokens routed to it."""

    def __init__(self, d: int = 16, h: int = 32, experts: int = 8, k: int = 2) -> None:
        super().__init__()
        self.router = nn.Linear(d, experts)
        self.experts = nn.ModuleList(_Expert(d, h) for _ in range(experts))
        self.num_experts, self.top_k = experts, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, x = x.shape, x.reshape(-1, x.shape[-1])
        assert self.router.out_features == self.num_experts == len(self.experts)
        w, idx = torch.topk(torch.softmax(self.router(x), -1), self.top_k, dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            tok, slot = torch.where(idx == e)
            if len(tok):
                out.index_add_(0, tok, expert(x[tok]) * w[tok, slot, None])
        return out.reshape(shape)


class _Net(nn.Module):
    def __init__(self, experts: int = 8, k: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.moe = _MoE(experts=experts, k=k)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.moe(h))


def _built(experts: int = 8, k: int = 2, tokens: int = 12
           ) -> tuple[nn.Module, torch.Tensor, ChannelSpace]:
    torch.manual_seed(0)
    model, x = _Net(experts, k).eval(), torch.randn(2, tokens, 8)
    return model, x, ChannelSpace.from_model(model, x)


def _routed(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Rows each expert of ``model.moe`` ran on."""
    rows = np.zeros(len(model.moe.experts), dtype=np.int64)
    hooks = [e.register_forward_pre_hook(lambda m, a, i=i: rows.__setitem__(i, rows[i] + len(a[0])))
             for i, e in enumerate(model.moe.experts)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return rows


def test_the_expert_count_is_a_unit_from_the_top_k_up() -> None:
    model, x, space = _built()
    count = next(u for u in space.units if u.kind == "experts")
    assert count.name == _COUNT and count.full == 8
    assert count.choices == tuple(range(2, 9))  # max(top-2, 20% of 8)
    assert {u.name for u in space.units} == {"inp", "moe.experts:fc1:expert_width", _COUNT}
    assert not space.notes
    _, _, three = _built(k=3)  # the floor is the top-k when that is more than a fifth
    assert next(u for u in three.units if u.kind == "experts").choices == tuple(range(3, 9))


def test_costs_are_exact_and_the_network_runs_at_every_count() -> None:
    model, x, space = _built()
    rng = np.random.default_rng(2)
    configs = [space.dense_config(), space.min_config()] + \
        [{**space.dense_config(), _COUNT: k} for k in range(2, 8)] + \
        [{**space.min_config(), _COUNT: k} for k in (3, 8)] + \
        [space.decode(rng.random(space.dim)) for _ in range(10)]
    totals = space.cost_totals()  # (evaluated from the thinnest configuration's rows)
    for config in configs:
        pruned = space.apply(model, config)
        table = space.layer_table(config)
        assert sum(r.macs for r in table) == reference_macs(pruned, (x,)), config
        assert sum(r.params for r in table) == reference_params(pruned), config
        assert totals(config) == {"macs": sum(r.macs for r in table),
                                  "params": sum(r.params for r in table)}
        kept, hidden = config[_COUNT], config["inp"]
        moe = pruned.moe
        assert len(moe.experts) == moe.num_experts == moe.router.out_features == kept
        assert moe.router.weight.shape == (kept, hidden) and moe.router.bias.shape == (kept,)
        assert moe.top_k == 2
        with torch.no_grad():
            assert pruned(x).shape == (2, 12, 3)
    assert all(e.fc1.weight.shape == (32, 16) for e in model.moe.experts)  # dense untouched
    assert len(model.moe.experts) == model.moe.num_experts == 8


def test_the_cost_plan_counts_the_entries_the_list_keeps() -> None:
    """A list keeping ``k`` experts holds entries 0 .. k-1: their rows keep their parameters,
    the others' go (their routed MACs stay: the kept experts run those rows)."""
    model, x, space = _built()
    config = {_COUNT: 5}
    pruned = space.apply(model, config)
    rows = {r.name: r for r in space.layer_table(config)}
    names = {n for n, m in pruned.named_modules() if next(m.parameters(False), None) is not None}
    for e in range(8):
        for layer in ("fc1", "fc2"):
            name = f"moe.experts.{e}.{layer}"
            assert (rows[name].params > 0) == (e < 5) == (name in names)
    assert rows["moe.router"].params == 5 * 16 + 5
    dense = {r.name: r for r in space.layer_table({})}
    assert sum(r.macs for n, r in rows.items() if ".experts." in n) == \
        sum(r.macs for n, r in dense.items() if ".experts." in n)


def test_the_layer_keeps_its_most_routed_experts_and_routes_to_them() -> None:
    model, x, space = _built()
    share = _routed(model, x) / (2 * 12 * 2)
    scores = list_scores(model.moe.experts, share)
    for k in (2, 3, 5):
        pruned = space.apply(model, {_COUNT: k})
        kept = np.sort(np.argsort(-scores, kind="stable")[:k])
        for j, e in enumerate(kept):  # the kept experts in their order, the router's rows too
            assert torch.equal(pruned.moe.experts[j].fc1.weight, model.moe.experts[e].fc1.weight)
            assert torch.equal(pruned.moe.router.weight[j], model.moe.router.weight[e])
        masked = copy.deepcopy(model)  # the dense layer with the dropped experts never chosen
        gone = torch.ones(8, dtype=torch.bool)
        gone[torch.as_tensor(kept)] = False
        with torch.no_grad():
            masked.moe.router.bias[gone] = -torch.inf
            torch.testing.assert_close(pruned(x), masked(x))
        assert (_routed(pruned, x) > 0).sum() > 1


@pytest.mark.parametrize("criterion", ["fpgm", "taylor"])
def test_every_criterion_ranks_experts_by_routed_share_and_norm(criterion: str) -> None:
    """A weight criterion and a data one keep the experts L2 keeps (what they measure ranks
    the experts' neurons, not the experts), exact and working."""
    model, x, space = _built()
    calibration = [(torch.randn(2, 12, 8), torch.randint(0, 3, (2, 12))) for _ in range(2)]
    other = ChannelSpace.from_model(model, x, criterion=make_criterion(
        criterion, calibration=calibration))
    assert [u.name for u in other.units] == [u.name for u in space.units]
    a, b = space.apply(model, {_COUNT: 3}), other.apply(model, {_COUNT: 3})
    assert torch.equal(a.moe.router.weight, b.moe.router.weight)
    assert all(torch.equal(p.fc1.weight, q.fc1.weight) for p, q in
               zip(a.moe.experts, b.moe.experts))
    for config in ({_COUNT: 3}, other.min_config()):
        pruned = other.apply(model, config)
        table = other.layer_table(config)
        assert sum(r.macs for r in table) == reference_macs(pruned, (x,))
        assert sum(r.params for r in table) == reference_params(pruned)
        with torch.no_grad():
            assert pruned(x).shape == (2, 12, 3)


def test_experts_never_routed_to_go_first() -> None:
    """16 experts over 6 tokens: most are never routed to (share 0) and are dropped before
    any routed one, ordered among themselves by their weights' norm."""
    model, x, space = _built(experts=16, tokens=3)
    routed = np.flatnonzero(_routed(model, x))
    assert 0 < len(routed) < 16
    count = next(u for u in space.units if u.kind == "experts")
    assert count.choices[0] == 4  # 20% of 16
    pruned = space.apply(model, {_COUNT: len(routed)})
    weights = [e.fc1.weight for e in pruned.moe.experts]
    assert all(any(torch.equal(w, model.moe.experts[e].fc1.weight) for w in weights)
               for e in routed)
    thinnest = space.apply(model, space.min_config())
    for config, net in ((space.min_config(), thinnest), ({_COUNT: len(routed)}, pruned)):
        table = space.layer_table(config)
        assert sum(r.macs for r in table) == reference_macs(net, (x,))
        assert sum(r.params for r in table) == reference_params(net)
        with torch.no_grad():
            assert net(x).shape == (2, 3, 3)


def test_the_zoo_moe_decoder_searches_its_expert_counts() -> None:
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES["moe-modulelist"]()
    space = ChannelSpace.from_model(model.eval(), inputs, **options)
    counts = [u for u in space.units if u.kind == "experts"]
    assert [u.name for u in counts] == [f"blocks.{i}.moe.experts:experts" for i in range(2)]
    assert all(u.choices == (2, 3, 4) for u in counts)  # top-2 of 4
    config = space.min_config()
    pruned = space.apply(model, config)
    for block in pruned.blocks:
        assert len(block.moe.experts) == block.moe.router.out_features == 2
    table = space.layer_table(config)
    assert sum(r.macs for r in table) == reference_macs(pruned, inputs)
    assert sum(r.params for r in table) == reference_params(pruned)


class _Capped(_MoE):
    """Each expert takes at most ``capacity`` of the rows routed to it (the rest dropped):
    the experts' rows are no whole top-k of the tokens, and the count is not searched."""

    capacity = 7

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, x = x.shape, x.reshape(-1, x.shape[-1])
        w, idx = torch.topk(torch.softmax(self.router(x), -1), self.top_k, dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            tok, slot = torch.where(idx == e)
            tok, slot = tok[:self.capacity], slot[:self.capacity]
            if len(tok):
                out.index_add_(0, tok, expert(x[tok]) * w[tok, slot, None])
        return out.reshape(shape)


def test_a_layer_dropping_tokens_over_capacity_keeps_its_experts_with_a_note() -> None:
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 12, 8)
    model.moe.__class__ = _Capped
    rows = _routed(model, x)
    assert len(set(rows)) > 1 and rows.sum() % 24  # (some under capacity)
    space = ChannelSpace.from_model(model, x)
    assert not any(u.kind == "experts" for u in space.units)
    (note,) = [n for n in space.notes if "how many experts moe.experts keeps" in n]
    assert "no whole top-k" in note
