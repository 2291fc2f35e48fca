"""Masked weights: the parametrization that keeps a pruned weight's zeros while it trains,
how to find, bake and copy it, and the magnitude mask the weight-sparse spaces choose with.

A masked layer's weight is ``weight * mask`` (``torch.nn.utils.parametrize``), so its zeros
stay zero while the network is fine-tuned; :func:`remove_masks` bakes them into plain weights
for saving and export. Weights are seen as ``[out, in, *kernel]`` (:func:`canonical`): HF's
``Conv1D`` and transposed convs store theirs with the input dimension first.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .ranks import top_flat
from .tracing import conv1d_type

__all__ = ["Mask", "baked_copy", "canonical", "input_dim", "layer_types", "magnitude_mask", "magnitude_masks",
           "mask_of", "mask_weight", "masked", "masks_of", "remove_masks"]


class Mask(nn.Module):
    """The parametrization of a masked weight: ``weight * mask`` (``mask`` a bool buffer)."""

    def __init__(self, mask: torch.Tensor, *, copy: bool = True) -> None:
        super().__init__()
        mask = mask.detach().to(torch.bool)
        # ``copy=False`` takes a fresh mask as it is (a trial's: a billion-weight model's
        # masks are a gigabyte)
        self.register_buffer("mask", mask.clone() if copy else mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and weight.requires_grad:
            return weight * self.mask
        return masked(weight, self.mask)  # the same bits, faster: scoring runs this per forward


def _parametrized_weight(self: nn.Module) -> torch.Tensor:
    """``self.weight`` of a masked module: what torch's own property computes
    (``parametrize._inject_property``), with ``self`` in place of the module it captures."""
    if torch.jit.is_scripting():
        raise RuntimeError("Parametrization is not working with scripting.")
    parametrization = self.parametrizations["weight"]
    if not parametrize._cache_enabled:
        return parametrization()
    if torch._C._get_tracing_state() is not None:
        raise RuntimeError("Cannot trace a model while caching parametrizations.")
    key = (id(self), "weight")
    tensor = parametrize._cache.get(key)
    if tensor is None:
        tensor = parametrize._cache[key] = parametrization()
    return tensor


def _set_parametrized_weight(self: nn.Module, value: torch.Tensor) -> None:
    if torch.jit.is_scripting():
        raise RuntimeError("Parametrization is not working with scripting.")
    self.parametrizations["weight"].right_inverse(value)


_WEIGHT = property(_parametrized_weight, _set_parametrized_weight)
#: torch's parametrize module keeps the cache ``_WEIGHT`` reads where this torch has it
_OWN_PROPERTY = hasattr(parametrize, "_cache") and hasattr(parametrize, "_cache_enabled")


def mask_weight(module: nn.Module, mask: torch.Tensor, *, copy: bool = True,
                unsafe: bool = False) -> None:
    """Mask ``module.weight`` with ``mask`` (a :class:`Mask` parametrization, in the module's
    train/eval mode; ``copy=False`` takes a fresh mask as it is, ``unsafe`` skips torch's
    checks of the shapes).

    torch gives a newly parametrized module a class of its own whose ``weight`` property
    holds the module in a closure: module and class form a reference cycle, so a dropped
    masked network (every weight it holds) lives until a full ``gc.collect`` (0.15 s per
    trial in a process holding GPT-2). That property is replaced by one reading ``self``
    (:func:`_parametrized_weight`, the same computation), so the network is freed when
    dropped."""
    cls = type(module)
    parametrize.register_parametrization(module, "weight", Mask(mask, copy=copy), unsafe=unsafe)
    if _OWN_PROPERTY and type(module) is not cls:  # a class made now, for this module only
        type.__setattr__(type(module), "weight", _WEIGHT)
    module.parametrizations.train(module.training)


def masked(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight * mask`` as a new tensor, with no autograd record. A weight times 1 or 0 is
    exact, so NumPy's multiply (which converts the bool mask on the fly: twice as fast as
    torch's mixed-dtype multiply on one thread) gives the same bits; it is used for plain CPU
    tensors of a dtype NumPy has, outside tracing and compiling."""
    weight = weight.detach()
    fast = (type(weight) is torch.Tensor and type(mask) is torch.Tensor
            and weight.device.type == "cpu" and mask.device.type == "cpu"
            and weight.dtype in _NUMPY_FLOATS and mask.dtype == torch.bool
            and weight.shape == mask.shape and weight.is_contiguous() and mask.is_contiguous()
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())
    if fast:
        result = torch.empty_like(weight)
        try:
            np.multiply(weight.numpy(), mask.numpy(), out=result.numpy())
            return result
        except (RuntimeError, TypeError):  # a tensor NumPy cannot see (a functorch wrapper)
            pass
    return weight * mask


_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)


def masks_of(module: nn.Module) -> list[Mask]:
    lists = getattr(module, "parametrizations", None)
    if lists is None or "weight" not in lists:
        return []
    return [p for p in lists["weight"] if isinstance(p, Mask)]


def mask_of(module: nn.Module) -> torch.Tensor | None:
    """The bool mask ``apply`` put on ``module``'s weight (several: their product), or ``None``
    for a module whose weight is not masked."""
    found = masks_of(module)
    if not found:
        return None
    out = found[0].mask.clone()
    for m in found[1:]:
        out &= m.mask
    return out


def remove_masks(model: nn.Module) -> nn.Module:
    """``model`` itself (changed in place: deep-copy it first to keep the masked one, which
    stays masked and working) with every masked weight baked into a plain parameter holding
    the zeros (``parametrize.remove_parametrizations(..., leave_parametrized=True)``; any
    other parametrization of the same weight is baked with it)."""
    for module in list(model.modules()):
        if masks_of(module):
            _own_class(module)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def _own_class(module: nn.Module) -> None:
    """Give a parametrized ``module`` a class of its own: a deep copy shares the class torch
    made for the original, and removing a parametrization deletes the weight's property from
    that class (the original, still masked, would lose its ``weight``)."""
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def baked_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its masks baked in (``remove_masks``), leaving ``model``
    working (:func:`remove_masks` gives each copied module a class of its own first)."""
    return remove_masks(copy.deepcopy(model))


def layer_types() -> tuple[type[nn.Module], ...]:
    conv1d = conv1d_type()
    return (nn.modules.conv._ConvNd, nn.Linear) + ((conv1d,) if conv1d is not None else ())


def canonical(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The weight as ``[out, in, *kernel]`` (a view): HF ``Conv1D`` and transposed convs store
    theirs with the input dimension first."""
    conv1d = conv1d_type()
    if isinstance(module, nn.modules.conv._ConvTransposeNd) or (
            conv1d is not None and isinstance(module, conv1d)):
        return weight.transpose(0, 1)
    return weight


def input_dim(module: nn.Module) -> int:
    """The size of the dimension N:M groups run along: inputs per output (per conv group)."""
    w = module.weight
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return int(w.shape[0]) // int(module.groups)
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return int(w.shape[1])
    return int(w.shape[0])  # HF Conv1D: [in, out]


def magnitude_mask(weight: torch.Tensor, *, keep: int | None = None,
                   nm: tuple[int, int] | None = None) -> torch.Tensor:
    """The bool mask keeping the ``keep`` weights of largest |w| (ties: the first in
    storage order), or with ``nm = (N, M)`` the N largest of every M consecutive weights
    along dimension 1 of ``weight`` (given as ``[out, in, *kernel]``)."""
    score = weight.detach().abs()
    if nm is None:
        return top_flat(score, [keep])[keep]
    n, m = nm
    moved = score.movedim(1, -1)  # input channels last: groups of M consecutive inputs
    groups = moved.reshape(-1, m)
    order = torch.sort(-groups, dim=1, stable=True).indices[:, :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True)
    return mask.reshape(moved.shape).movedim(-1, 1)


def magnitude_masks(weight: torch.Tensor, keeps: list[int]) -> dict[int, torch.Tensor]:
    """``magnitude_mask(weight, keep=k)`` for every ``k`` of ``keeps``, from one sort: a level
    store prunes all of a layer's levels at once."""
    return top_flat(weight.detach().abs(), keeps)
