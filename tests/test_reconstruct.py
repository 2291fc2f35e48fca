"""Least-squares reconstruction of the next layer (He et al., ICCV 2017), autoprune.reconstruct."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.reconstruct import _kept_rows, _positions, _select, reconstruct
from autoprune.search_spaces import make_space
from autoprune.zoo.models import build_model

EPS64 = torch.finfo(torch.float64).eps


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _linear_pair() -> tuple[nn.Module, nn.Module]:
    """Dense 8 -> 6 -> 3 (no nonlinearity) whose hidden unit 5 is 2*h0 - h1; the pruned copy
    drops unit 5 (row of the first layer, column of the second)."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 3)).double()
    with torch.no_grad():
        dense[0].weight[5] = 2 * dense[0].weight[0] - dense[0].weight[1]
        dense[0].bias[5] = 2 * dense[0].bias[0] - dense[0].bias[1]
        dense[1].weight[:, 5] = 3.0  # the removed unit matters
    pruned = nn.Sequential(nn.Linear(8, 5), nn.Linear(5, 3)).double()
    with torch.no_grad():
        pruned[0].weight.copy_(dense[0].weight[:5])
        pruned[0].bias.copy_(dense[0].bias[:5])
        pruned[1].weight.copy_(dense[1].weight[:, :5])
        pruned[1].bias.copy_(dense[1].bias)
    return dense, pruned


def test_linear_combination_is_recovered_exactly() -> None:
    dense, pruned = _linear_pair()
    frozen = copy.deepcopy(dense)
    batches = [torch.randn(32, 8, dtype=torch.float64) for _ in range(3)]
    report = reconstruct(pruned, dense, batches, ridge=0.0)
    assert report.model is pruned and _same(dense, frozen)
    (row,) = report.layers
    assert (row.name, row.kind, row.in_dense, row.in_pruned, row.refitted) == ("1", "Linear", 6, 5, True)
    tol = 1e4 * EPS64
    assert row.error_before > 0.1 and row.error_after < tol
    assert report.output_error_before > 0.1 and report.output_error_after < tol
    x = torch.randn(64, 8, dtype=torch.float64)  # exact off the calibration batches too
    with torch.no_grad():
        assert torch.allclose(pruned(x), dense(x), rtol=0, atol=tol * float(dense(x).abs().max()))
    want = dense[1].weight[:, :5].clone()
    want[:, 0] += 2 * 3.0
    want[:, 1] -= 3.0
    assert torch.allclose(pruned[1].weight, want, atol=tol)
    json.dumps(report.as_dict())
    assert "refitted" in report.table()


class _TwoInputs(nn.Module):
    """Called with a tuple of tensors; returns an HF-style mapping."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, hidden), nn.Linear(2, hidden)
        self.head = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(torch.tanh(self.a(x) + self.b(y)))}


def test_tuple_inputs_and_mapping_outputs() -> None:
    torch.manual_seed(1)
    dense = _TwoInputs(8)
    pruned = _TwoInputs(5)
    with torch.no_grad():
        for n in ("a", "b"):
            getattr(pruned, n).weight.copy_(getattr(dense, n).weight[:5])
            getattr(pruned, n).bias.copy_(getattr(dense, n).bias[:5])
        pruned.head.weight.copy_(dense.head.weight[:, :5])
        pruned.head.bias.copy_(dense.head.bias)
    batches = [(torch.randn(16, 3), torch.randn(16, 2)) for _ in range(2)]
    report = reconstruct(pruned, dense, batches)
    assert [r.name for r in report.layers] == ["head"]
    assert report.output_error_after <= report.output_error_before


@pytest.mark.parametrize("conv,shape", [
    (nn.Conv2d(6, 5, 3, stride=2, padding=1), (2, 6, 9, 7)),
    (nn.Conv2d(6, 5, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1),
               padding_mode="reflect", bias=False), (2, 6, 9, 7)),
    (nn.Conv1d(6, 5, 3, padding="same", dilation=2), (2, 6, 11)),
    (nn.Conv1d(6, 5, 3, stride=2, padding=1), (6, 11)),  # unbatched
])
def test_im2col_rows_match_the_convolution(conv: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(2)
    x = torch.randn(*shape)
    with torch.no_grad():
        out = conv(x)
        rows = _positions(conv, out)
        pick = torch.arange(rows.shape[0] * rows.shape[2])
        patches = _select(_positions(conv, x, patches=True), pick)
        got = patches @ conv.weight.reshape(5, -1).T
        if conv.bias is not None:
            got = got + conv.bias
    assert torch.allclose(got, _select(rows, pick), atol=1e-5)


def test_kept_output_channels_are_read_from_the_weights() -> None:
    torch.manual_seed(5)
    wd = torch.randn(12, 10, 3, 3)
    rows, cols = torch.tensor([0, 3, 4, 9, 11]), torch.tensor([1, 2, 5, 8])
    assert torch.equal(_kept_rows(wd[rows][:, cols], wd), rows)
    assert torch.equal(_kept_rows(wd[:, cols], wd), torch.arange(12))
    assert _kept_rows(torch.randn(5, 4, 3, 3), wd) is None  # not a slice: unknown


def test_strided_conv_refit_recovers_the_dense_weights() -> None:
    """Dropped channels are zero in the dense network, so the exact refit of the stride-2,
    padding-1 consumer is the dense weights restricted to the kept channels."""
    torch.manual_seed(3)
    dense = nn.Sequential(nn.Conv2d(5, 6, 1), nn.Conv2d(6, 5, 3, stride=2, padding=1)).double()
    with torch.no_grad():
        dense[0].weight[4:] = 0
        dense[0].bias[4:] = 0
    pruned = nn.Sequential(nn.Conv2d(5, 4, 1), nn.Conv2d(4, 5, 3, stride=2, padding=1)).double()
    with torch.no_grad():
        pruned[0].weight.copy_(dense[0].weight[:4])
        pruned[0].bias.copy_(dense[0].bias[:4])  # the consumer keeps its random weights
    batches = [torch.randn(4, 5, 10, 10, dtype=torch.float64) for _ in range(2)]
    report = reconstruct(pruned, dense, batches, ridge=0.0)
    (row,) = report.layers
    assert row.refitted and row.error_before > 0.5 and row.error_after < 1e4 * EPS64
    tol = 1e6 * EPS64
    assert torch.allclose(pruned[1].weight, dense[1].weight[:, :4], atol=tol)
    assert torch.allclose(pruned[1].bias, dense[1].bias, atol=tol)
    x = torch.randn(2, 5, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        want = F.conv2d(pruned[0](x), dense[1].weight[:, :4], dense[1].bias, stride=2, padding=1)
        assert torch.allclose(pruned(x), want, atol=tol)


def test_resnet20_half_channels() -> None:
    torch.manual_seed(4)
    dense = build_model("resnet20", input_size=16)
    for m in dense.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: statistics of random inputs
    with torch.no_grad():
        for _ in range(3):
            dense(torch.randn(16, 3, 16, 16))
    dense.eval()
    example = torch.randn(2, 3, 16, 16)
    space = make_space("channel", dense, example, round_to=8, min_ratio=0.2)
    config = {u.name: min(u.choices, key=lambda c: abs(c - u.full / 2)) for u in space.units}
    pruned = space.apply(dense, config)
    dense.train()  # modes are restored, and BN statistics left alone
    frozen = copy.deepcopy(dense)
    batches = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    report = reconstruct(pruned, dense, batches, max_rows=1024)
    assert dense.training and not pruned.training and _same(dense, frozen)
    assert all(m.training for m in dense.modules())
    refitted = [r for r in report.layers if r.refitted]
    assert len(refitted) >= 5 and "fc" in report.refitted
    assert all(r.error_after <= r.error_before for r in refitted)
    assert any(r.error_after < 0.99 * r.error_before for r in refitted)
    assert all(r.in_pruned < r.in_dense for r in report.layers)
    for r in report.layers:
        assert r.refitted or r.reason, r
    assert any(r.kind == "BatchNorm2d" and "not a linear" in r.reason for r in report.layers)
    assert report.output_error_after < report.output_error_before
    with torch.no_grad():  # the network's output error, measured here directly
        num = sum(float((dense.eval()(b) - pruned(b)).pow(2).sum()) for b in batches)
        den = sum(float(dense(b).pow(2).sum()) for b in batches)
    assert (num / den) ** 0.5 == pytest.approx(report.output_error_after, rel=1e-4)
    print(report.table())


def test_errors() -> None:
    dense, pruned = _linear_pair()
    with pytest.raises(ValueError, match="calibration batches"):
        reconstruct(pruned, dense, [])
    other = nn.Sequential()
    other.add_module("head", nn.Linear(8, 3))
    with pytest.raises(ValueError, match="no layer in common"):
        reconstruct(other, dense, [torch.randn(2, 8, dtype=torch.float64)])
