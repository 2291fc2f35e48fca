"""ERK: Erdos-Renyi-Kernel layer densities (Evci et al., "Rigging the Lottery", ICML 2020).

On the weight-sparsity spaces (``unstructured``, ``nm``) this is RigL's allocation itself:
layer ``l`` keeps a density ``min(1, eps * (n_in + n_out + k_h + k_w) / (n_in * n_out * k_h *
k_w))`` of its weights (``n_in`` per conv group), ``eps`` the one scale that meets the budget,
found by the knob's bisection; layers the formula would make denser than 1 are dense and the
scale is set for the rest, which is RigL's capping and rescaling. On the channel space the same
densities are used as channel keep fractions."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .allocation import KnobAllocationAgent
from .registry import register_agent

__all__ = ["ERKAgent", "erk_factors"]


def erk_factors(layers: tuple[tuple[tuple[int, int, int, int], ...], ...]) -> np.ndarray:
    """Per unit, the ERK factor ``(n_in + n_out + k_h + k_w) / (n_in * n_out * k_h * k_w)`` of
    its layers (averaged over the layers it owns; Evci et al., sec. 3): large layers get low
    density, small ones stay dense. A unit with no costed layer gets the largest factor."""
    factors = []
    for rows in layers:
        vals = [(i + o + kh + kw) / (i * o * kh * kw) for i, o, kh, kw in rows if i * o * kh * kw]
        factors.append(float(np.mean(vals)) if vals else np.nan)
    out = np.asarray(factors)
    top = np.nanmax(out) if np.isfinite(out).any() else 1.0
    return np.where(np.isfinite(out), out, top)


@register_agent("erk")
class ERKAgent(KnobAllocationAgent):
    """Erdos-Renyi-Kernel densities: small layers stay dense (Evci et al., RigL)."""

    context_needs: ClassVar[frozenset[str]] = frozenset({"layers"})

    def fractions(self, s: float) -> np.ndarray:
        # RigL: density_l = eps * factor_l, capped at 1 (capped layers are dense and eps is set
        # for the rest); eps is what meets the budget, i.e. the knob. With eps = s * K the
        # family runs from nothing kept (s = 0) to every unit dense (s = 1).
        f = erk_factors(self._require_context().layers)
        return np.minimum(1.0, s * f / float(f.min()))
