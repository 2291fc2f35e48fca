"""How a latency table is measured: the blocks of a model, their timing, the correction fit.

The table itself (lookup, JSON, checks) is :mod:`autoprune.latency.table`; this module holds what only
building one needs. See that module's notes for the method and its sources.
"""

from __future__ import annotations

import copy
import gc
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
from autoprune.search_spaces import LayerRow, SearchSpace, call_name
from autoprune.search_spaces.tracing import call_model, conv1d_type

__all__ = ["BlockSpec", "ExtraLayer", "attention_and_norm_layers", "block_followers",
           "calibration_configs", "check_on_holdout", "fit_correction", "holdout_configs", "mapped_grid", "measure_blocks_and_networks",
           "monotone",
           "op_of", "profiled_space", "unit_links", "width_grid"]

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


def measure_blocks_and_networks(specs: Sequence[BlockSpec], nets: Sequence[nn.Module],
                 inputs: tuple[torch.Tensor, ...], threads: int, backend: str, clock: str,
                 plan: ProfilePlan, rng: np.random.Generator
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Median block timings per entry (grid-shaped) and all whole-network samples.

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
        for e, (module, chain, op, in_grid, out_grid) in enumerate(specs):
            points = [(ci, co) for ci in (in_grid or (0,)) for co in out_grid]
            shapes.append((max(1, len(in_grid)), len(out_grid)))
            for k, (ci, co) in enumerate(points):
                block, x = _block(module, chain, op, ci or co, co, batch)
                run = make_runner(block, (x,), backend=backend, threads=threads)
                items.append((e, k, run, plan.warmup, plan.repeats))
        n_blocks = len(items)
        for n, net in enumerate(nets):
            run = make_runner(net, inputs, backend=backend, threads=threads)
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


def calibration_configs(space: SearchSpace, n: int, rng: np.random.Generator
                         ) -> list[dict[str, int]]:
    """Dense, thinnest, and ``n - 2`` random configurations spread over the width range."""
    configs = [space.dense_config(), space.decode(np.zeros(space.dim))]
    for k in range(n - 2):
        level = (k + 0.5) / (n - 2)
        configs.append(space.decode(np.clip(level + rng.normal(0, 0.25, space.dim), 0, 1)))
    return configs


def holdout_configs(space: SearchSpace, n: int, rng: np.random.Generator,
                    exclude: Sequence[Mapping[str, int]] = ()) -> list[dict[str, int]]:
    """``n`` random configurations the correction is not fitted on (none of ``exclude``, where
    the space has room): a width level per network drawn uniformly, plus per-unit noise, as a
    search's candidates spread."""
    def draw() -> dict[str, int]:
        return space.decode(np.clip(rng.uniform(0, 1) + rng.normal(0, 0.3, space.dim), 0, 1))

    out: list[dict[str, int]] = []
    for _ in range(50 * n):  # a space too small to avoid them takes repeats below
        if len(out) == n:
            return out
        config = draw()
        if config not in exclude:
            out.append(config)
    return out + [draw() for _ in range(n - len(out))]


#: A table passes its check when its median error on the held-out networks is at most this,
#: or twice the machine's own re-measurement noise in the same build if that is larger.
CHECK_MEDIAN_LIMIT = 0.05

#: A build whose machine disagreed with itself by more than this (the check's round-to-round
#: re-measurement noise) is built once more even when it passed, and the quieter attempt kept:
#: over 21 tables built on one noisy day, the four built at over 10% noise missed later
#: measurements by a median 14% (up to 35%), the others by 5.5%.
NOISY_BUILD = 0.10


def check_on_holdout(predicted: np.ndarray, samples: Sequence[np.ndarray], repeats: int,
                     configs: Sequence[Mapping[str, int]]) -> dict[str, Any]:
    """The table's error on whole networks it was not fitted on, measured in the same rounds
    as its blocks, against the noise of the machine then: each network's samples split by
    round (even rounds against odd), the median disagreement of the two halves."""
    measured = np.array([np.median(s) for s in samples])
    rel = predicted / measured - 1.0
    halves = []
    for s in samples:
        rounds = np.asarray(s).reshape(-1, repeats)
        if len(rounds) >= 2:
            halves.append(abs(np.median(rounds[0::2]) / np.median(rounds[1::2]) - 1.0))
    noise = float(np.median(halves)) if halves else 0.0
    limit = max(CHECK_MEDIAN_LIMIT, 2.0 * noise)
    median = float(np.median(np.abs(rel)))
    return {"networks": len(configs), "median_abs_rel": round(median, 6),
            "max_abs_rel": round(float(np.max(np.abs(rel))), 6),
            "within_10pct": round(float(np.mean(np.abs(rel) <= 0.10)), 6),
            "retest_median_abs_rel": round(noise, 6), "limit": round(limit, 6),
            "passed": bool(median <= limit),
            "points": [{"predicted_ms": round(float(p), 6), "measured_ms": round(float(m), 6),
                        "config": dict(c)} for p, m, c in zip(predicted, measured, configs)]}


#: Knees tried for the whole-network weight term (MB of weights beyond which every further
#: megabyte costs time: the share of the last-level cache a network's weights keep).
MEMORY_KNEES_MB = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)

#: The weight term is kept only when it cuts the leave-one-out median error by this share and
#: by at least one point (at the noise floor an extra term fits the noise).
MEMORY_GAIN = 0.25


def fit_correction(sums: np.ndarray, configs: Sequence[Mapping[str, int]],
                   samples: Sequence[np.ndarray],
                   weights_mb: np.ndarray | None = None) -> dict[str, Any]:
    """Least-squares ``measured = offset + scale * sums`` (sums of table entries; relative
    residuals, see ``_fit``) on whole networks measured ``samples``, with its leave-one-out
    error; with ``weights_mb`` (each network's weight megabytes), a term
    ``ms_per_mb * max(0, weights_mb - knee)`` as well where it predicts clearly better.

    A network measured while another process held the CPU can sit far off the line; such a
    point (relative residual over 3x the median one and over 10%) is set aside, one at a time
    and at most a quarter of them, and the fit is redone on the rest. Set-aside points stay in
    the file, marked, and count in the reported error.

    The weight term: an isolated block's weights stay in the cache between its timed calls,
    a whole network's do not once they outgrow it, and every call then streams them from
    memory. onnxruntime's VGG-11 at 32 px ran 19-21 ms per GMAC below ~15 MB of weights and 31
    above (dense 37 MB), so a line in the block sums put small networks 20-35% too slow and
    large ones 10-16% too fast. The knee is one of ``MEMORY_KNEES_MB`` and the term is kept
    only if its leave-one-out median error is ``MEMORY_GAIN`` (and a point) below the line's.
    """
    measured = np.array([np.median(s) for s in samples])
    n = len(configs)
    inlier = np.ones(n, dtype=bool)
    for _ in range(n // 4):
        offset, scale = _fit(sums[inlier], measured[inlier])
        rel = np.abs(offset + scale * sums - measured) / measured
        worst = int(np.argmax(np.where(inlier, rel, -1.0)))
        if rel[worst] <= max(0.10, 3 * float(np.median(rel[inlier]))):
            break
        inlier[worst] = False

    def model(knee: float | None, keep: np.ndarray) -> tuple[float, float, float] | None:
        if knee is None:
            return (*_fit(sums[keep], measured[keep]), 0.0)
        return _fit_memory(sums[keep], np.maximum(0.0, weights_mb[keep] - knee), measured[keep])

    def predicted(coef: tuple[float, float, float], knee: float | None, i: Any) -> Any:
        excess = 0.0 if knee is None else np.maximum(0.0, weights_mb[i] - knee)
        return coef[0] + coef[1] * sums[i] + coef[2] * excess

    def loo(knee: float | None) -> list[float] | None:
        out = []
        for i in range(n):
            coef = model(knee, inlier & (np.arange(n) != i))
            if coef is None:
                return None
            out.append(abs(predicted(coef, knee, i) - measured[i]) / measured[i])
        return out

    knee: float | None = None
    errors = best = loo(None) or []  # the line's fit never fails: [] is for the type only
    if weights_mb is not None and np.ptp(weights_mb) > 0 and inlier.sum() >= 6:
        for k in MEMORY_KNEES_MB:
            if k >= float(np.max(weights_mb)):
                break
            e = loo(k)
            if e is not None and model(k, inlier) is not None and (
                    np.median(e) < min((1 - MEMORY_GAIN) * np.median(errors),
                                       np.median(errors) - 0.01)
                    and np.median(e) < np.median(best)):
                knee, best = k, e
        errors = best
    offset, scale, per_mb = model(knee, inlier)
    fitted = predicted((offset, scale, per_mb), knee, slice(None))
    out = {"offset_ms": round(offset, 6), "scale": round(scale, 6),
           "fit_max_abs_rel": round(float(np.max(np.abs(fitted - measured) / measured)), 6),
           "loo_max_abs_rel": round(float(np.max(errors)), 6),
           "loo_median_abs_rel": round(float(np.median(errors)), 6),
           "outliers": int((~inlier).sum()),
           "points": [{"layers_ms": round(float(s), 6), "measured_ms": round(float(m), 6),
                       "p10_ms": round(float(np.percentile(x, 10)), 6),
                       "p90_ms": round(float(np.percentile(x, 90)), 6), "config": dict(c),
                       "outlier": not bool(ok)}
                      for s, m, x, c, ok in zip(sums, measured, samples, configs, inlier)]}
    if weights_mb is not None:
        for point, w in zip(out["points"], weights_mb):
            point["weights_mb"] = round(float(w), 6)
    if knee is not None:
        out["memory"] = {"knee_mb": knee, "ms_per_mb": round(per_mb, 6)}
    return out


def _fit_memory(x: np.ndarray, excess: np.ndarray, y: np.ndarray
                ) -> tuple[float, float, float] | None:
    """``y = offset + scale * x + per_mb * excess`` on relative residuals, or ``None`` where
    the scale or the per-megabyte cost comes out non-positive (no such effect to fit)."""
    if len(x) < 4 or np.ptp(excess) <= 0:
        return None
    a = np.stack([np.ones_like(x), x, excess], axis=1) / y[:, None]
    (offset, scale, per_mb), *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
    if scale <= 0 or per_mb <= 0:
        return None
    return float(offset), float(scale), float(per_mb)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares ``y = offset + scale * x`` on relative residuals (each point weighted by
    ``1 / y``): the table is judged by its relative error, and an absolute fit let the dense
    networks' milliseconds pull the line, leaving the thinnest networks off by a factor (an
    onnxruntime MobileNet-V2's thinnest calibration network fitted at 0.18 ms, measured 0.34
    ms, and set aside as an outlier). A non-positive scale (noise on too few points) falls back
    to scale 1 with the mean offset, so predictions stay monotone in width."""
    if len(x) >= 2 and np.ptp(x) > 0:
        scale, offset = np.polyfit(x, y, 1, w=1.0 / y)
        if scale > 0:
            return float(offset), float(scale)
    return float(np.mean(y - x)), 1.0
