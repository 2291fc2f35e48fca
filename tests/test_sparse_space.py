"""The weight-sparsity spaces (unstructured, N:M): masks, costs, ends, fine-tuning, errors."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.search_spaces import (SPACES, WeightSparsitySpace, make_space, mask_of,
                                     reference_macs, reference_params, remove_masks)
from autoprune.search_spaces.masks import canonical as _canonical
from autoprune.search_spaces.tracing import call_model, conv1d_type, output_tensor
from autoprune.zoo.models import build_model


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10))
    return model.eval(), torch.randn(3, 16)


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, stride=2, groups=2, bias=False)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.conv1d = nn.Conv1d(8, 8, 3)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.pw(self.dw(x)))
        x = self.up(torch.relu(self.grouped(x)))
        x = self.conv1d(x.flatten(2)[..., :16])
        return self.head(x.mean(-1))


def _convnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _ConvNet().eval(), torch.randn(2, 3, 9, 9)


class _Twice(nn.Module):
    """A hidden layer called twice (one unit, a row per call)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mid(torch.relu(self.mid(self.inp(x)))))


def _twice() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _Twice().eval(), torch.randn(5, 8)


def _resnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("resnet20", in_channels=1, input_size=16).eval(), torch.randn(2, 1, 16, 16)


def _gpt2() -> tuple[nn.Module, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50,
                                     n_positions=16)
    return transformers.GPT2LMHeadModel(config).eval(), torch.randint(0, 50, (2, 8))


BUILDERS = {"mlp": _mlp, "convnet": _convnet, "resnet20": _resnet, "gpt2": _gpt2,
            "twice": _twice}
_SPACES: dict[tuple[str, str], tuple] = {}


def _space(model_name: str, kind: str) -> tuple[nn.Module, torch.Tensor, WeightSparsitySpace]:
    key = (model_name, kind)
    if key not in _SPACES:
        model, x = BUILDERS[model_name]()
        _SPACES[key] = (model, x, make_space(kind, model, x))
    return _SPACES[key]


def _configs(space: WeightSparsitySpace, n: int = 3, seed: int = 0) -> list[dict[str, int]]:
    rng = np.random.default_rng(seed)
    return [space.min_config()] + [space.decode(rng.random(space.dim)) for _ in range(n)]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return output_tensor(call_model(model, (x,)))


def _uses(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """How often each weight element of each conv/linear layer is used in one forward pass,
    counted from the layers' input and output shapes."""
    uses: dict[str, int] = {}
    conv1d = conv1d_type()
    hooks = []

    def hook(name: str):
        def fn(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            inp = args[0]
            if isinstance(m, nn.modules.conv._ConvTransposeNd):
                n = inp.shape[0] * int(np.prod(inp.shape[2:]))
            elif isinstance(m, nn.modules.conv._ConvNd):
                n = out.shape[0] * int(np.prod(out.shape[2:]))
            else:
                n = inp.numel() // (m.in_features if isinstance(m, nn.Linear) else m.weight.shape[0])
            uses[name] = uses.get(name, 0) + int(n)
        return fn

    types = (nn.modules.conv._ConvNd, nn.Linear) + ((conv1d,) if conv1d else ())
    for name, m in model.named_modules():
        if isinstance(m, types):
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        _logits(model, x)
    finally:
        for h in hooks:
            h.remove()
    return uses


def _direct(pruned: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """MACs and parameters of the masked model counted from its masks: the dense counts less
    every masked weight times its uses."""
    uses = _uses(pruned, x)
    macs, params = reference_macs(pruned, (x,)), reference_params(pruned)
    for name, m in pruned.named_modules():
        mask = mask_of(m)
        if mask is not None:
            zeros = int(mask.numel() - mask.sum())
            macs -= zeros * uses[name]
            params -= zeros
    return macs, params


# ---------------------------------------------------------------------- masks
@pytest.mark.parametrize("model_name", sorted(BUILDERS))
def test_unstructured_masks_keep_exactly_the_asked_count(model_name: str) -> None:
    model, x, space = _space(model_name, "unstructured")
    assert space.name == "unstructured" and space.criterion.name == "magnitude"
    for u in space.units:
        assert u.kind == "weights" and u.members == (u.name,)
        assert u.full == model.get_submodule(u.name).weight.numel()
        want = sorted({max(1, math.floor((1 - lv) * u.full + 1e-9)) for lv in space.levels})
        assert list(u.choices) == want and u.choices[-1] == u.full
    for config in _configs(space):
        pruned = space.apply(model, config)
        for u in space.units:
            m = pruned.get_submodule(u.name)
            mask = mask_of(m)
            if config[u.name] == u.full:
                assert mask is None
                continue
            assert int(mask.sum()) == config[u.name]
            assert int((m.weight != 0).sum()) <= config[u.name]
            # the magnitude criterion: every kept |w| is at least every removed one
            w = model.get_submodule(u.name).weight.detach().abs()
            assert w[mask].min() >= w[~mask].max()


@pytest.mark.parametrize("model_name", sorted(BUILDERS))
def test_nm_masks_keep_n_of_every_m_along_the_inputs(model_name: str) -> None:
    model, x, space = _space(model_name, "nm")
    assert space.name == "nm" and space.nm == ((1, 4), (2, 4))
    for u in space.units:
        assert u.choices == (u.full // 4, u.full // 2, u.full)
    for config in _configs(space, seed=1):
        pruned = space.apply(model, config)
        for u in space.units:
            nm = space.pattern(u.name, config[u.name])
            m = pruned.get_submodule(u.name)
            if nm is None:
                assert config[u.name] == u.full and mask_of(m) is None
                continue
            n, g = nm
            groups = _canonical(m, mask_of(m)).movedim(1, -1).reshape(-1, g)
            assert torch.all(groups.sum(1) == n), u.name
            assert int(mask_of(m).sum()) == config[u.name]


def test_nm_leaves_layers_out_whose_inputs_m_does_not_divide() -> None:
    model, x, space = _space("convnet", "nm")
    names = [u.name for u in space.units]
    assert "dw" not in names and any("dw" in n and "divisible" in n for n in space.notes)
    assert set(names) == {"pw", "grouped", "up", "conv1d"}
    unstructured = _space("convnet", "unstructured")[2]
    assert "dw" in [u.name for u in unstructured.units]


# ---------------------------------------------------------------------- costs
@pytest.mark.parametrize("kind", ["unstructured", "nm"])
@pytest.mark.parametrize("model_name", sorted(BUILDERS))
def test_layer_table_costs_equal_a_direct_count_from_the_masks(model_name: str, kind: str) -> None:
    model, x, space = _space(model_name, kind)
    dense_macs = reference_macs(model, (x,))
    for config in _configs(space, seed=2):
        table = space.layer_table(config)
        pruned = space.apply(model, config)
        assert (sum(r.macs for r in table), sum(r.params for r in table)) == _direct(pruned, x)
        assert sum(r.dense_macs if r.weight_elements else r.macs for r in table) == dense_macs
        units = {u.name: u for u in space.units}
        for r in table:
            if r.module in units:
                u = units[r.module]
                assert (r.weight_elements, r.weight_nonzero) == (u.full, config[u.name])
                assert r.weight_rows == r.out_channels
                assert r.macs <= r.dense_macs
            else:
                assert r.weight_elements == r.weight_nonzero == r.dense_macs == 0
    dense = space.layer_table(space.dense_config())
    assert sum(r.macs for r in dense) == dense_macs
    assert sum(r.params for r in dense) == reference_params(model)


# ---------------------------------------------------------------------- units
def test_ends_and_embeddings_are_dense_unless_asked() -> None:
    model, x, space = _space("mlp", "unstructured")
    assert [u.name for u in space.units] == ["2", "4"]
    wide = make_space("unstructured", model, x, include_ends=True)
    assert [u.name for u in wide.units] == ["0", "2", "4", "6"]
    model, x, space = _space("gpt2", "unstructured")
    names = [u.name for u in space.units]
    assert names == ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
                     "transformer.h.0.mlp.c_proj"]
    wide = make_space("unstructured", model, x, include_ends=True)
    wide_names = [u.name for u in wide.units]
    assert wide_names == ["transformer.h.0.attn.c_attn", *names]  # lm_head: tied to wte
    assert not any("wte" in n or "wpe" in n for n in wide_names)
    assert any("lm_head" in n and "shared" in n for n in wide.notes)
    assert any("embeddings" in n for n in wide.notes)
    # ResNet-20: its stem conv and its classifier
    model, x, space = _space("twice", "unstructured")
    assert [u.name for u in space.units] == ["mid"]
    rows = [r for r in space.layer_table(space.min_config()) if r.module == "mid"]
    assert [r.name for r in rows] == ["mid", "mid#2"] and rows[1].params == 0
    assert all(r.weight_nonzero == space.units[0].minimum for r in rows)
    model, x, space = _space("resnet20", "unstructured")
    assert "conv1" not in [u.name for u in space.units]
    assert "fc" not in [u.name for u in space.units]


def test_unit_facts() -> None:
    model, x, space = _space("convnet", "unstructured")
    layers = dict(zip([u.name for u in space.units], space.unit_layers()))
    assert layers["grouped"] == [(8, 16, 3, 3)] and layers["dw"] == [(1, 8, 3, 3)]
    assert layers["conv1d"] == [(8, 8, 3, 1)]
    scores = space.channel_scores(model)
    assert [len(s) for s in scores] == [u.full for u in space.units]
    assert space.broken_units(model, space.min_config()) is None
    assert len(space.describe()) == space.dim
    ratios = space.ratios(space.min_config())
    assert ratios == space.ratio_lower_bounds()


# ---------------------------------------------------------------------- the masked model
def test_masked_outputs_and_fine_tuning_keep_the_zeros() -> None:
    model, x, space = _space("convnet", "unstructured")
    config = space.min_config()
    pruned = space.apply(model, config)
    assert not pruned.training
    plain = copy.deepcopy(model)
    with torch.no_grad():
        for u in space.units:
            plain.get_submodule(u.name).weight.mul_(mask_of(pruned.get_submodule(u.name)))
    assert torch.allclose(_logits(pruned, x), _logits(plain, x), atol=1e-6)
    tuned = copy.deepcopy(pruned).train()
    opt = torch.optim.SGD(tuned.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    before = {u.name: tuned.get_submodule(u.name).weight.detach().clone() for u in space.units}
    for _ in range(3):
        opt.zero_grad()
        tuned(x).square().mean().backward()
        opt.step()
    for u in space.units:
        m = tuned.get_submodule(u.name)
        mask = mask_of(m)
        assert torch.all(m.weight[~mask] == 0)
        assert torch.all(m.parametrizations.weight.original[~mask] == 0)
        assert not torch.equal(m.weight.detach(), before[u.name])


def test_apply_leaves_the_model_alone_and_keeps_mode_and_flags() -> None:
    model, x, space = _space("mlp", "unstructured")
    before = copy.deepcopy(model.state_dict())
    model.train()
    model[2].weight.requires_grad_(False)
    try:
        pruned = space.apply(model, space.min_config())
    finally:
        model.eval()
        model[2].weight.requires_grad_(True)
    assert pruned.training and pruned[2].parametrizations.training
    assert not pruned[2].parametrizations.weight.original.requires_grad
    assert pruned[4].parametrizations.weight.original.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert mask_of(model[2]) is None and not hasattr(model[2], "parametrizations")
    copied = copy.deepcopy(pruned)
    assert torch.equal(mask_of(copied[2]), mask_of(pruned[2]))
    # applying again to a masked model ranks its masked weights: the masks only grow
    again = space.apply(pruned, space.min_config())
    assert torch.equal(mask_of(again[2]), mask_of(pruned[2]))


def test_the_space_pickles() -> None:
    model, x, space = _space("gpt2", "nm")
    back = pickle.loads(pickle.dumps(space))
    config = space.decode(np.full(space.dim, 0.4))
    assert back.layer_table(config) == space.layer_table(config)
    assert back.units == space.units and back.criterion == space.criterion


def test_remove_masks_bakes_the_zeros_into_plain_weights() -> None:
    model, x, space = _space("gpt2", "unstructured")
    pruned = space.apply(model, space.min_config())
    masks = {u.name: mask_of(pruned.get_submodule(u.name)) for u in space.units}
    want = _logits(pruned, x)
    plain = remove_masks(copy.deepcopy(pruned))
    for u in space.units:
        m = plain.get_submodule(u.name)
        assert mask_of(m) is None and not parametrize_of(m)
        assert isinstance(m.weight, nn.Parameter)
        assert int((m.weight != 0).sum()) == int(masks[u.name].sum())
    assert torch.allclose(_logits(plain, x), want, atol=1e-6)
    state = plain.state_dict()
    assert not any("parametrizations" in k for k in state)


def parametrize_of(m: nn.Module) -> bool:
    return torch.nn.utils.parametrize.is_parametrized(m)


# ---------------------------------------------------------------------- bad inputs
def test_bad_inputs_are_one_value_error_each() -> None:
    model, x = _mlp()
    space = _space("mlp", "unstructured")[2]
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        make_space("unstructured", model, x, levels=(0.0, 0.5, 1.0))
    with pytest.raises(ValueError, match="repeat"):
        make_space("unstructured", model, x, levels=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="same share; choose one"):
        make_space("nm", model, x, nm=("2:4", "4:8"))
    with pytest.raises(ValueError, match="N:M"):
        make_space("nm", model, x, nm=("4:2",))
    with pytest.raises(ValueError, match="unknown units"):
        space.layer_table({"nope": 3})
    with pytest.raises(ValueError, match="not one of its choices"):
        space.apply(model, {"2": 7})
    with pytest.raises(ValueError, match="calibration"):
        make_space("unstructured", model, x, criterion="wanda")
    with pytest.raises(ValueError, match="calibration"):
        make_space("nm", model, x, criterion="sparsegpt", calibration=[])
    with pytest.raises(ValueError, match="unknown weight criterion"):
        make_space("unstructured", model, x, criterion="l2")


def test_both_spaces_are_registered() -> None:
    assert {"unstructured", "nm"} <= set(SPACES)
    assert all(issubclass(SPACES[n], WeightSparsitySpace) for n in ("unstructured", "nm"))


def test_data_criteria_go_through_weight_masks_once_per_model(monkeypatch) -> None:
    """The hook for ``weight_masks.py`` (a stand-in here): statistics measured once per dense
    model, every layer pruned by ``prune_layer`` on its ``[out, in, *k]`` weight."""
    import sys
    import types

    calls = {"stats": 0, "prune": []}
    fake = types.ModuleType("autoprune.search_spaces.weight_masks")

    def layer_statistics(model, layers, batches, output, *, need_hessian=True):
        assert not need_hessian  # Wanda needs the input norms only
        calls["stats"] += 1
        return {name: f"stats of {name}" for name in layers}

    def prune_layer(weight, *, keep, nm, criterion, stats, transposed=None):
        assert transposed is False  # the space hands weights over as [out, in, *k]
        calls["prune"].append((tuple(weight.shape), keep, nm, criterion, stats))
        flat = weight.reshape(-1).clone()
        flat[keep:] = 0.0  # the first ``keep`` in storage order; SparseGPT would update them
        return flat.reshape(weight.shape) + 0.5 * (flat.reshape(weight.shape) != 0)

    fake.layer_statistics, fake.prune_layer = layer_statistics, prune_layer
    monkeypatch.setitem(sys.modules, "autoprune.search_spaces.weight_masks", fake)
    model, x = _gpt2()
    batches = [(torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8)))]
    space = make_space("unstructured", model, x, criterion="wanda", calibration=batches)
    assert space.criterion.name == "wanda" and space.criterion.needs_data
    config = space.min_config()
    first = space.apply(model, config)
    space.apply(model, config)
    assert calls["stats"] == 1  # cached for the same, unchanged model
    fc = "transformer.h.0.mlp.c_fc"
    assert ((128, 32), config[fc], None, "wanda", f"stats of {fc}") in calls["prune"]
    m = first.get_submodule(fc)
    assert int(mask_of(m).sum()) == config[fc]
    assert torch.allclose(m.weight.t().reshape(-1)[:config[fc]],
                          model.get_submodule(fc).weight.t().reshape(-1)[:config[fc]] + 0.5)
    with torch.no_grad():
        model.get_submodule(fc).weight.mul_(1.0)  # a changed model is measured again
    space.apply(model, config)
    assert calls["stats"] == 2


def test_deployable_leaves_the_masked_network_working() -> None:
    """Baking the masks of a copy must not break the masked original (a deep copy shares the
    parametrized class torch made, whose weight property removal would delete)."""
    model, x, space = _space("resnet20", "unstructured")
    masked = space.apply(model, space.decode(np.full(space.dim, 0.5)))
    plain = space.deployable(masked)
    with torch.no_grad():
        assert torch.allclose(masked(x), plain(x), atol=1e-6)
        masked(x)  # still runs after a second look
    assert space.deployable(masked) is not None
