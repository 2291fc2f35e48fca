"""Channel trials decided on a view of the dense weights and built by one selection per tensor
(search_spaces/gather.py) give the networks that pruning unit by unit gives, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.search_spaces import ChannelSpace
from autoprune.testing.architectures import ARCHITECTURES
from autoprune.testing.memory import peak_allocated

#: Architectures whose trials take the gather path: attention (fused, grouped-query),
#: concatenations, depthwise convolutions, free parameters, flatten, chunked gates.
GATHERED = ["hf-gpt2", "hf-llama-gqa", "hf-bert", "hf-vit", "densenet-concat",
            "depthwise-separable", "free-parameters", "flatten-head", "gated-chunk",
            "split-branches", "zoo-mobilenetv2", "zoo-resnet20", "two-inputs"]


def _unit_by_unit(space: ChannelSpace, model: nn.Module, config: dict[str, int]) -> nn.Module:
    template = space._template_of(model)
    held, template.plannable = template.plannable, False
    try:
        return space.apply(model, config)
    finally:
        template.plannable = held


def _same(a: nn.Module, b: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert [p.requires_grad for p in a.parameters()] == [p.requires_grad for p in b.parameters()]
    assert a.training == b.training
    with torch.no_grad():  # module attributes (head counts, widths) agree: the same outputs
        oa, ob = a.eval()(*inputs), b.eval()(*inputs)
    oa = oa.logits if hasattr(oa, "logits") else oa
    ob = ob.logits if hasattr(ob, "logits") else ob
    if isinstance(oa, dict):
        oa, ob = next(iter(oa.values())), next(iter(ob.values()))
    if isinstance(oa, (tuple, list)):
        oa, ob = oa[0], ob[0]
    if hasattr(oa, "last_hidden_state"):
        oa, ob = oa.last_hidden_state, ob.last_hidden_state
    assert torch.equal(oa, ob)


@pytest.mark.parametrize("name", GATHERED)
def test_gathered_trials_are_the_unit_by_unit_networks(name: str) -> None:
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES[name]()
    model.eval()
    space = ChannelSpace.from_model(model, inputs, **options)
    rng = np.random.default_rng(3)
    configs = [space.min_config()] + [space.decode(rng.random(space.dim)) for _ in range(3)]
    # a width seen again (the widest unit's of the second configuration) with the others
    # changed: scores kept for those cuts are read back, and must be the ones computed
    first = space.units[0].name
    again = {**configs[3], first: configs[1][first]}
    for config in configs + [configs[1], again]:
        gathered = space.apply(model, config)
        assert space._template_of(model).plannable, "this architecture should be gathered"
        _same(gathered, _unit_by_unit(space, model, config), inputs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["hf-gpt2", "hf-llama-gqa"])
def test_half_precision_trials_are_the_unit_by_unit_networks(name: str, dtype: torch.dtype
                                                             ) -> None:
    """Half-precision selections go through NumPy (search_spaces/select.py): the same bits."""
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES[name]()
    model = model.to(dtype).eval()
    inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
    space = ChannelSpace.from_model(model, inputs, **options)
    rng = np.random.default_rng(5)
    for config in [space.decode(rng.random(space.dim)) for _ in range(2)]:
        gathered = space.apply(model, config)
        assert space._template_of(model).plannable
        _same(gathered, _unit_by_unit(space, model, config), inputs)


def test_columns_gathered_for_scores_are_the_selections(monkeypatch) -> None:
    """A weight whose rows a unit scores at the kept columns (an MLP's up and gate
    projections under a cut residual width) is gathered once: the build takes that gather,
    cut to the rows kept, instead of selecting from the dense weight again."""
    import autoprune.search_spaces.gather as gather  # noqa: PLC0415

    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES["hf-llama-gqa"]()
    model.eval()
    space = ChannelSpace.from_model(model, inputs, **options)
    config = {u.name: max(u.choices[0], u.full // 2) for u in space.units}
    names = {p.data_ptr(): n for n, p in model.named_parameters()}
    selected: list[str] = []
    plain = gather._selection

    def counted(source: torch.Tensor, index: list) -> torch.Tensor:
        selected.append(names.get(source.data_ptr(), "?"))
        return plain(source, index)

    monkeypatch.setattr(gather, "_selection", counted)
    gathered = space.apply(model, config)
    assert not [n for n in selected if n.endswith(("up_proj.weight", "gate_proj.weight"))], \
        selected
    assert any(n.endswith("down_proj.weight") for n in selected)  # (its columns are not read)
    monkeypatch.setattr(gather, "_selection", plain)
    _same(gathered, _unit_by_unit(space, model, config), inputs)


def test_take_copies_the_bits_index_select_would() -> None:
    from autoprune.search_spaces.select import take

    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        source = torch.randn(37, 53, 5).to(dtype)
        for dim in range(3):
            index = torch.randperm(source.shape[dim])[:source.shape[dim] // 2 + 1]
            assert torch.equal(take(source, dim, index), source.index_select(dim, index))
            seen = source.transpose(0, 2)  # (not contiguous)
            assert torch.equal(take(seen, dim, index[index < seen.shape[dim]]),
                               seen.index_select(dim, index[index < seen.shape[dim]]))
        out = torch.empty(37, 20, 5, dtype=dtype)
        index = torch.arange(0, 40, 2)
        assert take(source, 1, index, out=out) is out
        assert torch.equal(out, source.index_select(1, index))


@pytest.mark.parametrize("name", ["hf-gpt2", "hf-bert", "hf-vit"])
def test_head_positions_are_gathered_too(name: str) -> None:
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES[name]()
    model.eval()
    space = ChannelSpace.from_model(model, inputs, prune_head_dims=True,
                                    **{k: v for k, v in options.items() if k != "prune_head_dims"})
    assert any(u.kind == "head_dim" for u in space.units)
    rng = np.random.default_rng(5)
    for config in [space.min_config()] + [space.decode(rng.random(space.dim)) for _ in range(2)]:
        _same(space.apply(model, config), _unit_by_unit(space, model, config), inputs)


def test_other_criteria_and_layers_prune_unit_by_unit() -> None:
    # FPGM reads whole tensors, an LSTM's cuts are not known to the view: both keep the
    # unit-by-unit path, and still prune
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES["zoo-resnet20"]()
    space = ChannelSpace.from_model(model.eval(), inputs, criterion="fpgm", **options)
    space.apply(model, space.min_config())
    assert space._template_of(model).plannable is False
    model, inputs, options = ARCHITECTURES["lstm"]()
    space = ChannelSpace.from_model(model.eval(), inputs, **options)
    pruned = space.apply(model, space.min_config())
    assert space._template_of(model).plannable is False
    with torch.no_grad():
        pruned(*inputs)


def test_a_weight_cut_on_both_sides_is_selected_once() -> None:
    # an MLP whose hidden width and residual width are both units: unit by unit, the first
    # unit's copy of each big weight (its kept rows at full width) and the second's were
    # alive together; gathered, a trial allocates the pruned network and small blocks only
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(1024)
            self.up = nn.Linear(1024, 4096)
            self.down = nn.Linear(4096, 1024)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.down(torch.relu(self.up(self.norm(x))))

    model = nn.Sequential(nn.Linear(64, 1024), Block(), Block(), nn.Linear(1024, 10)).eval()
    x = torch.randn(2, 64)
    space = ChannelSpace.from_model(model, x, min_ratio=0.5)
    assert space.dim == 3  # two hidden widths and the residual width
    thin = space.min_config()
    space.apply(model, thin)  # (the first trial finds the dense groups once)
    pruned, peak = peak_allocated(lambda: space.apply(model, thin))
    _, before = peak_allocated(lambda: _unit_by_unit(space, model, thin))
    pruned_bytes = sum(t.numel() * t.element_size() for t in pruned.state_dict().values())
    weight = 4096 * 1024 * 4
    assert peak <= pruned_bytes + weight // 8, (peak, pruned_bytes)
    assert before > pruned_bytes + weight // 4, (before, pruned_bytes)  # what it was
    _same(pruned, _unit_by_unit(space, model, thin), (x,))


@pytest.mark.parametrize("name", ["hf-gpt2", "zoo-resnet20"])
def test_a_dropped_trial_network_is_freed_without_a_collection(name: str) -> None:
    # nothing of a trial's network may sit in a reference cycle: the search then pays a full
    # gc.collect per trial (0.2 s in a process holding a transformers model) to free it
    import gc

    from autoprune.search_spaces import watch

    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES[name]()
    space = ChannelSpace.from_model(model.eval(), inputs, **options)
    space.apply(model, space.min_config())
    gc.collect()
    gc.disable()
    try:
        net = space.apply(model, space.min_config())
        refs = watch(net)
        del net
        assert all(r() is None for r in refs)
    finally:
        gc.enable()


def test_scores_for_cuts_seen_before_are_kept() -> None:
    # a unit's scores depend only on the cuts of the tensors it reads: a trial that repeats
    # every cut scores nothing again, and its network is the same
    torch.manual_seed(0)
    model, inputs, options = ARCHITECTURES["hf-llama-gqa"]()
    space = ChannelSpace.from_model(model.eval(), inputs, **options)
    config = space.decode(np.full(space.dim, 0.4))
    first = space.apply(model, config)
    template = space._template_of(model)
    kept = dict(template.scored)
    assert kept  # the units after the first were scored on cut tensors, and kept
    second = space.apply(model, config)
    assert template.scored == kept
    _same(first, second, inputs)
