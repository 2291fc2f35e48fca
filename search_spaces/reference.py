"""The reference counts a space's costs are held to: what a user would count by hand.

- MACs: ``torch.utils.flop_counter`` (2 FLOPs per multiply-accumulate), run with grad enabled
  (inference fast paths, e.g. ``nn.TransformerEncoderLayer`` in eval mode, hide their work
  from it) and under the math attention backend (the default CPU kernel of
  ``scaled_dot_product_attention`` counts 0); plus the gate matmuls of recurrent layers, which
  the counter does not see at all on this CPU (the LSTM kernel), by formula:
  ``B * T * gates * H * (I + H)`` per layer and direction (and ``B * T * H * P`` for an LSTM's
  projection), in place of whatever the counter saw inside a recurrent layer (a GRU runs as
  plain matmuls it does count).
- ``torch._grouped_mm`` (``transformers``' fused mixture-of-experts, its default experts
  implementation), which the counter has no formula for, by the rows it multiplies: with
  ``offs``, the rows up to the last offset (each routed token-expert pair once) times ``K x N``
  (``grouped_mm_flops``, registered with the counter when this module is imported).
- Parameters: every parameter the model holds, shared ones once, free ones (class tokens,
  position tables, ``MultiheadAttention``'s in-projection) included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from .tracing import call_model

__all__ = ["grouped_mm_flops", "recurrent_macs", "recurrent_steps", "reference_macs", "reference_params"]


def grouped_mm_flops(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor | None = None,
                     *args: object, out_val: object = None, **kwargs: object) -> int:
    """FLOPs (2 per multiply-accumulate) of ``torch._grouped_mm(a, b, offs)``: a 2-D ``a``
    against a 3-D ``b`` ([groups, K, N]) multiplies ``a``'s first ``offs[-1]`` rows (rows past
    the last offset are skipped); a 2-D ``b`` groups ``K`` by ``offs``; 3-D by 3-D is a batch."""
    rows = int(a.shape[-2])
    k = int(a.shape[-1])
    n = int(b.shape[-1])
    batch = int(a.shape[0]) if a.dim() == 3 else 1
    if offs is not None and a.dim() == 2 and b.dim() == 3:
        rows = int(offs[-1]) if offs.numel() else 0
    elif offs is not None and a.dim() == 2 and b.dim() == 2:
        k = int(offs[-1]) if offs.numel() else 0
    return 2 * batch * rows * k * n


_GROUPED_MM = getattr(torch.ops.aten, "_grouped_mm", None)
if _GROUPED_MM is not None and _GROUPED_MM not in FlopCounterMode(display=False).flop_registry:
    register_flop_formula(_GROUPED_MM, get_raw=True)(grouped_mm_flops)


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
