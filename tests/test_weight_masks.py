"""Weight masks: exact counts, Wanda's activation-weighted ranking, SparseGPT's reconstruction,
the conv column order shared by the statistics and the masks, and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.weight_masks import (CRITERIA_NEEDING_DATA, WEIGHT_CRITERIA, LayerStats,
                                        layer_statistics, prune_layer)


def _hf_conv1d():
    try:
        import transformers.pytorch_utils as pu  # noqa: PLC0415 - optional
    except Exception:  # noqa: BLE001 - any import failure skips
        pytest.skip("transformers does not import")
    return pu.Conv1D


class Wrap(nn.Module):
    def __init__(self, layer: nn.Module, pre: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = pre or nn.Identity()
        self.layer = layer

    def forward(self, x):
        return self.layer(self.pre(x))


def _correlated(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d)[:, None]
    return torch.randn(n, d, generator=g) @ mix + 0.3 * torch.randn(d, generator=g)


def _images(n: int, c: int, hw: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, c, hw, hw, generator=g)
    mix = torch.randn(c, c, generator=g)
    x = torch.einsum("dc,nchw->ndhw", mix, F.avg_pool2d(raw, 3, 1, 1))
    return x + 0.5


def _stats(layer: nn.Module, x: torch.Tensor, **kw) -> LayerStats:
    return layer_statistics(Wrap(layer), ["layer"], [(x, None)], **kw)["layer"]


def _nonzero_per_group(w: torch.Tensor, m: int, transposed: bool = False) -> torch.Tensor:
    """Non-zeros in every group of m consecutive weights along the input dimension."""
    if transposed:
        w = w.T
    w = w.movedim(1, -1)  # [out, *k, in]
    return (w != 0).reshape(*w.shape[:-1], -1, m).sum(-1)


def test_constants():
    assert WEIGHT_CRITERIA == ("magnitude", "wanda", "sparsegpt")
    assert CRITERIA_NEEDING_DATA == {"wanda", "sparsegpt"}


CASES = [
    ("linear", lambda: nn.Linear(16, 12), (40, 16)),
    ("conv", lambda: nn.Conv2d(8, 6, 3, padding=1), (4, 8, 6, 6)),
    ("grouped", lambda: nn.Conv2d(8, 6, 3, padding=1, groups=2), (4, 8, 6, 6)),
    ("conv1d", lambda: nn.Conv1d(8, 5, 3, stride=2, dilation=2), (3, 8, 20)),
    ("depthwise", lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6), (4, 6, 6, 6)),
]


@pytest.mark.parametrize("criterion", WEIGHT_CRITERIA)
@pytest.mark.parametrize("name,make,shape", CASES, ids=[c[0] for c in CASES])
def test_exact_counts(name, make, shape, criterion):
    torch.manual_seed(0)
    layer = make()
    stats = _stats(layer, torch.randn(*shape))
    w = layer.weight.detach()
    for keep in (0, 1, w.numel() // 2 + 3, w.numel() - 1, w.numel()):
        out = prune_layer(layer.weight, keep=keep, nm=None, criterion=criterion, stats=stats)
        assert out.shape == w.shape and out.dtype == w.dtype
        assert int((out != 0).sum()) == keep
        kept = out != 0
        if criterion != "sparsegpt":
            assert torch.equal(out[kept], w[kept])  # masks only
    if name == "depthwise":
        with pytest.raises(ValueError, match="not divisible by M=4"):
            prune_layer(w, keep=None, nm=(2, 4), criterion=criterion, stats=stats)
        return
    for n, m in ((2, 4), (1, 4), (4, 4), (0, 4)):
        out = prune_layer(w, keep=None, nm=(n, m), criterion=criterion, stats=stats)
        assert bool((_nonzero_per_group(out, m) == n).all()), (n, m)


@pytest.mark.parametrize("criterion", WEIGHT_CRITERIA)
def test_exact_counts_hf_conv1d(criterion):
    conv1d = _hf_conv1d()
    torch.manual_seed(0)
    layer = conv1d(12, 16)  # nf=12 outputs, nx=16 inputs: weight [16, 12]
    nn.init.normal_(layer.weight)
    x = torch.randn(3, 5, 16)
    stats = _stats(layer, x)
    assert stats.transposed and stats.norms.shape == (16,) and stats.hessian.shape == (16, 16)
    w = layer.weight.detach()
    out = prune_layer(w, keep=77, nm=None, criterion=criterion, stats=stats)
    assert int((out != 0).sum()) == 77
    out = prune_layer(w, keep=None, nm=(2, 4), criterion=criterion, stats=stats)
    assert bool((_nonzero_per_group(out, 4, transposed=True) == 2).all())
    same = prune_layer(w.T, keep=None, nm=(2, 4), criterion=criterion, stats=stats,
                       transposed=False)  # already turned to [out, in]
    assert torch.allclose(same.T, out)
    with pytest.raises(ValueError, match="pass transposed=False"):
        prune_layer(w.T, keep=77, nm=None, criterion=criterion, stats=stats)
    if criterion == "wanda":  # per output row (a column of the stored weight): equal shares
        out = prune_layer(w, keep=12 * 8, nm=None, criterion=criterion, stats=stats)
        assert (out != 0).sum(0).tolist() == [8] * 12


def test_layer_statistics_values_and_modes():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), lin).train()
    xs = [torch.randn(7, 5), torch.randn(4, 2, 5)]
    stats = layer_statistics(model, ["2"], [(x, None) for x in xs])["2"]
    assert model.training and all(m.training for m in model.modules())
    with torch.no_grad():
        feats = torch.cat([torch.relu(model[0](x)).reshape(-1, 6) for x in xs]).double()
    assert stats.rows == 15 and stats.groups == 1
    assert torch.allclose(stats.norms, feats.norm(dim=0))
    assert torch.allclose(stats.hessian, feats.T @ feats / 15)
    assert stats.norms.dtype == stats.hessian.dtype == torch.float64
    assert layer_statistics(model, ["2"], [(xs[0], None)], need_hessian=False)["2"].hessian is None


def test_conv_statistics_unfold_grouped_and_sampling():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    x = torch.randn(2, 4, 9, 9)
    stats = _stats(conv, x)
    cols = F.unfold(x.double(), 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 36)
    assert stats.rows == cols.shape[0] == 2 * 25 and stats.groups == 2 and stats.cols == 18
    assert torch.allclose(stats.norms, cols.norm(dim=0))
    assert stats.hessian.shape == (2, 18, 18)
    for g in range(2):
        part = cols[:, g * 18:(g + 1) * 18]
        assert torch.allclose(stats.hessian[g], part.T @ part / 50)
    # at most max_positions per batch, seeded
    a = _stats(conv, x, max_positions=16)
    b = _stats(conv, x, max_positions=16)
    assert a.rows == 16 and torch.equal(a.norms, b.norms)
    assert torch.allclose(a.norms.pow(2), a.hessian.diagonal(dim1=1, dim2=2).reshape(-1) * 16)


def test_tuple_inputs_and_named_output():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)

        def forward(self, x, y):
            return {"logits": self.a(x) + y}

    model = Two()
    batch = ((torch.randn(5, 3), torch.randn(5, 4)), None)
    stats = layer_statistics(model, ["a"], [batch], output="logits")["a"]
    assert stats.rows == 5
    with pytest.raises(Exception, match="logits"):
        layer_statistics(model, ["a"], [batch], output="nope")


def test_wanda_keeps_small_weights_of_a_loud_input():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, 1.0, 0.9, 0.8], [0.2, 0.7, 1.0, 0.6]]))
    x = torch.randn(64, 4) * torch.tensor([100.0, 1.0, 1.0, 0.0])  # column 3 silent
    stats = _stats(layer, x, need_hessian=False)
    w = layer.weight
    wanda = prune_layer(w, keep=4, nm=None, criterion="wanda", stats=stats)
    magnitude = prune_layer(w, keep=4, nm=None, criterion="magnitude", stats=None)
    assert bool((wanda[:, 0] != 0).all()) and bool((wanda[:, 3] == 0).all())
    assert bool((magnitude[:, 0] == 0).all())
    nm = prune_layer(w, keep=None, nm=(2, 4), criterion="wanda", stats=stats)
    assert bool((nm[:, 0] != 0).all()) and bool((nm[:, 3] == 0).all())


def test_conv_column_order_silent_channel():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.rand(3, 4, 7, 7) + 0.1
    x[:, 0] = 0.0  # input channel 0 is silent
    stats = _stats(conv, x)
    assert bool((stats.norms[:9] == 0).all()) and bool((stats.norms[9:] > 0).all())
    w = conv.weight.detach()
    out = prune_layer(w, keep=8 * 27, nm=None, criterion="wanda", stats=stats)
    assert bool((out[:, 0] == 0).all()) and bool((out[:, 1:] != 0).all())
    out = prune_layer(w, keep=8 * 27, nm=None, criterion="sparsegpt", stats=stats)
    assert bool((out[:, 0] == 0).all()) and int((out != 0).sum()) == 8 * 27
    out = prune_layer(w, keep=None, nm=(3, 4), criterion="wanda", stats=stats)
    assert bool((out[:, 0] == 0).all()) and bool((out[:, 1:] != 0).all())


def _err(apply, w_old, w_new) -> float:
    return float((apply(w_old) - apply(w_new)).norm())


def test_sparsegpt_reconstructs_linear_best():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    x = _correlated(1024, 64, seed=1)
    stats = _stats(layer, x)
    w = layer.weight.detach()

    def apply(v):
        return x.double() @ v.double().T

    for keep, nm in ((w.numel() // 2, None), (None, (2, 4))):
        errs = {c: _err(apply, w, prune_layer(w, keep=keep, nm=nm, criterion=c, stats=stats))
                for c in WEIGHT_CRITERIA}
        assert errs["sparsegpt"] < 0.9 * min(errs["magnitude"], errs["wanda"]), (nm, errs)


@pytest.mark.parametrize("groups", [1, 2])
def test_sparsegpt_reconstructs_conv_best(groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=groups)
    x = _images(16, 8, 8, seed=2)
    stats = _stats(conv, x)
    w = conv.weight.detach()

    def apply(v):
        return F.conv2d(x.double(), v.double(), None, 1, 1, 1, groups)

    for keep, nm in ((w.numel() // 2, None), (None, (2, 4))):
        errs = {c: _err(apply, w, prune_layer(w, keep=keep, nm=nm, criterion=c, stats=stats))
                for c in WEIGHT_CRITERIA}
        assert errs["sparsegpt"] < 0.9 * min(errs["magnitude"], errs["wanda"]), (nm, errs)


@pytest.mark.parametrize("groups", [1, 2])
def test_sparsegpt_factors_a_hessian_once_for_all_its_levels(groups, monkeypatch):
    """A layer's levels are pruned one after another: its Hessian is factored once, and each
    level is what factoring afresh gives, bit for bit."""
    import search_spaces.weight_masks as wm  # noqa: PLC0415

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1, groups=groups)
    stats = _stats(conv, _images(16, 8, 8, seed=2))
    w = conv.weight.detach()
    levels = [dict(keep=w.numel() * k // 8, nm=None) for k in (2, 4, 6)] + \
        [dict(keep=None, nm=(2, 4)), dict(keep=None, nm=(1, 4))]
    fresh = []
    for level in levels:
        wm._LAST[:] = [None, None]
        fresh.append(prune_layer(w, criterion="sparsegpt", stats=stats, **level))
    calls = []
    factors = wm._factors
    monkeypatch.setattr(wm, "_factors", lambda h: calls.append(1) or factors(h))
    wm._LAST[:] = [None, None]
    kept = [prune_layer(w, criterion="sparsegpt", stats=stats, **level) for level in levels]
    assert all(torch.equal(a, b) for a, b in zip(fresh, kept))
    # one factorization per group for the unstructured levels and one for the N:M ones
    # (whose columns are permuted), not one per level
    assert len(calls) == 2 * groups
    del stats
    import gc  # noqa: PLC0415

    gc.collect()
    assert wm._LAST == [None, None]  # not held past the Hessian's life


class _Shared(nn.Module):
    """Three linears on one input (a block's q, k, v), one called twice on another input."""

    def __init__(self, twice: bool) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(6, 4), nn.Linear(6, 3), nn.Linear(6, 5)
        self.twice = twice

    def forward(self, x):
        y = self.q(x).sum(-1) + self.k(x).sum(-1) + self.v(x).sum(-1)
        if self.twice:  # (k reads a second input: it no longer shares q's)
            y = y + self.k(x * 2).sum(-1)
        return y


@pytest.mark.parametrize("twice", [False, True])
def test_layers_reading_one_input_share_its_statistics(twice):
    torch.manual_seed(0)
    model = _Shared(twice)
    batches = [(torch.randn(7, 6), None), (torch.randn(5, 6), None)]
    stats = layer_statistics(model, ["q", "k", "v"], batches)
    alone = {}
    for n in ("q", "k", "v"):  # measured one layer at a time: nothing to share
        alone[n] = layer_statistics(model, [n], batches)[n]
        assert torch.equal(stats[n].hessian, alone[n].hessian), n
        assert torch.equal(stats[n].norms, alone[n].norms) and stats[n].rows == alone[n].rows
    # one Hessian for the three; a layer that reads another input too makes the pass
    # measure every layer apart
    assert (stats["v"].hessian is stats["q"].hessian) is (not twice)
    assert (stats["k"].hessian is stats["q"].hessian) is (not twice)


def test_errors():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    x = torch.randn(10, 6)
    stats = _stats(layer, x)
    w = layer.weight.detach()
    with pytest.raises(ValueError, match="Fix: pass stats=layer_statistics"):
        prune_layer(w, keep=3, nm=None, criterion="wanda", stats=None)
    with pytest.raises(ValueError, match="Fix: pass stats=layer_statistics"):
        prune_layer(w, keep=3, nm=None, criterion="sparsegpt", stats=None)
    with pytest.raises(ValueError, match="need_hessian=True"):
        prune_layer(w, keep=3, nm=None, criterion="sparsegpt",
                    stats=_stats(layer, x, need_hessian=False))
    with pytest.raises(ValueError, match="unknown weight criterion 'l1'.*magnitude, wanda"):
        prune_layer(w, keep=3, nm=None, criterion="l1", stats=stats)
    with pytest.raises(ValueError, match="exactly one of keep="):
        prune_layer(w, keep=3, nm=(2, 4), criterion="magnitude", stats=None)
    with pytest.raises(ValueError, match="exactly one of keep="):
        prune_layer(w, keep=None, nm=None, criterion="magnitude", stats=None)
    for keep in (-1, 25):
        with pytest.raises(ValueError, match="out of range.*0 <= keep <= 24"):
            prune_layer(w, keep=keep, nm=None, criterion="magnitude", stats=None)
    with pytest.raises(ValueError, match=r"input dimension \(6\) is not divisible by M=4"):
        prune_layer(w, keep=None, nm=(2, 4), criterion="wanda", stats=stats)
    with pytest.raises(ValueError, match="not an N:M pattern"):
        prune_layer(w, keep=None, nm=(3, 2), criterion="magnitude", stats=None)
    other = _stats(nn.Linear(8, 4), torch.randn(10, 8))
    with pytest.raises(ValueError, match="stats were measured on a weight of shape"):
        prune_layer(w, keep=3, nm=None, criterion="wanda", stats=other)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU())
    with pytest.raises(ValueError, match="no layer named 'x'"):
        layer_statistics(model, ["x"], [(x, None)])
    with pytest.raises(ValueError, match="ReLU.*Fix: leave it out"):
        layer_statistics(model, ["1"], [(x, None)])
    with pytest.raises(ValueError, match="needs calibration batches"):
        layer_statistics(model, ["0"], [])
    branchy = nn.ModuleDict({"used": nn.Linear(6, 4), "unused": nn.Linear(6, 4)})
    branchy.forward = lambda x: branchy["used"](x)
    with pytest.raises(ValueError, match="'unused' was not called"):
        layer_statistics(branchy, ["used", "unused"], [(x, None)])
