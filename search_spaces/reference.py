"""The reference counts a space's costs are held to: what a user would count by hand.

- MACs: ``torch.utils.flop_counter`` (2 FLOPs per multiply-accumulate), run with grad enabled
  (inference fast paths, e.g. ``nn.TransformerEncoderLayer`` in eval mode, hide their work
  from it) and under the math attention backend (the default CPU kernel of
  ``scaled_dot_product_attention`` counts 0); plus the gate matmuls of recurrent layers, which
  the counter does not see at all on this CPU (the LSTM kernel), by formula:
  ``B * T * gates * H * (I + H)`` per layer and direction (and ``B * T * H * P`` for an LSTM's
  projection), in place of whatever the counter saw inside a recurrent layer (a GRU runs as
  plain matmuls it does count).
- Parameters: every parameter the model holds, shared ones once, free ones (class tokens,
  position tables, ``MultiheadAttention``'s in-projection) included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .tracing import call_model

__all__ = ["recurrent_macs", "recurrent_steps", "reference_macs", "reference_params"]


def reference_params(model: nn.Module) -> int:
    """Every parameter of ``model``, a shared one counted once."""
    return sum(p.numel() for p in model.parameters())


def recurrent_steps(module: nn.RNNBase, x: torch.Tensor) -> int:
    """Batch x time of one call of a recurrent layer on ``x`` (packed sequences: their rows)."""
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return int(x.data.shape[0])
    if x.dim() == 2:  # unbatched (T, I)
        return int(x.shape[0])
    return int(x.shape[0]) * int(x.shape[1])


def recurrent_macs(module: nn.RNNBase, steps: int) -> int:
    """Gate matmuls of ``module`` over ``steps`` = batch x time input vectors: every weight
    matrix of every layer and direction (input, hidden and projection) times the steps."""
    return steps * sum(p.numel() for name, p in module.named_parameters(recurse=False)
                       if name.startswith("weight_"))


def reference_macs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``inputs``, counted as the
    module docstring says."""
    steps: list[tuple[nn.RNNBase, int]] = []
    hooks = [m.register_forward_pre_hook(
        lambda mod, args: steps.append((mod, recurrent_steps(mod, args[0]))))
        for m in model.modules() if isinstance(m, nn.RNNBase)]
    counter = FlopCounterMode(display=False)
    try:
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            call_model(model, tuple(inputs))
    finally:
        for h in hooks:
            h.remove()
    # where the counter did see a recurrent layer's matmuls (a CPU path that decomposes it, as
    # for GRUs), they are replaced by the formula rather than counted twice
    seen = counter.get_flop_counts()
    prefix = type(model).__name__
    names = {m: n for n, m in model.named_modules()}
    counted = sum(sum(seen.get(f"{prefix}.{names[m]}" if names[m] else prefix, {}).values())
                  for m in {m for m, _ in steps})
    return (counter.get_total_flops() - counted) // 2 + sum(recurrent_macs(m, s) for m, s in steps)
