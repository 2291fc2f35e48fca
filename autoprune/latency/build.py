"""How a latency table is measured: the blocks of a model, their timing, the correction fit.

The table itself (lookup, JSON, checks) is :mod:`autoprune.latency.table`; this module holds what only
building one needs. See that module's notes for the method and its sources.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.settings import ProfilePlan
from autoprune.latency.measure import make_runner, pinned_threads, time_calls
from autoprune.search_spaces import LayerRow, SearchSpace, call_name
from autoprune.search_spaces.tracing import call_model, conv1d_type

__all__ = ["BlockSpec", "block_followers", "calibration_configs", "fit_correction",
           "measure_blocks_and_networks", "monotone", "op_of", "unit_links", "width_grid"]

_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FOLLOWERS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
              nn.Sigmoid, nn.Tanh, nn.ELU, nn.Mish, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
              nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)

# What one profiled block is: the layer, the modules fused after it, its op description
# (the dedupe key), and its input and output width grids (input grid empty: depthwise).
BlockSpec = tuple[nn.Module, list[nn.Module], dict[str, Any], tuple[int, ...], tuple[int, ...]]



def _isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return np.concatenate([np.full(int(c), m) for m, c in blocks])


def monotone(ms: np.ndarray) -> np.ndarray:
    out = ms.astype(float).copy()
    for _ in range(2):
        out = np.apply_along_axis(_isotonic, 1, out)
        out = np.apply_along_axis(_isotonic, 0, out)
    return np.maximum.accumulate(np.maximum.accumulate(out, axis=0), axis=1)


def width_grid(choices: Sequence[int], points: int, divisor: int = 1) -> tuple[int, ...]:
    """At most ``points`` of ``choices``, evenly spread, always the smallest and the largest."""
    usable = [c for c in choices if c % divisor == 0] or [max(choices)]
    if len(usable) <= points:
        return tuple(usable)
    idx = np.unique(np.round(np.linspace(0, len(usable) - 1, points)).astype(int))
    return tuple(usable[i] for i in idx)



# ---------------------------------------------------------------------- the model's blocks
def _calls(model: nn.Module, inputs: tuple[torch.Tensor, ...]
           ) -> list[tuple[str, nn.Module, int, int]]:
    """Leaf-module calls of one forward pass, in order: (name, module, input ptr, output ptr)."""
    calls: list[tuple[str, nn.Module, int, int]] = []
    hooks = []
    for name, m in model.named_modules():
        if next(m.children(), None) is None:
            def hook(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    calls.append((name, mod, args[0].data_ptr(), out.data_ptr()))
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            call_model(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _linear(module: nn.Module) -> bool:
    """``nn.Linear``, or HF's ``Conv1D`` (a linear layer with its weight stored transposed)."""
    conv1d = conv1d_type()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def block_followers(model: nn.Module, inputs: tuple[torch.Tensor, ...]
                    ) -> dict[str, list[nn.Module]]:
    """For each conv/linear call, the modules that consume its output in a chain: a BatchNorm
    (first), then activations and pools, each reading exactly the previous one's output tensor.
    Keyed like the layer table's rows: a module called again is ``name#2``, ``name#3``..."""
    calls = _calls(copy.deepcopy(model).eval(), inputs)
    out: dict[str, list[nn.Module]] = {}
    seen: dict[str, int] = {}
    for i, (name, mod, _, ptr) in enumerate(calls):
        if not (isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or _linear(mod)):
            continue
        seen[name] = seen.get(name, -1) + 1
        name = call_name(name, seen[name])
        chain: list[nn.Module] = []
        for _, nxt, in_ptr, out_ptr in calls[i + 1:]:
            allowed = _FOLLOWERS if chain else (*_BNS, *_FOLLOWERS)
            if in_ptr != ptr or not isinstance(nxt, allowed):
                break
            chain.append(nxt)
            ptr = out_ptr
        out[name] = chain
    return out


def op_of(module: nn.Module, row: LayerRow, chain: Sequence[nn.Module],
           depthwise: bool) -> dict[str, Any]:
    """What the block runs, besides its widths: the dedupe key and the recipe of the block."""
    then = [type(m).__name__ if isinstance(m, _BNS) else repr(m) for m in chain]
    if _linear(module):
        return {"type": "Linear", "bias": module.bias is not None,
                "rows": row.rows // max(1, row.batch), "then": then}
    return {"type": type(module).__name__, "kernel": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
            "dilation": list(module.dilation),
            "groups": "depthwise" if depthwise else module.groups,
            "bias": module.bias is not None, "padding_mode": module.padding_mode,
            "in_size": list(row.in_size), "then": then}


def _block(module: nn.Module, chain: Sequence[nn.Module], op: Mapping[str, Any], cin: int,
           cout: int, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """A fresh block at widths (cin, cout) and an input for it."""
    if op["type"] == "Linear":
        layers: list[nn.Module] = [nn.Linear(cin, cout, bias=op["bias"])]
        shape = (batch, op["rows"], cin) if op["rows"] > 1 else (batch, cin)
    else:
        groups = cout if op["groups"] == "depthwise" else op["groups"]
        layers = [type(module)(cin, cout, module.kernel_size, stride=module.stride,
                               padding=module.padding, dilation=module.dilation, groups=groups,
                               bias=op["bias"], padding_mode=module.padding_mode)]
        shape = (batch, cin, *op["in_size"])
    for m in chain:
        if isinstance(m, _BNS):
            layers.append(type(m)(cout, eps=m.eps, affine=m.affine,
                                  track_running_stats=m.track_running_stats))
        else:
            layers.append(copy.deepcopy(m))
    return nn.Sequential(*layers).eval(), torch.randn(shape)


def unit_links(space: SearchSpace) -> dict[str, tuple[str | None, str | None]]:
    """For each costed layer, the unit setting its input and its output channels, found through
    the public contract: thin one unit at a time and see which rows change."""
    dense = {r.name: r for r in space.layer_table(space.dense_config())}
    links = {n: [None, None] for n, r in dense.items() if r.kind in ("conv", "linear")}
    for u in space.units:
        thin = {r.name: r for r in space.layer_table({u.name: u.minimum})}
        for name, link in links.items():
            if thin[name].out_channels != dense[name].out_channels:
                link[1] = u.name
            if thin[name].in_channels != dense[name].in_channels:
                link[0] = u.name
    return {n: (i, o) for n, (i, o) in links.items()}



def measure_blocks_and_networks(specs: Sequence[BlockSpec], nets: Sequence[nn.Module],
                 inputs: tuple[torch.Tensor, ...], threads: int, backend: str, clock: str,
                 plan: ProfilePlan, rng: np.random.Generator
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Median block timings per entry (grid-shaped) and all whole-network samples.

    Blocks and networks are timed in ``plan.rounds`` rounds, each over every item in a fresh
    random order, so load from other processes that comes and goes during the build lands on
    blocks and networks alike instead of on a contiguous stretch of them; the whole-network
    correction then sees the same conditions the entries did.
    """
    items: list[tuple[int, int, Any, int, int]] = []  # (entry or -1, point or net, run, w, r)
    shapes = []
    batch = int(inputs[0].shape[0])
    with pinned_threads(threads), torch.inference_mode():
        for e, (module, chain, op, in_grid, out_grid) in enumerate(specs):
            points = [(ci, co) for ci in (in_grid or (0,)) for co in out_grid]
            shapes.append((max(1, len(in_grid)), len(out_grid)))
            for k, (ci, co) in enumerate(points):
                block, x = _block(module, chain, op, ci or co, co, batch)
                run = make_runner(block, (x,), backend=backend, threads=threads)
                items.append((e, k, run, plan.warmup, plan.repeats))
        for n, net in enumerate(nets):
            run = make_runner(net, inputs, backend=backend, threads=threads)
            items.append((-1, n, run, plan.net_warmup, plan.net_repeats))
        samples: list[list[float]] = [[] for _ in items]
        for _ in range(plan.rounds):
            for i in rng.permutation(len(items)):
                _, _, run, warmup, repeats = items[i]
                timings = time_calls(run, warmup=warmup, repeats=repeats)
                samples[i].extend(timings.of(clock) * 1e3)
    ms = [np.zeros(shape) for shape in shapes]
    nets_ms: list[np.ndarray] = [np.empty(0)] * len(nets)
    for (e, k, _, _, _), s in zip(items, samples):
        if e >= 0:
            ms[e].flat[k] = np.median(s)
        else:
            nets_ms[k] = np.asarray(s)
    return ms, nets_ms


def calibration_configs(space: SearchSpace, n: int, rng: np.random.Generator
                         ) -> list[dict[str, int]]:
    """Dense, thinnest, and ``n - 2`` random configurations spread over the width range."""
    configs = [space.dense_config(), space.decode(np.zeros(space.dim))]
    for k in range(n - 2):
        level = (k + 0.5) / (n - 2)
        configs.append(space.decode(np.clip(level + rng.normal(0, 0.25, space.dim), 0, 1)))
    return configs


def fit_correction(sums: np.ndarray, configs: Sequence[Mapping[str, int]],
                   samples: Sequence[np.ndarray]) -> dict[str, Any]:
    """Least-squares ``measured = offset + scale * sums`` (sums of table entries) on whole
    networks measured ``samples``, with its leave-one-out error.

    A network measured while another process held the CPU can sit far off the line; such a
    point (relative residual over 3x the median one and over 10%) is set aside, one at a time
    and at most a quarter of them, and the fit is redone on the rest. Set-aside points stay in
    the file, marked, and count in the reported error.
    """
    measured = np.array([np.median(s) for s in samples])
    inlier = np.ones(len(configs), dtype=bool)
    for _ in range(len(configs) // 4):
        offset, scale = _fit(sums[inlier], measured[inlier])
        rel = np.abs(offset + scale * sums - measured) / measured
        worst = int(np.argmax(np.where(inlier, rel, -1.0)))
        if rel[worst] <= max(0.10, 3 * float(np.median(rel[inlier]))):
            break
        inlier[worst] = False
    offset, scale = _fit(sums[inlier], measured[inlier])
    loo = []
    for i in range(len(configs)):
        keep = inlier & (np.arange(len(configs)) != i)
        o, s = _fit(sums[keep], measured[keep])
        loo.append(abs(o + s * sums[i] - measured[i]) / measured[i])
    fitted = offset + scale * sums
    return {"offset_ms": round(offset, 6), "scale": round(scale, 6),
            "fit_max_abs_rel": round(float(np.max(np.abs(fitted - measured) / measured)), 6),
            "loo_max_abs_rel": round(float(np.max(loo)), 6),
            "loo_median_abs_rel": round(float(np.median(loo)), 6),
            "outliers": int((~inlier).sum()),
            "points": [{"layers_ms": round(float(s), 6), "measured_ms": round(float(m), 6),
                        "p10_ms": round(float(np.percentile(x, 10)), 6),
                        "p90_ms": round(float(np.percentile(x, 90)), 6), "config": dict(c),
                        "outlier": not bool(ok)}
                       for s, m, x, c, ok in zip(sums, measured, samples, configs, inlier)]}


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares y = offset + scale * x; a non-positive scale (noise on too few points)
    falls back to scale 1 with the mean offset, so predictions stay monotone in width."""
    if len(x) >= 2 and np.ptp(x) > 0:
        scale, offset = np.polyfit(x, y, 1)
        if scale > 0:
            return float(offset), float(scale)
    return float(np.mean(y - x)), 1.0
