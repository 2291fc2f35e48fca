"""Top-k masks from a sort of the values alone equal the first k of a stable descending sort."""

import pytest
import torch

from autoprune.search_spaces.ranks import RowRanks, top_flat


def _stable_rows(scores, counts):
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    positions = torch.arange(scores.shape[1])[None]
    return mask.scatter_(1, order, positions < counts[:, None])


def _stable_flat(scores, keep):
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.sort(-flat, stable=True).indices[:keep]] = True
    return mask.reshape(scores.shape)


def _scores(kind, dtype, shape=(37, 64)):
    g = torch.Generator().manual_seed(3)
    if kind == "ties":  # few distinct values: most ranks are decided by the index
        s = torch.randint(0, 4, shape, generator=g).to(dtype)
    elif kind == "zeros":  # a layer pruned before: a run of zero scores in every row
        s = torch.rand(shape, generator=g).to(dtype)
        s[:, ::3] = 0
        s[5] = -0.0
    else:
        s = torch.rand(shape, generator=g).to(dtype)
    return s


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["distinct", "ties", "zeros"])
def test_row_masks_are_the_stable_sorts_first_counts(kind, dtype):
    scores = _scores(kind, dtype)
    ranks = RowRanks(scores)
    rows, cols = scores.shape
    g = torch.Generator().manual_seed(1)
    for counts in (torch.zeros(rows, dtype=torch.long), torch.full((rows,), cols),
                   torch.randint(0, cols + 1, (rows,), generator=g), torch.full((rows,), 7)):
        assert torch.equal(ranks.mask(counts), _stable_rows(scores, counts))
    desc = torch.sort(scores, dim=1, descending=True).values
    for rank in (0, 5, cols - 1):
        assert torch.equal(ranks.at(rank).to(scores.dtype), desc[:, rank])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["distinct", "ties", "zeros"])
def test_flat_masks_are_the_stable_sorts_first_keep(kind, dtype):
    scores = _scores(kind, dtype, (9, 4, 3, 3))
    keeps = [0, 1, 17, 100, scores.numel() - 1, scores.numel()]
    for keep, mask in top_flat(scores, keeps).items():
        assert torch.equal(mask, _stable_flat(scores, keep)), keep


def test_nan_scores_take_the_sort():
    scores = _scores("distinct", torch.float64)
    scores[2, 4] = float("nan")
    counts = torch.full((scores.shape[0],), 10)
    assert torch.equal(RowRanks(scores).mask(counts), _stable_rows(scores, counts))
    assert torch.equal(top_flat(scores, [50])[50], _stable_flat(scores, 50))
