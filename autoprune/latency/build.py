"""How a latency table is measured: the blocks of a model and their timing.

The table itself (lookup, JSON) is :mod:`autoprune.latency.table`, its whole-network
correction and held-out check :mod:`autoprune.latency.correction`; this module holds what only
measuring needs. See the table module's notes for the method and its sources.
"""

from __future__ import annotations

import copy
import gc
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from autoprune.settings import ProfilePlan
from autoprune.latency.measure import make_runner, pinned_threads, time_calls
from autoprune.latency.grid import Layer, layer
from autoprune.search_spaces import LayerRow, SearchSpace, call_name
from autoprune.search_spaces.tracing import call_model, conv1d_type

__all__ = ["BlockSpec", "ExtraLayer", "attention_and_norm_layers", "block_followers",
           "block_module", "grid_points", "mapped_grid", "measure_blocks_and_networks",
           "monotone", "op_of", "profiled_space", "row_widths", "table_blocks", "unit_links",
           "weight_mb", "width_grid"]

_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FOLLOWERS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
              nn.Sigmoid, nn.Tanh, nn.ELU, nn.Mish, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
              nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
# Norms timed as blocks of their own (a BatchNorm is fused into its conv's block instead).
_NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def _follows(module: nn.Module, allowed: tuple[type[nn.Module], ...]) -> bool:
    """A module fused after a layer: one of ``allowed``, or one of Hugging Face's activation
    modules (``GELUActivation``, ``NewGELUActivation``...)."""
    return isinstance(module, allowed) or type(module).__module__ == "transformers.activations"

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
           ) -> list[tuple[str, nn.Module, int, int, tuple[int, ...]]]:
    """Leaf-module calls of one forward pass, in order: (name, module, input ptr, output ptr,
    per-sample input shape)."""
    calls: list[tuple[str, nn.Module, int, int, tuple[int, ...]]] = []
    hooks = []
    for name, m in model.named_modules():
        if next(m.children(), None) is None:
            def hook(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                    calls.append((name, mod, args[0].data_ptr(), out.data_ptr(),
                                  tuple(args[0].shape[1:])))
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
    for i, (name, mod, _, ptr, _) in enumerate(calls):
        if not (isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or _linear(mod)):
            continue
        seen[name] = seen.get(name, -1) + 1
        name = call_name(name, seen[name])
        chain: list[nn.Module] = []
        for _, nxt, in_ptr, out_ptr, _ in calls[i + 1:]:
            allowed = _FOLLOWERS if chain else (*_BNS, *_FOLLOWERS)
            if in_ptr != ptr or not _follows(nxt, allowed):
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


def _block(module: nn.Module | None, chain: Sequence[nn.Module], op: Mapping[str, Any], cin: int,
           cout: int, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """A fresh block at widths (cin, cout) and an input for it."""
    if op["type"] == "attention":  # cin: head size, cout: heads x query tokens
        core = _AttentionCore(op, cin, cout, batch).eval()
        return core, torch.randn(batch, core.k.shape[1], op["tokens_q"], cin)
    if module is not None and isinstance(module, _NORMS):
        norm = type(module)(cout, eps=op["eps"], elementwise_affine=op["affine"])
        return norm.eval(), torch.randn(batch, *op["prefix"], cout)
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


# ------------------------------------------------------- norms and attention cores as blocks
@dataclass(frozen=True, kw_only=True)
class ExtraLayer:
    """A layer-norm call or an attention core (its two matmuls and the softmax between them)
    the table times as a block. Its widths are quantities of its layer-table row -- a norm's
    width; a core's head size (``in``) and rows, heads x query tokens (``out``) -- each an
    affine function ``offset + scale * value`` of one unit's value (None: fixed)."""

    name: str
    module: nn.Module | None
    op: dict[str, Any]
    in_grid: tuple[int, ...]
    out_grid: tuple[int, ...]
    in_link: tuple[str, float, float] | None
    out_link: tuple[str, float, float] | None
    in_full: int
    out_full: int


def row_widths(op: Mapping[str, Any], row: LayerRow) -> tuple[int, int]:
    """The (in, out) quantities of ``row`` an entry of ``op`` is looked up at."""
    if op.get("type") == "attention":
        return row.in_channels, _matmul_rows(row)
    return row.out_channels, row.out_channels


def weight_mb(op: Mapping[str, Any], cin: int, cout: int) -> float:
    """Megabytes of float32 weights of one costed layer at these widths (0 for an attention
    core or a norm)."""
    if op.get("type") == "Linear":
        return 4e-6 * cin * cout
    if "kernel" not in op:
        return 0.0
    k = math.prod(op["kernel"])
    groups = op.get("groups", 1)
    per = cout * k if groups == "depthwise" else cin * cout * k / max(1, int(groups))
    return 4e-6 * per


def _matmul_rows(row: LayerRow) -> int:
    """Rows per sample of a matmul row (heads x query tokens), from its exact MACs: a pruned
    configuration's MACs follow its heads, its dense row counts do not."""
    return int(round(row.macs / max(1, row.in_channels * row.out_channels * max(1, row.batch))))


class _SDPACalls(TorchFunctionMode):
    """Records every ``F.scaled_dot_product_attention`` call: shapes and flags."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "scaled_dot_product_attention":
            q, k = args[0], args[1]
            self.calls.append({"heads": int(q.shape[-3]) if q.dim() >= 3 else 1,
                               "tokens_q": int(q.shape[-2]), "tokens_k": int(k.shape[-2]),
                               "causal": bool(kwargs.get("is_causal", args[5] if len(args) > 5 else False)),
                               "mask": (kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
                                        is not None)})
        return func(*args, **kwargs)


def _norm_shapes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, list[tuple[int, ...]]]:
    """Per norm module, the per-sample input shape of each call."""
    shapes: dict[str, list[tuple[int, ...]]] = {}
    for name, module, _, _, shape in _calls(model, inputs):
        if isinstance(module, _NORMS):
            shapes.setdefault(name, []).append(shape)
    return shapes


def _affine_links(space: SearchSpace, quantity: Mapping[str, Any]
                  ) -> dict[str, list[tuple[str, float, float] | None]]:
    """For each named row, the unit (if any) that moves its in and out quantities
    (``quantity[name](row) -> (in, out)``), and the line through dense and thinnest."""
    dense = {r.name: r for r in space.layer_table(space.dense_config()) if r.name in quantity}
    links: dict[str, list[tuple[str, float, float] | None]] = {n: [None, None] for n in dense}
    for u in space.units:
        thin = {r.name: r for r in space.layer_table({u.name: u.minimum})}
        for name, link in links.items():
            full_q, min_q = quantity[name](dense[name]), quantity[name](thin[name])
            for axis in (0, 1):
                if full_q[axis] != min_q[axis] and u.full != u.minimum:
                    scale = (full_q[axis] - min_q[axis]) / (u.full - u.minimum)
                    link[axis] = (u.name, float(full_q[axis] - scale * u.full), float(scale))
    return links


def mapped_grid(link: tuple[str, float, float] | None, full: int,
                choices: Mapping[str, Sequence[int]], points: int, divisor: int = 1
                ) -> tuple[int, ...]:
    """At most ``points`` widths a layer takes: its unit's choices (evenly spread) through
    the unit's line, multiples of ``divisor``; ``(full,)`` for a layer no unit moves."""
    if link is None:
        return (full,)
    unit, offset, scale = link
    values = sorted({int(round(offset + scale * v)) for v in choices[unit]})
    return width_grid([v for v in values if v >= 1] or [full], points, divisor)


def attention_and_norm_layers(model: nn.Module, inputs: tuple[torch.Tensor, ...],
                              space: SearchSpace, points: int) -> list[ExtraLayer]:
    """The layer norms and attention cores of ``model`` as blocks to time. A core is a pair
    of consecutive matmul rows of one module (scores, then values); it runs as
    ``F.scaled_dot_product_attention`` when the model calls it (as often as there are pairs),
    else as matmul, softmax, matmul. Anything else stays to the whole-network correction."""
    named = dict(model.named_modules())
    rows = space.layer_table(space.dense_config())
    capture = _SDPACalls()
    with torch.no_grad(), capture:
        call_model(copy.deepcopy(model).eval(), inputs)
    shapes = _norm_shapes(copy.deepcopy(model).eval(), inputs)
    quantity: dict[str, Any] = {}
    ops: dict[str, dict[str, Any]] = {}
    norm_calls: dict[str, int] = {}
    for r in rows:
        if r.kind == "norm" and isinstance(named.get(r.module), _NORMS):
            m, k = named[r.module], norm_calls.get(r.module, 0)
            norm_calls[r.module] = k + 1
            if k < len(shapes.get(r.module, [])):
                ops[r.name] = {"type": type(m).__name__, "eps": m.eps,
                               "affine": bool(getattr(m, "elementwise_affine", True)),
                               "prefix": list(shapes[r.module][k][:-1])}
                quantity[r.name] = lambda row: (row.out_channels, row.out_channels)
    matmuls: dict[str, list[LayerRow]] = {}
    for r in rows:
        if r.kind == "matmul":
            matmuls.setdefault(r.name.split(":", 1)[0], []).append(r)
    pairs = [(group[i], group[i + 1]) for group in matmuls.values()
             for i in range(0, len(group) - 1, 2)]
    sdpa = len(capture.calls) == len(pairs)
    for i, (scores, values) in enumerate(pairs):
        per = _matmul_rows(scores)
        call = capture.calls[i] if sdpa else {"tokens_q": scores.out_channels,
                                               "tokens_k": scores.out_channels,
                                               "causal": False, "mask": False}
        if call["mask"] or per % call["tokens_q"] or scores.out_channels != call["tokens_k"]:
            continue  # a masked or unusual core: left to the correction
        ops[scores.name] = {"type": "attention", "sdpa": sdpa, "causal": call["causal"],
                            "tokens_q": call["tokens_q"], "tokens_k": call["tokens_k"],
                            "value_ratio": values.out_channels / max(1, scores.in_channels)}
        quantity[scores.name] = lambda row: (row.in_channels, _matmul_rows(row))
    links = _affine_links(space, quantity)
    choices = {u.name: u.choices for u in space.units}
    dense = {r.name: r for r in rows}
    out = []
    for name, op in ops.items():
        cin, cout = quantity[name](dense[name])
        in_link, out_link = links[name]
        norm = op["type"] != "attention"
        out.append(ExtraLayer(
            name=name, module=None if not norm else named[dense[name].module], op=op,
            in_grid=() if norm else mapped_grid(in_link, cin, choices, points),
            out_grid=mapped_grid(out_link, cout, choices, points), in_link=None if norm else in_link,
            out_link=out_link, in_full=cin, out_full=cout))
    return out


class _AttentionCore(nn.Module):
    """One attention core at given heads and sizes: queries in, keys and values held."""

    def __init__(self, op: Mapping[str, Any], head_dim: int, rows: int, batch: int) -> None:
        super().__init__()
        heads = max(1, rows // op["tokens_q"])
        value_dim = max(1, round(op["value_ratio"] * head_dim))
        self.sdpa, self.causal = op["sdpa"], op["causal"]
        self.register_buffer("k", torch.randn(batch, heads, op["tokens_k"], head_dim))
        self.register_buffer("v", torch.randn(batch, heads, op["tokens_k"], value_dim))
        self.scale = head_dim ** -0.5

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        if self.sdpa:
            return F.scaled_dot_product_attention(q, self.k, self.v, is_causal=self.causal)
        return torch.softmax(q @ self.k.transpose(-2, -1) * self.scale, dim=-1) @ self.v


def profiled_space(space: SearchSpace) -> SearchSpace:
    """The space whose units set the widths a table profiles and predicts: the space itself,
    or a composite's own ``latency_space`` (channel+unstructured: its channel part, since
    masking single weights changes no width and its rows have the channel space's widths)."""
    return getattr(space, "latency_space", None) or space


def unit_links(space: SearchSpace) -> dict[str, list[tuple[str, float, float] | None]]:
    """For each conv and linear row, the unit setting its input and its output channels and
    the line from that unit's value to the channels (a heads unit: head size x heads), found
    through the public contract: thin one unit at a time and see which rows change."""
    rows = space.layer_table(space.dense_config())
    return _affine_links(space, {r.name: lambda row: (row.in_channels, row.out_channels)
                                 for r in rows if r.kind in ("conv", "linear")})


def table_blocks(model: nn.Module, one: tuple[torch.Tensor, ...], space: SearchSpace,
                 grid: int) -> tuple[list[BlockSpec], list[Layer]]:
    """The distinct blocks a table times (``one``: inputs of batch 1) and, for every costed
    layer of ``space``, the entry it reads and where its widths come from. Layers that run
    the same block over the same widths share one entry."""
    named = dict(model.named_modules())
    chains = block_followers(model, one)
    links = unit_links(space)
    choices = {u.name: u.choices for u in space.units}
    keys: dict[str, int] = {}
    specs: list[BlockSpec] = []
    layers: list[Layer] = []
    for row in space.layer_table(space.dense_config()):
        if row.kind not in ("conv", "linear"):
            continue
        module = named[row.module]
        in_link, out_link = links[row.name]
        depthwise = row.kind == "conv" and 1 < row.groups == row.in_channels == row.out_channels
        div = 1 if depthwise or row.kind == "linear" else row.groups
        out_grid = mapped_grid(out_link, row.out_channels, choices, grid, div)
        in_grid: tuple[int, ...] = () if depthwise else mapped_grid(
            in_link, row.in_channels, choices, grid, div)
        op = op_of(module, row, chains.get(row.name, []), depthwise)
        key = json.dumps([op, in_grid, out_grid], sort_keys=True)
        if key not in keys:
            keys[key] = len(specs)
            specs.append((module, chains.get(row.name, []), op, in_grid, out_grid))
        layers.append(layer(row.name, keys[key], in_link, out_link, row.in_channels,
                            row.out_channels, depthwise))
    for extra in attention_and_norm_layers(model, one, space, grid):
        key = json.dumps([extra.op, extra.in_grid, extra.out_grid], sort_keys=True)
        if key not in keys:
            keys[key] = len(specs)
            specs.append((extra.module, [], extra.op, extra.in_grid, extra.out_grid))
        layers.append(layer(extra.name, keys[key], extra.in_link, extra.out_link,
                            extra.in_full, extra.out_full, not extra.in_grid))
    return specs, layers


def grid_points(spec: BlockSpec) -> list[tuple[int, int]]:
    """The (input, output) widths a block is timed at, in the order of its entry's timings
    (row-major; the input 0 for a depthwise block, whose input follows its output)."""
    _, _, _, in_grid, out_grid = spec
    return [(ci, co) for ci in (in_grid or (0,)) for co in out_grid]


def block_module(spec: BlockSpec, ci: int, co: int, batch: int,
                 dtype: torch.dtype | None = None) -> tuple[nn.Module, torch.Tensor]:
    """The block of ``spec`` at one grid point, and an input for it (in ``dtype``)."""
    module, chain, op, _, _ = spec
    block, x = _block(module, chain, op, ci or co, co, batch)
    if dtype is not None:
        block, x = block.to(dtype), (x.to(dtype) if x.is_floating_point() else x)
    return block, x


def measure_blocks_and_networks(specs: Sequence[BlockSpec], nets: Sequence[nn.Module],
                 inputs: tuple[torch.Tensor, ...], threads: int, backend: str, clock: str,
                 plan: ProfilePlan, rng: np.random.Generator, *, gpu: int = 0,
                 dtype: torch.dtype | None = None
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Median block timings per entry (grid-shaped) and all whole-network samples.

    ``gpu``: the GPU a GPU backend runs on (blocks and networks are moved there by their
    runners; the cuda backend's runners synchronize in ``time_calls``). ``dtype``: the
    floating dtype blocks are built in (``None``: float32), the model's on a GPU, where bf16 and
    fp16 run on other kernels than float32.

    Blocks and networks are timed in ``plan.rounds`` rounds, so load from other processes
    that comes and goes during the build lands on blocks and networks alike instead of on a
    contiguous stretch of them; the whole-network correction then sees the same conditions the
    entries did. Within a round the blocks come first, each in a fresh random order, then the
    networks, in a fresh random order of their own after a garbage collection, as a user times
    networks one after another. Timed between single-layer blocks instead, the same networks ran
    10-15% slower than on their own right after the build (MobileNet-V2 at 32 px, builds whose
    re-measurement noise was 2%), and the correction carried that offset into every prediction.
    """
    items: list[tuple[int, int, Any, int, int]] = []  # (entry or -1, point or net, run, w, r)
    shapes = []
    batch = int(inputs[0].shape[0])
    with pinned_threads(threads), torch.inference_mode():
        for e, spec in enumerate(specs):
            shapes.append((max(1, len(spec[3])), len(spec[4])))
            for k, (ci, co) in enumerate(grid_points(spec)):
                block, x = block_module(spec, ci, co, batch, dtype)
                run = make_runner(block, (x,), backend=backend, threads=threads, gpu=gpu)
                items.append((e, k, run, plan.warmup, plan.repeats))
        n_blocks = len(items)
        for n, net in enumerate(nets):
            run = make_runner(net, inputs, backend=backend, threads=threads, gpu=gpu)
            items.append((-1, n, run, plan.net_warmup, plan.net_repeats))
        samples: list[list[float]] = [[] for _ in items]
        for _ in range(plan.rounds):
            blocks = rng.permutation(n_blocks)
            networks = n_blocks + rng.permutation(len(items) - n_blocks)
            for phase in (blocks, networks):
                gc.collect()
                for i in phase:
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
