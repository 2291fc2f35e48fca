"""Data-driven weight masks: which weights of one conv/linear layer to zero, and how to repair
the rest, for the weight-sparsity spaces.

Three criteria rank the weights of one layer:

- ``magnitude``: |W| (Han et al., "Learning both Weights and Connections", NeurIPS 2015);
- ``wanda``: |W_ij|·‖X_j‖₂, compared within each output row (Sun et al., "A Simple and
  Effective Pruning Approach for Large Language Models", arXiv:2306.11695, 2023);
- ``sparsegpt``: adaptive OBS masks with the layer-wise least-squares reconstruction of the
  kept weights (Frantar & Alistarh, "SparseGPT", ICML 2023, arXiv:2301.00774).

The data criteria read :class:`LayerStats` of each layer's *input* from
:func:`layer_statistics`, one pass over calibration batches. Both work in the layer's
input-column space, where its weight is a matrix ``[out, cols]``:

- ``nn.Linear`` (weight ``[out, in]``): the columns are ``in``;
- HF ``Conv1D`` (weight ``[in, out]``, stored transposed): the columns are ``in``;
- ``nn.Conv1d``/``nn.Conv2d`` (weight ``[out, in/groups, *k]``): the im2col columns of
  ``F.unfold``, channel-major, ``c * prod(k) + kernel_position`` -- exactly the order of
  ``weight.reshape(out, -1)``; a grouped conv has ``groups`` such spaces, group ``g`` holding
  output rows ``g*out/groups ...`` and input channels ``g*in/groups ...``.

N:M patterns run along the input dimension: ``in`` for linears, the input-channel axis at
each (output, kernel position) for convs.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ranks import RowRanks, top_flat
from .tracing import Output, as_inputs, call_model, conv1d_type, output_tensor, padded_conv_input

__all__ = ["CRITERIA_NEEDING_DATA", "WEIGHT_CRITERIA", "LayerStats", "layer_statistics",
           "prune_layer", "wanda_masks"]

WEIGHT_CRITERIA = ("magnitude", "wanda", "sparsegpt")
CRITERIA_NEEDING_DATA = frozenset({"wanda", "sparsegpt"})

#: SparseGPT's column block (lazy batch updates) and dampening (a share of mean diag H).
BLOCK = 128
DAMP = 0.01
#: At most this many output positions of a conv are sampled per call and batch (seeded).
MAX_POSITIONS = 4096
#: The most elements one chunk of im2col patches may hold.
_CHUNK = 1 << 24
_FIX_STATS = ("pass stats=layer_statistics(model, [name], calibration_batches)[name] of the "
              "dense model")


@dataclass(frozen=True, eq=False)
class LayerStats:
    """What one layer's input was on the calibration batches, in its input-column space.

    ``norms``: float64 ``[groups * cols]``, per column ‖X_j‖₂ over every sampled row (group
    ``g``'s columns at ``g*cols ... (g+1)*cols``). ``hessian``: float64 ``[cols, cols]``
    (``[groups, cols, cols]`` for a grouped conv), ``Σ XᵀX / rows``; ``None`` when not asked
    for. ``rows``: the rows (tokens, sampled conv positions) counted. ``groups``,
    ``transposed`` (HF ``Conv1D``) and ``weight_shape`` say which weight they fit."""

    norms: Tensor
    hessian: Tensor | None
    rows: int
    groups: int = 1
    transposed: bool = False
    weight_shape: tuple[int, ...] = ()

    @property
    def cols(self) -> int:
        """Input columns of one group."""
        return self.norms.numel() // self.groups


def _kind(module: nn.Module) -> str | None:
    conv1d = conv1d_type()
    if conv1d is not None and isinstance(module, conv1d):
        return "hf"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return "conv"
    return None


def _work(device: torch.device) -> torch.device:
    return torch.device("cpu") if device.type == "mps" else device  # no float64 on MPS


def _conv_rows(m: nn.Module, x: Tensor, rng: np.random.Generator, limit: int) -> Tensor:
    """im2col rows ``[rows, in*prod(k)]`` of a conv's input: at most ``limit`` output
    positions (seeded sample, image-major), unfolded a chunk of images at a time."""
    x, k, s, dil = padded_conv_input(m, x)
    n, c = x.shape[:2]
    out_hw = [(x.shape[2 + i] - dil[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)]
    per = out_hw[0] * out_hw[1]
    total = n * per
    pick = None
    if total > limit:
        pick = torch.from_numpy(np.sort(rng.choice(total, limit, replace=False))).to(x.device)
    chunk = max(1, _CHUNK // max(1, c * prod(k) * per))
    parts = []
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        cols = F.unfold(x[a:b], k, dilation=dil, stride=s).transpose(1, 2).reshape(-1, c * prod(k))
        if pick is not None:
            inside = pick[(pick >= a * per) & (pick < b * per)] - a * per
            cols = cols[inside]
        parts.append(cols)
    return torch.cat(parts)


class _NotShared(Exception):
    """A layer that read the same input tensor as an earlier one on the first batch did not
    on a later one."""


def _accumulate(model: nn.Module, targets: Sequence[nn.Module], batches: Sequence[Any],
                output: Output, need_hessian: bool, max_positions: int, seed: int, *,
                share: bool) -> tuple[dict[nn.Module, list[Any]], dict[nn.Module, nn.Module]]:
    """One no-grad, eval-mode pass over ``batches`` (modes restored): per target its input's
    squared column sums, Hessian sum and row count. With ``share``, a linear layer called on
    the very tensor an earlier linear layer of the same call was (a block's query, key and
    value projections; an MLP's gate and up) is counted once, under the first (``shared``
    maps it there): its statistics are those numbers, bit for bit, and a 1.1B decoder's
    Hessians take 7.8 GB instead of 10. Raises :class:`_NotShared` if such a pair stops
    seeing one tensor."""
    index = {m: i for i, m in enumerate(targets)}
    acc: dict[nn.Module, list[Any]] = {}
    shared: dict[nn.Module, nn.Module] = {}
    seen: dict[int, tuple[Tensor, int, nn.Module]] = {}  # this batch: id(input) -> it, its
    #: version, its first reader
    calls: dict[nn.Module, int] = {}  # this batch: calls per target
    where = [0, 0]  # batch, call

    def hook(m: nn.Module, args: tuple, kwargs: dict) -> None:
        raw = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(raw, Tensor):
            return
        kind = _kind(m)
        where[1] += 1
        calls[m] = calls.get(m, 0) + 1
        if share and kind != "conv":
            first = seen.get(id(raw))
            partner = first[2] if first is not None and first[0] is raw and \
                first[1] == raw._version else None
            if where[0] == 0 and partner is not None and m not in acc:
                shared[m] = partner
            if m in shared:
                if partner is not shared[m]:
                    raise _NotShared
                return
            seen.setdefault(id(raw), (raw, raw._version, m))
        x = raw.detach().to(_work(raw.device), torch.float64)
        groups = getattr(m, "groups", 1) if kind == "conv" else 1
        if kind == "conv":
            rng = np.random.default_rng([seed, index[m], where[0], where[1] - 1])
            x = _conv_rows(m, x, rng, max_positions)
        else:
            x = x.reshape(-1, x.shape[-1])
        entry = acc.setdefault(m, [torch.zeros(x.shape[1], dtype=x.dtype, device=x.device),
                                   None, 0])
        entry[0] += x.pow(2).sum(0)
        entry[2] += x.shape[0]
        if need_hessian:
            xg = x.reshape(x.shape[0], groups, -1)
            h = torch.einsum("rgi,rgj->gij", xg, xg)
            entry[1] = h if entry[1] is None else entry[1].add_(h)

    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in targets]
    device = next((p.device for p in model.parameters()), None)
    try:
        model.eval()
        with torch.no_grad():
            for b, batch in enumerate(batches):
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise ValueError(f"calibration batch {b} is a {type(batch).__name__}, not "
                                     "an (inputs, targets) pair. Fix: pass [(inputs, targets)]")
                inputs = as_inputs(batch[0])
                if device is not None:
                    inputs = tuple(t.to(device) for t in inputs)
                where[:] = [b, 0]
                seen.clear()
                calls.clear()
                output_tensor(call_model(model, inputs), output)
                # a pair is one input only if each read exactly it, once, in every batch
                if any(calls.get(m) != 1 or calls.get(first) != 1
                       for m, first in shared.items()):
                    raise _NotShared
    finally:
        seen.clear()
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return acc, shared


def layer_statistics(model: nn.Module, layers: Sequence[str], batches: Sequence[tuple[Any, Any]],
                     output: Output = None, *, need_hessian: bool = True,
                     max_positions: int = MAX_POSITIONS, seed: int = 0) -> dict[str, LayerStats]:
    """Per named layer, the norms (Wanda, Sun et al. 2023) and Hessian ``XᵀX/rows`` (SparseGPT,
    Frantar & Alistarh 2023) of its input columns over ``batches`` (``(inputs, targets)``
    pairs), in one eval-mode, no-grad pass (modes restored). Linear and HF ``Conv1D`` inputs
    count every token; a conv samples at most ``max_positions`` output positions per call and
    batch (seeded by ``seed``, the layer and the batch) and unfolds only those images' patches
    in bounded chunks."""
    batches = list(batches)
    if not batches:
        raise ValueError("layer_statistics needs calibration batches. Fix: pass "
                         "batches=[(inputs, targets), ...] from the training split")
    if max_positions < 1:
        raise ValueError(f"max_positions must be at least 1, got {max_positions}")
    mods = dict(model.named_modules())
    names = list(dict.fromkeys(layers))
    for n in names:
        if n not in mods:
            raise ValueError(f"the model has no layer named {n!r}. Fix: pass names from "
                             "model.named_modules()")
        if _kind(mods[n]) is None:
            raise ValueError(f"layer {n!r} is a {type(mods[n]).__name__}; weight masks are for "
                             "nn.Linear, nn.Conv1d, nn.Conv2d and HF Conv1D. Fix: leave it out")
    targets = list(dict.fromkeys(mods[n] for n in names))
    try:
        acc, shared = _accumulate(model, targets, batches, output, need_hessian,
                                  max_positions, seed, share=True)
    except _NotShared:  # (a layer stopped seeing its partner's input: measured apart)
        acc, shared = _accumulate(model, targets, batches, output, need_hessian,
                                  max_positions, seed, share=False)
    out = {}
    made: dict[nn.Module, Tensor] = {}  # one Hessian per input, whatever reads it
    for n in names:
        m = mods[n]
        first = shared.get(m, m)
        if first not in acc:
            raise ValueError(f"layer {n!r} was not called on the calibration batches. Fix: "
                             "pass batches whose forward pass reaches it, or leave it out")
        sq, h, rows = acc[first]
        groups = getattr(m, "groups", 1) if _kind(m) == "conv" else 1
        if h is not None:
            if first not in made:  # (divided in place: a second copy of every Hessian, 7.8
                # GB on a 1.1B decoder, would double the peak; the same quotients)
                made[first] = h.div_(rows).cpu()
                made[first] = made[first][0] if groups == 1 else made[first]
            h = made[first]
        out[n] = LayerStats(sq.sqrt().cpu(), h, rows, groups, _kind(m) == "hf",
                            tuple(m.weight.shape))
    return out


def _matrix(weight: Tensor, transposed: bool) -> Tensor:
    """The weight as ``[out, cols]`` float64 on its (float64-capable) device."""
    w = weight.detach().to(_work(weight.device), torch.float64)
    return (w.T if transposed else w.reshape(w.shape[0], -1)).contiguous()


def _matrix_shape(shape: Sequence[int], transposed: bool) -> tuple[int, int]:
    return (shape[1], shape[0]) if transposed else (shape[0], prod(shape[1:]))


def _nm_order(channels: int, positions: int, device: torch.device) -> Tensor:
    """Column permutation to kernel-position-major order: ``new = kpos*channels + c`` holds the
    old column ``c*positions + kpos``, so N:M groups of input channels are consecutive."""
    return torch.arange(channels * positions, device=device).view(channels, positions).T.reshape(-1)


def _stable_top(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries of the last axis, ties to the lowest index."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def _row_shares(ranks: RowRanks, keep: int) -> Tensor:
    """Wanda's per-row counts: ``keep // rows`` each, the remainder to the rows whose next
    weight scores highest (ties to the lower row), so the total is exactly ``keep``."""
    rows = ranks.scores.shape[0]
    base, extra = divmod(keep, rows)
    counts = torch.full((rows,), base, dtype=torch.long, device=ranks.scores.device)
    if extra:
        counts[_stable_top(ranks.at(base), extra)] += 1
    return counts


def _keep_mask(scores: Tensor, keep: int | None, nm: tuple[int, int] | None, per_row: bool,
               order: Tensor) -> Tensor:
    """Boolean kept mask ``[out, cols]`` from scores: N:M groups (in ``order``), per-row shares
    (Wanda) or a global top-``keep`` (magnitude)."""
    if nm is not None:
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        n, m = nm
        s = scores[:, order].reshape(scores.shape[0], -1, m)
        grouped = torch.zeros_like(s, dtype=torch.bool).scatter_(2, _stable_top(s, n), True)
        mask[:, order] = grouped.reshape(scores.shape[0], -1)
        return mask
    if per_row:
        ranks = RowRanks(scores)
        return ranks.mask(_row_shares(ranks, keep))
    return top_flat(scores, [keep])[keep]


def _factors(h: Tensor) -> tuple[Tensor, Tensor]:
    """What SparseGPT needs of a Hessian, whatever the level: its silent inputs and the upper
    Cholesky factor of the dampened inverse."""
    h = h.clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(DAMP * h.diagonal().mean())
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info):
        raise ValueError("the layer's input Hessian is not positive definite after dampening "
                         "(non-finite calibration inputs?). Fix: check the calibration batches")
    return dead, torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)


#: The last Hessian factored (a weak reference to it, its version, the device) and its
#: factors per (group, N:M column order or None): a layer's levels are pruned one after
#: another with one Hessian, and its three factorizations cost more than a level's solve
#: (5632 inputs: 180 GFLOP in double, against 32 for the solve).
_LAST: list[Any] = [None, None]


def _factored(hessian: Tensor, g: int, order: Tensor | None, device: torch.device
              ) -> tuple[Tensor, Tensor]:
    """``_factors`` of group ``g`` of ``hessian`` on ``device`` (permuted by ``order`` if
    given), those of the last Hessian kept: the same tensors, bit for bit, as factoring
    again."""
    key, held = _LAST
    if not (key is not None and key[0]() is hessian and key[1:] == (hessian._version, device)):
        key, held = (weakref.ref(hessian), hessian._version, device), []
        _LAST[:] = [key, held]
        weakref.finalize(hessian, _forget, key)  # (not held past the Hessian's life)
    for group, permuted, factors in held:
        if group == g and (permuted is None) == (order is None) and (
                order is None or torch.equal(permuted, order)):
            return factors
    h = hessian.to(device, torch.float64)
    h = h[None] if h.dim() == 2 else h
    factors = _factors(h[g] if order is None else h[g][order][:, order])
    held.append((g, order, factors))
    return factors


def _forget(key: tuple) -> None:
    if _LAST[0] is key:
        _LAST[:] = [None, None]


def _sparsegpt(w: Tensor, factors: tuple[Tensor, Tensor], prune: int | None,
               nm: tuple[int, int] | None) -> Tensor:
    """SparseGPT on one ``[rows, cols]`` matrix with its Hessian's ``_factors`` (Frantar &
    Alistarh 2023): blocks of columns, adaptive mask per block by w²/[H⁻¹]ᵢᵢ (the Cholesky
    diagonal of H⁻¹, as the paper's code), OBS error compensation column by column and lazy
    batch updates of later blocks. ``prune`` weights pruned in all (each block
    ``⌊P·i₂/cols⌋ − ⌊P·i₁/cols⌋``, so the total is exact), or ``M − N`` in every group of M
    consecutive columns."""
    w = w.clone()
    dead, u = factors
    rows, cols = w.shape
    pruned = torch.zeros_like(w, dtype=torch.bool)
    block = BLOCK if nm is None else max(nm[1], BLOCK // nm[1] * nm[1])

    def saliency(v: Tensor, d: Tensor, a: int, b: int) -> Tensor:
        s = v.pow(2) / d.pow(2)
        s[:, dead[a:b]] = 0.0  # a silent input costs nothing to prune
        return s

    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        d = u1.diagonal()
        q1, e1 = torch.zeros_like(w1), torch.zeros_like(w1)
        m1 = torch.zeros_like(w1, dtype=torch.bool)
        if nm is None:
            k = prune * i2 // cols - prune * i1 // cols
            s = saliency(w1, d, i1, i2).reshape(-1)
            m1.view(-1)[torch.sort(s, stable=True).indices[:k]] = True
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                s = saliency(w1[:, i:i + m], d[i:i + m], i1 + i, i1 + i + m)
                m1[:, i:i + m].scatter_(1, torch.sort(s, dim=1, stable=True).indices[:, :m - n],
                                        True)
            col = w1[:, i]
            q = torch.where(m1[:, i], torch.zeros_like(col), col)
            q1[:, i] = q
            err = (col - q) / d[i]
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
            e1[:, i] = err
        w[:, i1:i2] = q1
        pruned[:, i1:i2] = m1
        w[:, i2:] -= e1 @ u[i1:i2, i2:]
    return w.masked_fill(pruned, 0.0)


def prune_layer(weight: Tensor, *, keep: int | None, nm: tuple[int, int] | None, criterion: str,
                stats: LayerStats | None, transposed: bool | None = None) -> Tensor:
    """A copy of ``weight`` (same shape, dtype, device) with zeros where pruned: exactly
    ``keep`` weights kept in the layer, or exactly N in every group of M consecutive weights
    along the input dimension (``nm=(N, M)``). ``criterion`` is one of :data:`WEIGHT_CRITERIA`
    (magnitude: Han et al. 2015; wanda: Sun et al. 2023; sparsegpt: Frantar & Alistarh 2023);
    the data ones need ``stats`` from :func:`layer_statistics`. ``transposed`` marks an HF
    ``Conv1D`` weight as stored, ``[in, out]`` (default: from ``stats``, else not; pass
    ``False`` for one already turned to ``[out, in]``). A kept weight that is itself zero
    stays zero."""
    if criterion not in WEIGHT_CRITERIA:
        raise ValueError(f"unknown weight criterion {criterion!r}. Fix: use one of "
                         f"{', '.join(WEIGHT_CRITERIA)}")
    if criterion in CRITERIA_NEEDING_DATA and stats is None:
        raise ValueError(f"criterion {criterion!r} ranks weights on data and was given no "
                         f"stats. Fix: {_FIX_STATS}")
    if criterion == "sparsegpt" and stats.hessian is None:
        raise ValueError("criterion 'sparsegpt' needs the input Hessian. Fix: measure with "
                         "layer_statistics(..., need_hessian=True)")
    if (keep is None) == (nm is None):
        raise ValueError("give exactly one of keep= (unstructured: weights kept in the layer) "
                         "and nm=(N, M) (N kept in every M along the input dimension). Fix: "
                         "pass one, the other None")
    if weight.dim() < 2:
        raise ValueError(f"weight masks are for conv/linear weights; got shape "
                         f"{tuple(weight.shape)}. Fix: pass a layer's 2-D or conv weight")
    if transposed is None:
        transposed = bool(stats.transposed) if stats is not None else False
    if transposed and weight.dim() != 2:
        raise ValueError("transposed=True is for HF Conv1D's 2-D [in, out] weight. Fix: drop it")
    if stats is not None and stats.weight_shape and _matrix_shape(weight.shape, transposed) \
            != _matrix_shape(stats.weight_shape, stats.transposed):
        raise ValueError(f"stats were measured on a weight of shape {stats.weight_shape} "
                         f"(transposed={stats.transposed}), not {tuple(weight.shape)} "
                         f"(transposed={transposed}). Fix: {_FIX_STATS}, and for an HF Conv1D "
                         "weight already turned to [out, in] pass transposed=False")
    mat = _matrix(weight, transposed)
    out, cols = mat.shape
    channels = cols if weight.dim() == 2 else weight.shape[1]
    positions = cols // channels
    if keep is not None:
        keep = int(keep)
        if not 0 <= keep <= mat.numel():
            raise ValueError(f"keep={keep} is out of range for a layer of {mat.numel()} "
                             f"weights. Fix: pass 0 <= keep <= {mat.numel()}")
    else:
        n, m = (int(v) for v in nm)
        if not (m >= 1 and 0 <= n <= m):
            raise ValueError(f"nm={tuple(nm)} is not an N:M pattern. Fix: pass (N, M) with "
                             "M >= 1 and 0 <= N <= M, e.g. (2, 4)")
        if channels % m:
            raise ValueError(f"the layer's input dimension ({channels}) is not divisible by "
                             f"M={m}. Fix: choose M dividing it, or unstructured keep=")
        nm = (n, m)
    groups = stats.groups if stats is not None else 1
    if stats is not None and (stats.cols != cols or out % groups):
        raise ValueError(f"stats have {stats.cols} input columns in {groups} group(s); the "
                         f"weight has {cols} per output row. Fix: {_FIX_STATS}")
    order = _nm_order(channels, positions, mat.device)
    if criterion == "sparsegpt":
        per = out // groups
        prunes = None if keep is None else [
            (mat.numel() - keep) * (g + 1) // groups - (mat.numel() - keep) * g // groups
            for g in range(groups)]
        result = torch.empty_like(mat)
        for g in range(groups):
            rows = slice(g * per, (g + 1) * per)
            if nm is None:
                result[rows] = _sparsegpt(mat[rows], _factored(stats.hessian, g, None, mat.device),
                                          prunes[g], None)
            else:  # N:M groups consecutive: kernel-position-major columns, H permuted alike
                result[rows, order] = _sparsegpt(mat[rows][:, order],
                                                 _factored(stats.hessian, g, order, mat.device),
                                                 None, nm)
    else:
        scores = mat.abs()
        if criterion == "wanda":
            norms = stats.norms.to(mat.device, torch.float64).view(groups, cols)
            scores = scores * norms[torch.arange(out, device=mat.device) // (out // groups)]
        result = mat * _keep_mask(scores, keep, nm, criterion == "wanda", order)
    result = result.T if transposed else result.reshape(weight.shape)
    return result.to(weight.device, weight.dtype).contiguous()


def wanda_masks(weight: Tensor, keeps: Sequence[int], stats: LayerStats) -> dict[int, Tensor]:
    """For every ``k`` of ``keeps``, the non-zeros of ``prune_layer(weight, keep=k, nm=None,
    criterion="wanda", stats=stats, transposed=False)`` (``weight`` as ``[out, in,
    *kernel]``), from one sort of the scores per row: a level store prunes all of a layer's
    levels at once. The same masks, bit for bit: Wanda's per-row shares and ranks both come
    from that sort (and the pruned weight is ``weight`` times its mask)."""
    mat = _matrix(weight, False)
    out, cols = mat.shape
    groups = stats.groups
    norms = stats.norms.to(mat.device, torch.float64).view(groups, cols)
    scores = mat.abs() * norms[torch.arange(out, device=mat.device) // (out // groups)]
    nonzero = mat != 0
    del mat
    ranks = RowRanks(scores)
    results = {}
    for keep in keeps:
        mask = ranks.mask(_row_shares(ranks, int(keep)))
        results[int(keep)] = (mask & nonzero).reshape(weight.shape).to(weight.device)
    return results
