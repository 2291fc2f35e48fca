"""Top-``k`` masks without ranking every weight: the first ``k`` of a stable descending sort.

A level store keeps, for every layer and level, the weights a criterion ranks highest: Wanda
the ``k`` best of each row, magnitude the ``k`` best of the layer, ties to the lower index (what
``torch.sort(..., descending=True, stable=True)`` puts first). Ranking them with that sort cost
most of a 1.1B decoder's level store: a stable sort of 2048 doubles per row runs at 0.8 s for a
5632 x 2048 layer on this CPU. Only each level's threshold is needed, though: NumPy's sort of the
values alone (vectorised, 0.1 s for the same layer) gives it, and then a weight is kept when it
scores above the threshold, or at it and among the first of the ties by index. That is the same
mask, bit for bit. Scores holding NaN, or on another device than the CPU, take the sort.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["RowRanks", "top_flat"]

#: dtypes NumPy sorts as they are; others (bfloat16, float16) are widened to float32 first,
#: which keeps every value and every order
_NUMPY = (torch.float32, torch.float64)


def _plain(scores: torch.Tensor) -> bool:
    return scores.device.type == "cpu" and not bool(torch.isnan(scores).any())


def _ascending(scores: torch.Tensor, axis: int) -> np.ndarray:
    a = scores.detach()
    if a.dtype not in _NUMPY:
        a = a.float()
    return np.sort(a.numpy(), axis=axis)


class RowRanks:
    """The ``counts[r]`` highest ``scores`` of each row ``r`` (``[rows, cols]``), ties to the
    lower column, for as many ``counts`` as asked: one sort of the values for them all."""

    def __init__(self, scores: torch.Tensor) -> None:
        self.scores = scores
        self._fast = _plain(scores)
        if self._fast:
            self._asc = _ascending(scores, 1)
            self._order = None
        else:
            self._asc = None
            self._order = torch.sort(scores, dim=1, descending=True, stable=True)

    def at(self, rank: int) -> torch.Tensor:
        """Each row's value at ``rank`` (0: its highest)."""
        if self._asc is None:
            return self._order.values[:, rank]
        return torch.from_numpy(np.ascontiguousarray(self._asc[:, self._asc.shape[1] - 1 - rank]))

    def mask(self, counts: torch.Tensor) -> torch.Tensor:
        """Bool ``[rows, cols]``: each row's first ``counts[r]`` of the stable descending sort."""
        rows, cols = self.scores.shape
        counts = counts.to(torch.long)
        if self._asc is None:
            mask = torch.zeros((rows, cols), dtype=torch.bool, device=self.scores.device)
            positions = torch.arange(cols, device=self.scores.device)[None]
            mask.scatter_(1, self._order.indices, positions < counts[:, None])
            return mask
        c = counts.numpy()
        at = self._asc[np.arange(rows), np.clip(cols - c, 0, cols - 1)]
        threshold = torch.from_numpy(np.where(c > 0, at, np.inf).astype(self._asc.dtype))
        # where the threshold sits in each sorted row: how many score above it, how many tie
        asc = torch.from_numpy(self._asc)
        below = torch.searchsorted(asc, threshold[:, None]).flatten()
        upto = torch.searchsorted(asc, threshold[:, None], right=True).flatten()
        need = counts - (cols - upto)  # of the ties, how many are kept
        # (scores of another dtype were widened to float32 for the sort: compared there too)
        s = self.scores if self.scores.dtype in _NUMPY else self.scores.float()
        mask = s >= threshold[:, None]  # right wherever every tie is kept: most rows
        part = (upto - below > need).nonzero().flatten()
        if len(part):
            sub, t = s[part], threshold[part, None]
            ties = sub == t
            mask[part] = (sub > t) | (ties & (ties.cumsum(1) <= need[part, None]))
        return mask


def top_flat(scores: torch.Tensor, keeps: Sequence[int]) -> dict[int, torch.Tensor]:
    """For each ``k`` of ``keeps``, the bool mask (``scores``' shape) of its ``k`` highest
    entries over the whole tensor, ties to the lower flat index: ``order[:k]`` of
    ``torch.sort(-scores.reshape(-1), stable=True)``."""
    flat = scores.detach().reshape(-1)
    n = flat.numel()
    out: dict[int, torch.Tensor] = {}
    if not _plain(flat):
        order = torch.sort(-flat, stable=True).indices
        for keep in keeps:
            mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
            mask[order[:keep]] = True
            out[keep] = mask.reshape(scores.shape)
        return out
    asc = _ascending(flat, 0)
    s = flat if flat.dtype in _NUMPY else flat.float()
    for keep in keeps:
        if keep <= 0:
            out[keep] = torch.zeros(scores.shape, dtype=torch.bool)
            continue
        threshold = float(asc[n - min(keep, n)])
        mask = s > threshold
        need = keep - int(mask.sum())
        ties = s == threshold
        if int(ties.sum()) <= need:
            mask |= ties
        else:
            mask |= ties & (ties.cumsum(0) <= need)
        out[keep] = mask.reshape(scores.shape)
    return out
