"""sparsity= and size= budgets, the weights and size_bytes cost models, and the compressed file
(save_sparse / load_sparse) against what SizeCost predicts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from autoprune.costs import SizeCost, WeightsCost, get_cost_model, sparse_weight_bytes
from autoprune.problem import build_problem
from autoprune.search_spaces import LayerRow, SearchSpace, Unit, make_space
from autoprune.sparse_io import buffer_bytes, load_sparse, plain_state_dict, save_sparse
from autoprune.targets import TargetError, parse_target, parse_targets, resolve_budgets


# ---------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, kept", [
    ("sparsity=80%", 0.2), ("sparsity=0.8", 0.2), ("SPARSITY = 95%", 0.05),
    ("sparsity=0", 1.0), ("sparsity=0%", 1.0), ("sparsity=99.5%", 0.005),
])
def test_sparsity_is_a_relative_budget_on_weights(text: str, kept: float) -> None:
    t = parse_target(text)
    assert (t.metric, t.relative) == ("weights", True)
    assert t.value == pytest.approx(kept)


@pytest.mark.parametrize("text, nbytes", [
    ("size=300B", 300), ("size=2kB", 2e3), ("size=2KB", 2e3), ("size=2MB", 2e6),
    ("size=1.5GB", 1.5e9), ("size=2KiB", 2048), ("size=2MiB", 2 * 2**20),
    ("size=1GiB", 2**30), ("size = 0.5 MB", 5e5),
])
def test_size_units(text: str, nbytes: float) -> None:
    t = parse_target(text)
    assert (t.metric, t.relative) == ("size_bytes", False)
    assert t.value == pytest.approx(nbytes)


def test_size_percent_is_of_the_dense_model() -> None:
    t = parse_target("size=50%")
    assert (t.metric, t.relative, t.value) == ("size_bytes", True, 0.5)


@pytest.mark.parametrize("text, hint", [
    ("sparsity=100%", r"\[0, 100%\)"),
    ("sparsity=1", "fraction of 1 or more"),
    ("sparsity=80", r"sparsity=80%\?"),
    ("sparsity=-5%", r"\[0, 100%\)"),
    ("sparsity=lots", "cannot read the sparsity"),
    ("sparsity=80MB", "cannot read the sparsity"),
    ("size=2", "has no unit"),
    ("size=2Mx", "unknown unit"),
    ("size=0MB", "must be positive"),
    ("size=-1kB", "must be positive"),
    ("size=150%", "more than the dense"),
    ("size=big", "cannot read the size"),
])
def test_bad_sparse_targets_get_one_clear_error(text: str, hint: str) -> None:
    with pytest.raises(TargetError, match=hint):
        parse_target(text)


def test_sparsity_and_size_together_with_flops() -> None:
    assert [t.metric for t in parse_targets("sparsity=80%,size=1MB,flops=50%")] == \
        ["weights", "size_bytes", "macs"]


def test_unreachable_sparse_budgets_name_the_smallest_reachable() -> None:
    dense, smallest = {"weights": 1000.0, "size_bytes": 4000.0}, {"weights": 20.0,
                                                                 "size_bytes": 400.0}
    budgets = resolve_budgets(parse_targets("sparsity=80%,size=50%"), dense, smallest)
    assert [(b.metric, b.limit) for b in budgets] == [("weights", pytest.approx(200.0)),
                                                      ("size_bytes", 2000.0)]
    with pytest.raises(TargetError, match=r"keeps 20 of the 1,000 .*sparsity 98.0%"):
        resolve_budgets(parse_targets("sparsity=99%"), dense, smallest)
    with pytest.raises(TargetError, match=r"costs 400 bytes \(10.0% of the dense 4,000 bytes"):
        resolve_budgets(parse_targets("size=200B"), dense, smallest)


# ---------------------------------------------------------------------- cost models
def _tiny_table(nonzero: int) -> tuple[LayerRow, ...]:
    """A conv weight [4, 2, 3, 3] (72 elements, 4 rows of 18) with ``nonzero`` kept and a bias
    of 4, a BatchNorm of 4 channels, a linear layer of 20 parameters with no weight fields, and
    a second call of the conv (its parameters counted on the first)."""
    conv = LayerRow(name="conv", kind="conv", in_channels=2, out_channels=4, kernel=(3, 3),
                    bias=True, params=nonzero + 4, weight_elements=72, weight_nonzero=nonzero,
                    weight_rows=4)
    return (conv,
            LayerRow(name="bn", kind="norm", in_channels=4, out_channels=4, params=8),
            LayerRow(name="fc", kind="linear", in_channels=4, out_channels=4, params=20),
            LayerRow(name="conv#2", kind="conv", in_channels=2, out_channels=4, call=1,
                     params=0, weight_elements=72, weight_nonzero=nonzero, weight_rows=4))


def test_weights_and_size_by_hand() -> None:
    table = _tiny_table(5)
    assert WeightsCost().estimate(table) == 5
    # everything but the conv weight: conv bias 4*4 + bn 8*4 + fc 20*4 + bn stats 4*8 + 8
    rest = 16 + 32 + 80 + 40
    assert SizeCost("dense").estimate(table) == 72 * 4 + rest == 456
    # bitmap: ceil(72 / 8) = 9 mask bytes + 5 values * 4
    assert SizeCost("bitmap").estimate(table) == 9 + 20 + rest == 197
    # csr: 5 values * 4; 5 column indices of ceil(log2 18) = 5 bits, 4 + 1 row pointers of
    # ceil(log2 6) = 3 bits: 40 bits = 5 bytes
    assert SizeCost("csr").estimate(table) == 20 + 5 + rest == 193
    assert SizeCost("csr", buffer_bytes=0).estimate(table) == 193 - 40
    assert SizeCost("csr", buffer_bytes=7).estimate(table) == 193 - 40 + 7
    # a dense weight is stored dense in every format: the dense model's size
    for fmt in ("dense", "bitmap", "csr"):
        assert SizeCost(fmt).estimate(_tiny_table(72)) == 456
    # sizes grow with what is kept (repair bisects on them)
    for fmt in ("bitmap", "csr"):
        sizes = [SizeCost(fmt).estimate(_tiny_table(k)) for k in range(73)]
        assert sizes == sorted(sizes)


def test_csr_bit_widths() -> None:
    assert sparse_weight_bytes(72, 0, 4, "csr") == 0
    assert sparse_weight_bytes(72, 1, 4, "csr") == 4 + 2  # 5 + 5 * 1 bits
    assert sparse_weight_bytes(4, 4, 4, "csr") == 16 + 2  # cols 1: no column bits; 5 * 3 bits
    assert sparse_weight_bytes(9, 0, 1, "bitmap") == 2
    with pytest.raises(ValueError, match="unknown storage format 'zip'"):
        SizeCost("zip")


def test_registered_cost_models() -> None:
    assert isinstance(get_cost_model("weights"), WeightsCost)
    size = get_cost_model("size_bytes")
    assert isinstance(size, SizeCost) and size.storage_format == "bitmap"


# ---------------------------------------------------------------------- problems
class _TwoWeights(SearchSpace):
    """A hand-made weight-granularity space: two weights, each keeping one of a few counts."""

    name = "two-weights"
    shapes = ((64, 288), (10, 1024))  # (rows, cols) of each pruned weight
    levels = (0.02, 0.1, 0.3, 0.6, 1.0)

    def __init__(self) -> None:
        self.units = [Unit(name=f"w{i}", full=r * c,
                           choices=tuple(int(round(f * r * c)) for f in self.levels),
                           members=(f"w{i}",), kind="weights")
                      for i, (r, c) in enumerate(self.shapes)]

    @classmethod
    def from_model(cls, model: nn.Module, example_inputs: Any, **_: Any) -> SearchSpace:
        return cls()

    @property
    def dim(self) -> int:
        return len(self.units)

    def decode(self, x: Sequence[float]) -> Mapping[str, int]:
        n = len(self.levels)
        return {u.name: u.choices[min(n - 1, int(float(v) * n))] for u, v in zip(self.units, x)}

    def encode(self, config: Mapping[str, int]) -> np.ndarray:
        n = len(self.levels)
        return np.array([(u.choices.index(config[u.name]) + 0.5) / n for u in self.units])

    def dense_config(self) -> Mapping[str, int]:
        return {u.name: u.full for u in self.units}

    def layer_table(self, config: Mapping[str, int]) -> tuple[LayerRow, ...]:
        return tuple(LayerRow(name=u.name, kind="linear", in_channels=c, out_channels=r,
                              params=config[u.name] + r, macs=config[u.name], bias=True,
                              weight_elements=r * c, weight_nonzero=config[u.name],
                              weight_rows=r, dense_macs=r * c)
                     for u, (r, c) in zip(self.units, self.shapes))

    def apply(self, model: nn.Module, config: Mapping[str, int]) -> nn.Module:
        raise NotImplementedError


def test_sparsity_and_size_budgets_over_a_weight_space() -> None:
    space = _TwoWeights()
    elements = sum(r * c for r, c in space.shapes)
    problem = build_problem(space, parse_targets("sparsity=80%"))
    (budget,) = problem.budgets
    assert (budget.metric, budget.limit) == ("weights", pytest.approx(0.2 * elements))
    x = problem.repair(np.ones(space.dim))
    assert problem.costs(space.decode(x))["weights"] <= 0.2 * elements
    with pytest.raises(TargetError, match="sparsest configuration"):
        build_problem(space, parse_targets("sparsity=99.5%"))
    dense_bytes = 4 * (elements + 64 + 10)
    for fmt in ("bitmap", "csr"):
        problem = build_problem(space, parse_targets("size=50%"), storage_format=fmt)
        assert problem.cost_models["size_bytes"].storage_format == fmt
        assert problem.budgets[0].limit == pytest.approx(0.5 * dense_bytes)
        x = problem.repair(np.full(space.dim, 0.5))
        assert problem.costs(space.decode(x))["size_bytes"] <= 0.5 * dense_bytes
    with pytest.raises(TargetError, match=r"100.0% of the dense .*more compact storage format"):
        build_problem(space, parse_targets("size=50%"), storage_format="dense")


def test_sparse_targets_on_the_channel_space_are_one_clear_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    space = make_space("channel", model, torch.randn(1, 3, 8, 8), round_to=4)
    for text in ("sparsity=80%", "size=1kB", "flops=50%,size=40%"):
        with pytest.raises(TargetError, match=r"sparsity= and size= budget single weights: use "
                                              r"--granularity unstructured or nm"):
            build_problem(space, parse_targets(text))
    assert build_problem(space, parse_targets("flops=50%")).budgets[0].metric == "macs"


# ---------------------------------------------------------------------- the file
class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                        nn.ReLU(), nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(),
                        nn.Linear(256, 10))
    with torch.no_grad():  # running statistics of their own, so the file holds real buffers
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.num_batches_tracked.fill_(7)
    return net.eval()


def _masked(net: nn.Module, sparsity: float) -> nn.Module:
    """``net`` with each conv/linear weight's smallest ``sparsity`` masked out."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().abs().reshape(-1)
            keep = max(1, int(round((1 - sparsity) * w.numel())))
            mask = torch.zeros_like(w)
            mask[torch.topk(w, keep).indices] = 1.0
            parametrize.register_parametrization(m, "weight", _Mask(mask.reshape(m.weight.shape)))
    return net


def _table(net: nn.Module) -> tuple[LayerRow, ...]:
    """The layer table a weight-granularity space would give for ``net``."""
    rows = []
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight
            nonzero = int(torch.count_nonzero(w))
            bias = m.bias.numel() if m.bias is not None else 0
            rows.append(LayerRow(name=name, kind="conv" if w.dim() == 4 else "linear",
                                 in_channels=w.shape[1], out_channels=w.shape[0],
                                 params=nonzero + bias, weight_elements=w.numel(),
                                 weight_nonzero=nonzero, weight_rows=w.shape[0]))
        elif isinstance(m, nn.BatchNorm2d):
            rows.append(LayerRow(name=name, kind="norm", in_channels=m.num_features,
                                 out_channels=m.num_features, params=2 * m.num_features))
    return tuple(rows)


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.95])
def test_file_size_is_what_size_predicts(sparsity: float, tmp_path: Any) -> None:
    net = _masked(_net(), sparsity)
    table = _table(net)
    assert buffer_bytes(net) == (32 * 8 + 8) + (64 * 8 + 8)  # what SizeCost counts per norm
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = net(x)
    for fmt in ("dense", "bitmap", "csr"):
        path = tmp_path / f"{fmt}.pt"
        predicted = SizeCost(fmt).estimate(table)
        written = save_sparse(net, path, storage_format=fmt)
        assert written == path.stat().st_size
        blob = torch.load(path, weights_only=True)
        payload = (blob["values"].nbytes + blob["index"].nbytes
                   + sum(t.nbytes for t in blob["dense"].values()))
        assert payload == predicted, fmt
        assert abs(written - predicted) <= 0.03 * predicted, (fmt, written, predicted)
        plain = _net()
        plain.load_state_dict(load_sparse(path))
        with torch.no_grad():
            assert torch.equal(plain(x), want), fmt
    assert all(parametrize.is_parametrized(net[i], "weight") for i in (0, 3, 7, 9))  # untouched


def test_plain_model_with_zeros_and_baked_names() -> None:
    net = _masked(_net(), 0.9)
    state = plain_state_dict(net)
    assert "0.weight" in state and not any("parametrizations" in k for k in state)
    assert set(state) == set(_net().state_dict())
    plain = _net()
    plain.load_state_dict(state)
    assert torch.equal(plain[0].weight, net[0].weight)


def test_plain_zeroed_model_round_trips(tmp_path: Any) -> None:
    net = _net()
    with torch.no_grad():
        net[7].weight[:, ::3] = 0  # a third of the big weight zero, no parametrization
    path = tmp_path / "plain.pt"
    save_sparse(net, path, storage_format="csr")
    blob = torch.load(path, weights_only=True)
    assert blob["values"].numel() == int(torch.count_nonzero(net[7].weight))  # stored sparse
    state = load_sparse(path)
    for k, v in net.state_dict().items():
        assert torch.equal(state[k], v) and state[k].dtype == v.dtype, k
