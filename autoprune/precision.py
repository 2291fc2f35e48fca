"""A search in half precision: the dense weights and every trial in ``bfloat16`` or ``float16``.

A model of a billion weights takes 4.4 GB in float32 and 2.2 GB in bfloat16, and so does every
network a search builds from it. ``autoprune.placement.placed(model, dtype=)`` gives the model
at the search's dtype without a float32 copy on the way (its modules are copied, its weights
converted one by one), with a forward pre-hook (``cast_inputs``) that casts floating inputs to
it, so that evaluators and data loaders written for float32 keep working. Costs follow: ``size=`` budgets count the stored bytes of the
weights' dtype (``value_bytes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


__all__ = ["DTYPES", "as_example", "cast_inputs", "model_dtype", "parse_dtype", "value_bytes"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` (or a torch dtype) as a torch dtype; anything else one clear error."""
    if isinstance(name, torch.dtype) and name in DTYPES.values():
        return name
    if isinstance(name, str) and name.removeprefix("torch.") in DTYPES:
        return DTYPES[name.removeprefix("torch.")]
    raise ValueError(f"unknown dtype {name!r}. Fix: use one of {', '.join(DTYPES)}")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating weights (float32 for a model without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def value_bytes(model: nn.Module) -> int:
    """Bytes one stored weight of ``model`` takes."""
    return torch.empty(0, dtype=model_dtype(model)).element_size()


def cast_inputs(dtype: torch.dtype, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
                 and a.dtype != dtype else a for a in args)


def as_example(inputs: torch.Tensor | Sequence[torch.Tensor], dtype: torch.dtype
               ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Example inputs with their floating tensors in ``dtype`` (token ids stay as they are)."""
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
    if isinstance(inputs, torch.Tensor):
        return cast(inputs)
    return tuple(cast(t) for t in inputs)
