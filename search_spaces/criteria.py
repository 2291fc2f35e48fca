"""Pruning criteria: how the elements of one channel-group unit are ranked.

A criterion gives every element (channel, or block of coupled channels) of a unit one score;
the channel space keeps the elements of largest score. Weight-only criteria (``l1``, ``l2``,
``fpgm``, ``bn-scale``) read the weights of the working copy as it is pruned. Data criteria
(``taylor``, ``hessian``, ``apoz``, ``reconstruction``) measure once over calibration batches
(``(inputs, targets)`` pairs from the training split) on the dense model -- one pass for the
whole model, in eval mode -- and every unit is scored from that measurement.

Scores are summed over everything a channel's Torch-Pruning group removes (its producers'
out-side weights, its norms, its consumers' in-side weights), except where a criterion says
otherwise. Attention heads are not ranked here (``attention.py`` ranks them by magnitude).

New criteria plug in with :func:`register_criterion`; :func:`make_criterion` makes one by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from .calibration import (FIX, calibration_batches, cross_entropy, gradients, micro_batches,
                          moved_to)
from .importance import group_magnitude, group_sum, item_slices, rows
from .tracing import Output, call_model, conv1d_type, output_tensor

__all__ = ["CRITERIA", "APoZ", "BNScale", "Criterion", "DataCriterion", "FPGM", "Hessian",
           "L1Magnitude", "L2Magnitude", "Reconstruction", "Taylor", "as_criterion",
           "criterion_names", "cross_entropy", "make_criterion", "register_criterion"]

#: What a data criterion measured on the dense model; ``score`` reads it.
Stats = Any
Blocks = Sequence[Sequence[int]]

_FIX = FIX
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _module(item: Any) -> Any:
    return item.dep.target.module


def _out_side(item: Any) -> bool:
    return item.dep.handler.__name__ == "prune_out_channels"


def _in_side(item: Any) -> bool:
    return item.dep.handler.__name__ == "prune_in_channels"


def _linear_like(m: Any) -> bool:
    conv1d = conv1d_type()
    return isinstance(m, nn.Linear) or (conv1d is not None and isinstance(m, conv1d))


def _norm_with_scale(m: Any) -> bool:
    return isinstance(m, _NORMS) and isinstance(getattr(m, "weight", None), torch.Tensor)


#: id(blocks) -> (blocks, channels, the first channel of each element if elements are single
#: channels): a unit's blocks are read at every trial, and they never change
_BLOCKS: dict[int, tuple[Blocks, int, list[int] | None]] = {}


def _facts(blocks: Blocks) -> tuple[Blocks, int, list[int] | None]:
    held = _BLOCKS.get(id(blocks))
    if held is None or held[0] is not blocks:
        single = [b[0] for b in blocks] if all(len(b) == 1 for b in blocks) else None
        held = (blocks, max(i for b in blocks for i in b) + 1, single)
        if isinstance(blocks, tuple):  # (a unit's own: kept, a few hundred at most)
            if len(_BLOCKS) >= 512:
                _BLOCKS.clear()
            _BLOCKS[id(blocks)] = held
    return held


def _full(blocks: Blocks) -> int:
    return _facts(blocks)[1]


def _per_element(per_channel: np.ndarray, blocks: Blocks) -> np.ndarray:
    single = _facts(blocks)[2]
    if single is not None:  # one channel an element: its own score
        return np.asarray(per_channel, dtype=float)[single]
    return np.array([per_channel[list(b)].sum() for b in blocks])


def _scatter(item: Any, values: np.ndarray, full: int, into: np.ndarray,
             counts: np.ndarray | None = None) -> None:
    """Add ``values`` (one per index of the item's module) to the root channels they map to."""
    for i, r in zip(item.idxs, item.root_idxs):
        if int(i) < len(values) and int(r) < full:
            into[int(r)] += values[int(i)]
            if counts is not None:
                counts[int(r)] += 1


class Criterion:
    """How the elements of a channel-group unit are ranked: larger scores are kept.

    ``name`` is the registered name; ``needs_data`` says whether it measures calibration
    batches (``measure``, once per dense model) before ``score`` reads the measurement.
    A subclass defines ``channels`` (one score per channel of the group's root, summed over
    each element's channels) or ``score`` itself.
    """

    name: ClassVar[str] = "abstract"
    needs_data: ClassVar[bool] = False

    def measure(self, model: nn.Module, output: Output = None) -> Stats:
        """What ``score`` needs from data, measured on ``model`` (a dense copy the caller
        owns); weight-only criteria need nothing."""
        return None

    def check(self, groups: Mapping[str, tp.Group]) -> None:
        """Refuse, with the fix, units (name -> channel group) this criterion cannot score."""

    def score(self, graph: tp.DependencyGraph, group: tp.Group, blocks: Blocks,
              stats: Stats = None) -> np.ndarray:
        """One score per element of the unit; element ``k`` is the root's channels
        ``blocks[k]`` (removed together)."""
        return _per_element(self.channels(graph, group, _full(blocks), stats), blocks)

    def channels(self, graph: tp.DependencyGraph, group: tp.Group, full: int,
                 stats: Stats) -> np.ndarray:
        """One score per channel of the group's root (``full`` of them)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither score nor channels")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


CRITERIA: dict[str, type[Criterion]] = {}


def register_criterion(name: str) -> Callable[[type[Criterion]], type[Criterion]]:
    """Class decorator: make a criterion available by ``name`` (``make_criterion(name)``)."""

    def deco(cls: type[Criterion]) -> type[Criterion]:
        if name in CRITERIA:
            raise ValueError(f"pruning criterion {name!r} is registered twice")
        cls.name = name
        CRITERIA[name] = cls
        return cls

    return deco


def criterion_names() -> list[str]:
    """The registered criteria's names, sorted."""
    return sorted(CRITERIA)


def make_criterion(name: str, *, calibration: Sequence[tuple[Any, Any]] | None = None,
                   loss: Callable[[torch.Tensor, Any], torch.Tensor] | None = None) -> Criterion:
    """The registered criterion ``name``. Data criteria need ``calibration``, a list of
    ``(inputs, targets)`` batches from the training split (``inputs`` a tensor or a tuple of
    tensors), and take ``loss(logits, targets)`` (default :func:`cross_entropy`); weight-only
    criteria ignore both."""
    cls = CRITERIA.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown pruning criterion {name!r}; available: "
                         f"{', '.join(criterion_names())}")
    if cls.needs_data:
        return cls(calibration=calibration, loss=loss)
    return cls()


def as_criterion(criterion: str | Criterion) -> Criterion:
    """``criterion`` itself, or the registered one of that name (without data)."""
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, str):
        cls = CRITERIA.get(criterion)
        if cls is not None and cls.needs_data:
            raise ValueError(f"criterion {criterion!r} ranks channels on data. Fix: pass "
                             "calibration=[(inputs, targets), ...] from the training split to "
                             f"make_criterion({criterion!r}, calibration=...) and its result as "
                             "criterion=")
        return make_criterion(criterion)
    raise ValueError(f"criterion must be a name ({', '.join(criterion_names())}) or a "
                     f"Criterion, got {type(criterion).__name__}")


# ---------------------------------------------------------------------- weight-only criteria
@register_criterion("l1")
class L1Magnitude(Criterion):
    """Sum of |w| over everything the channel's group removes (Li et al., "Pruning Filters
    for Efficient ConvNets", ICLR 2017: the filter L1 norm, generalised to the group)."""

    def channels(self, graph: tp.DependencyGraph, group: tp.Group, full: int,
                 stats: Stats) -> np.ndarray:
        return group_sum(graph, group, full, lambda t, d: rows(t, d).abs().sum(1).cpu().numpy())


@register_criterion("l2")
class L2Magnitude(Criterion):
    """Sum of w² over everything the channel's group removes (Torch-Pruning's
    GroupMagnitudeImportance(p=2), Fang et al. CVPR 2023, unnormalised): the default."""

    def channels(self, graph: tp.DependencyGraph, group: tp.Group, full: int,
                 stats: Stats) -> np.ndarray:
        return group_magnitude(graph, group, full)


@register_criterion("bn-scale")
class BNScale(Criterion):
    """|γ| of the norm layers (BatchNorm, or another norm's affine weight) in the channel's
    group, summed (Liu et al., "Learning Efficient Convolutional Networks through Network
    Slimming", ICCV 2017)."""

    def check(self, groups: Mapping[str, tp.Group]) -> None:
        bare = [name for name, group in groups.items()
                if not any(_norm_with_scale(_module(it)) for it in group.items)]
        if bare:
            raise ValueError(
                f"criterion 'bn-scale' ranks channels by their norm layer's scale, and these "
                f"units have no norm layer with an affine weight (BatchNorm, LayerNorm, ...): "
                f"{', '.join(bare)}. Fix: choose another criterion "
                f"({', '.join(criterion_names())}), or leave those layers out with "
                f"ignored_layers={bare}")

    def channels(self, graph: tp.DependencyGraph, group: tp.Group, full: int,
                 stats: Stats) -> np.ndarray:
        scales = {id(_module(it).weight) for it in group.items if _norm_with_scale(_module(it))}
        return group_sum(graph, group, full, lambda t, d: rows(t, d).abs().sum(1).cpu().numpy()
                         if id(t) in scales else None)


def _stack(graph: tp.DependencyGraph, group: tp.Group, full: int) -> torch.Tensor:
    """Per root channel, its out-side weights in the group, concatenated (one row each)."""
    parts = []
    for item in group.items:
        if not _out_side(item):
            continue
        for tensor, dim in item_slices(graph, item):
            flat = rows(tensor, dim)
            pairs = [(int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs)
                     if int(i) < flat.shape[0] and int(r) < full]
            while pairs:  # a root channel reached twice gets a second part
                part, left, seen = torch.zeros(full, flat.shape[1], dtype=flat.dtype), [], set()
                for i, r in pairs:
                    if r in seen:
                        left.append((i, r))
                    else:
                        part[r] = flat[i]
                        seen.add(r)
                parts.append(part)
                pairs = left
    return torch.cat(parts, 1) if parts else torch.zeros(full, 1, dtype=torch.double)


@register_criterion("fpgm")
class FPGM(Criterion):
    """Sum of Euclidean distances from an element's vector (its channels' out-side weights
    in the group, concatenated) to the unit's other elements: those nearest the geometric
    median score lowest and go first (He et al., "Filter Pruning via Geometric Median",
    CVPR 2019)."""

    def score(self, graph: tp.DependencyGraph, group: tp.Group, blocks: Blocks,
              stats: Stats = None) -> np.ndarray:
        with torch.no_grad():
            per_channel = _stack(graph, group, _full(blocks))
            vectors = per_channel[torch.tensor([list(b) for b in blocks])].reshape(len(blocks), -1)
            return torch.cdist(vectors, vectors).sum(1).cpu().numpy()


# ---------------------------------------------------------------------- data criteria
class DataCriterion(Criterion):
    """A criterion measured on calibration batches: ``calibration`` is a list of ``(inputs,
    targets)`` pairs from the training split, ``loss(logits, targets)`` a scalar
    (default :func:`cross_entropy`). The model runs in eval mode (BatchNorm's running
    statistics, no dropout)."""

    needs_data: ClassVar[bool] = True

    def __init__(self, *, calibration: Sequence[tuple[Any, Any]] | None = None,
                 loss: Callable[[torch.Tensor, Any], torch.Tensor] | None = None) -> None:
        self.calibration = calibration_batches(calibration, self.name)
        if loss is not None and not callable(loss):
            raise ValueError(f"loss must be a callable loss(logits, targets), got "
                             f"{type(loss).__name__}. Fix: pass a function or leave it out "
                             "for cross-entropy")
        self.loss = loss if loss is not None else cross_entropy

    def batches(self, model: nn.Module) -> Iterator[tuple[tuple[torch.Tensor, ...], Any]]:
        """The calibration batches on ``model``'s device."""
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for inputs, targets in self.calibration:
            yield tuple(x.to(device) for x in inputs), moved_to(targets, device)

    def _loss(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], targets: Any,
              output: Output) -> torch.Tensor:
        value = self.loss(output_tensor(call_model(model, inputs), output), targets)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise ValueError(f"the loss of criterion {self.name!r} must return a scalar tensor, "
                             f"got {getattr(value, 'shape', type(value).__name__)}. Fix: reduce "
                             "it (e.g. .mean())")
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.calibration)} calibration batches)"


@register_criterion("taylor")
class Taylor(DataCriterion):
    """(Σ over the element's group parameters of w·g)², with g the loss gradient summed over
    the calibration batches (Molchanov et al., "Importance Estimation for Neural Network
    Pruning", CVPR 2019, group form)."""

    def measure(self, model: nn.Module, output: Output = None) -> Stats:
        with gradients(model) as params:
            model.eval()
            for inputs, targets in self.batches(model):
                self._loss(model, inputs, targets, output).backward()
            return {id(p): p.grad.detach().clone() for p in params if p.grad is not None}

    def score(self, graph: tp.DependencyGraph, group: tp.Group, blocks: Blocks,
              stats: Stats = None) -> np.ndarray:
        def wg(t: torch.Tensor, d: int) -> np.ndarray | None:
            g = stats.get(id(t))
            return None if g is None else (rows(t, d) * rows(g, d)).sum(1).cpu().numpy()

        return _per_element(group_sum(graph, group, _full(blocks), wg), blocks) ** 2


@register_criterion("hessian")
class Hessian(DataCriterion):
    """Optimal Brain Damage, ½ Σ h_ii w² over the element's group, with the Hessian's diagonal
    approximated by the empirical Fisher: the mean over calibration micro-batches of g² (LeCun
    et al., NeurIPS 1989; Torch-Pruning's HessianImportance). ``micro_batch`` samples per
    micro-batch, 1 by default (per-sample gradients, as Torch-Pruning accumulates them)."""

    def __init__(self, *, calibration: Sequence[tuple[Any, Any]] | None = None,
                 loss: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
                 micro_batch: int = 1) -> None:
        super().__init__(calibration=calibration, loss=loss)
        if not isinstance(micro_batch, int) or micro_batch < 1:
            raise ValueError(f"micro_batch must be a positive integer, got {micro_batch!r}")
        self.micro_batch = micro_batch

    def measure(self, model: nn.Module, output: Output = None) -> Stats:
        squares: dict[int, torch.Tensor] = {}
        count = 0
        with gradients(model) as params:
            model.eval()
            for inputs, targets in self.batches(model):
                for part, part_targets in micro_batches(inputs, targets, self.micro_batch):
                    for p in params:
                        p.grad = None
                    self._loss(model, part, part_targets, output).backward()
                    for p in params:
                        if p.grad is not None:
                            sq = p.grad.detach().double().pow(2)
                            squares[id(p)] = squares[id(p)] + sq if id(p) in squares else sq
                    count += 1
        return {k: v / max(count, 1) for k, v in squares.items()}

    def channels(self, graph: tp.DependencyGraph, group: tp.Group, full: int,
                 stats: Stats) -> np.ndarray:
        def obd(t: torch.Tensor, d: int) -> np.ndarray | None:
            h = stats.get(id(t))
            if h is None:
                return None
            return (0.5 * rows(h, d) * rows(t, d).pow(2)).sum(1).cpu().numpy()

        return group_sum(graph, group, full, obd)


def _channel_dim(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or _linear_like(module):
        return out.dim() - 1
    if isinstance(module, nn.modules.conv._ConvNd):
        return 1 if out.dim() == len(module.kernel_size) + 2 else 0
    return 1 if out.dim() >= 2 else 0


@register_criterion("apoz")
class APoZ(DataCriterion):
    """1 − the average percentage of zeros after ReLU: per channel, the fraction of values ≤ 0
    on the calibration inputs at the output of the group's norm layers (of its convs and
    linears where it has none), averaged over the group's out-side members; channels mostly
    ≤ 0 go first (Hu et al., "Network Trimming", arXiv:1607.03250, 2016)."""

    def measure(self, model: nn.Module, output: Output = None) -> Stats:
        counts: dict[int, list[Any]] = {}

        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or out.dim() == 0:
                return
            dim = _channel_dim(module, out)
            x = out.detach().movedim(dim, 0).reshape(out.shape[dim], -1)
            entry = counts.setdefault(id(module), [torch.zeros(x.shape[0], dtype=torch.double), 0])
            if entry[0].shape[0] == x.shape[0]:
                entry[0] += (x <= 0).sum(1).double().cpu()
                entry[1] += x.shape[1]

        handles = [m.register_forward_hook(hook) for m in model.modules()
                   if isinstance(m, _NORMS + (nn.modules.conv._ConvNd,)) or _linear_like(m)]
        try:
            model.eval()
            with torch.no_grad():
                for inputs, _ in self.batches(model):
                    output_tensor(call_model(model, inputs), output)
        finally:
            for h in handles:
                h.remove()
        return {k: (zeros / max(n, 1)).numpy() for k, (zeros, n) in counts.items()}

    def channels(self, graph: tp.DependencyGraph, group: tp.Group, full: int,
                 stats: Stats) -> np.ndarray:
        members = [it for it in group.items if _out_side(it) and id(_module(it)) in stats]
        norms = [it for it in members if isinstance(_module(it), _NORMS)]
        used = norms or [it for it in members if isinstance(_module(it), nn.modules.conv._ConvNd)
                         or _linear_like(_module(it))]
        zeros, counts = np.zeros(full), np.zeros(full)
        for it in used:
            _scatter(it, stats[id(_module(it))], full, zeros, counts)
        return 1.0 - zeros / np.maximum(counts, 1)


#: The most elements one chunk of a per-channel convolution may produce.
_CHUNK = 1 << 24


def _energies(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Per input channel c of a consumer, ‖W[:, c] * X_c‖²: the energy of c's contribution to
    the consumer's output on input ``x`` (exact for convs; for linears per input feature)."""
    conv1d = conv1d_type()
    if isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d)):
        w = module.weight if isinstance(module, nn.Linear) else module.weight.t()
        xs = x.reshape(-1, x.shape[-1]).double().pow(2).sum(0)
        return xs * w.detach().double().pow(2).sum(0) if xs.shape[0] == w.shape[1] else None
    if not isinstance(module, nn.modules.conv._ConvNd) or module.padding_mode != "zeros":
        return None
    nd = len(module.kernel_size)
    if x.dim() == nd + 1:
        x = x.unsqueeze(0)
    n, c = x.shape[:2]
    if c != module.in_channels:
        return None
    w = module.weight.detach()
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    if transposed:  # weight [in, out/groups, *k]: input channel c's own filters
        per = w
    else:  # weight [out, in/groups, *k]: input channel c meets its group's outputs
        cg, og = c // module.groups, module.out_channels // module.groups
        outs = (torch.arange(c) // cg)[:, None] * og + torch.arange(og)
        per = w[outs, (torch.arange(c) % cg)[:, None]]
    og = per.shape[1]
    per = per.reshape(c * og, 1, *per.shape[2:])
    chunk = max(1, _CHUNK // max(1, n * og * int(np.prod(x.shape[2:]))))
    out = []
    for a in range(0, c, chunk):
        b = min(c, a + chunk)
        if transposed:
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
            y = fn(x[:, a:b], per[a * og:b * og].reshape(b - a, og, *per.shape[2:]), None,
                   module.stride, module.padding, module.output_padding, b - a, module.dilation)
        else:
            fn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
            y = fn(x[:, a:b], per[a * og:b * og], None, module.stride, module.padding,
                   module.dilation, b - a)
        out.append(y.double().pow(2).reshape(n, b - a, -1).sum((0, 2)))
    return torch.cat(out)


@register_criterion("reconstruction")
class Reconstruction(DataCriterion):
    """How much the next layers' outputs change without a channel: the energy ‖W[:, c] * X_c‖²
    of its contribution to every consumer conv/linear in its group, summed over consumers
    and calibration batches (X_c the consumer's input channel c; for a linear, each of the
    channel's input features alone). One-shot ranking, not ThiNet's greedy removal order
    (Luo et al., "ThiNet", ICCV 2017; He et al., "Channel Pruning", ICCV 2017)."""

    def measure(self, model: nn.Module, output: Output = None) -> Stats:
        energy: dict[int, torch.Tensor] = {}

        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            e = _energies(module, args[0].detach())
            if e is None:
                return
            e = e.cpu()
            if id(module) in energy and energy[id(module)].shape == e.shape:
                energy[id(module)] += e
            elif id(module) not in energy:
                energy[id(module)] = e

        handles = [m.register_forward_hook(hook) for m in model.modules()
                   if isinstance(m, nn.modules.conv._ConvNd) or _linear_like(m)]
        try:
            model.eval()
            with torch.no_grad():
                for inputs, _ in self.batches(model):
                    output_tensor(call_model(model, inputs), output)
        finally:
            for h in handles:
                h.remove()
        return {k: v.numpy() for k, v in energy.items()}

    def channels(self, graph: tp.DependencyGraph, group: tp.Group, full: int,
                 stats: Stats) -> np.ndarray:
        scores = np.zeros(full)
        for it in group.items:
            if _in_side(it) and id(_module(it)) in stats:
                _scatter(it, stats[id(_module(it))], full, scores)
        return scores
