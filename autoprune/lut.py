"""On-device latency lookup tables: per-layer timings on a grid of widths, summed and calibrated.

How a table is built (``LatencyTable.build``), on the device the latency is wanted for:

1. Every costed layer (conv / linear) of the channel space's layer table becomes a small block
   of the ops that run on its output in the real model: the layer, its BatchNorm and its
   activation (and a following pool), found by following the tensor through one forward pass.
   nn-Meter (Zhang et al., MobiSys 2021) predicts per fused kernel the same way
   (conv+bn+relu as one unit) because isolated per-op timings miss fusion.
2. Layers that would run the same block over the same widths are profiled once (a ResNet-56
   has 57 convs but about ten distinct blocks).
3. Each block is timed at a coarse grid of (input, output) widths the space can produce, in
   interleaved, shuffled rounds so a burst of load from another process spreads over many
   entries instead of corrupting one; the median of all samples is kept. Latency between grid
   widths is bilinear in (input, output) channels. Entries are made non-decreasing in width
   (isotonic regression, then a running maximum): the search's repair bisects on costs and
   needs them monotone, and a wider layer measuring faster on a coarse grid is noise.
4. Sums of isolated blocks miss what runs between them (residual adds, pools, the head) and
   framework overhead, so a whole-network correction ``measured = offset + scale * sum`` is
   fitted by least squares on a handful of real whole-network measurements of random
   configurations (OFA's tables have no such term; nn-Meter and others add an offset).
   The leave-one-out error of that fit is stored with the table: its error, never assumed.

Tables are versioned JSON carrying the device fingerprint (CPU, backend and version, threads,
batch, input shape). A table is only valid where it was built; loading it elsewhere, or a corrupt
file, is refused with a message naming the fix.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from autoprune.costs import CostModel
from autoprune.latency import (
    describe_device,
    device_fingerprint,
    fingerprint_mismatch,
    make_runner,
    pinned_threads,
    time_calls,
)
from autoprune.search_spaces import ChannelSpace, LayerRow, LayerTable

__all__ = ["TABLE_FORMAT", "TABLE_VERSION", "LatencyCost", "LatencyTable", "LatencyTableError",
           "ProfilePlan", "model_signature"]

TABLE_FORMAT = "autoprune-latency-table"
TABLE_VERSION = 1

_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FOLLOWERS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
              nn.Sigmoid, nn.Tanh, nn.ELU, nn.Mish, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
              nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


class LatencyTableError(ValueError):
    """A lookup table that is corrupt, from another device, or for another model."""


@dataclass(frozen=True, kw_only=True)
class ProfilePlan:
    """How much to measure. ``grid`` widths per axis at most; ``calibration`` whole networks
    (dense, thinnest, random). In each of ``rounds`` shuffled rounds a block gets ``warmup`` +
    ``repeats`` calls and a whole network ``net_warmup`` + ``net_repeats``."""

    grid: int = 5
    rounds: int = 3
    warmup: int = 3
    repeats: int = 10
    calibration: int = 10
    net_warmup: int = 3
    net_repeats: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.grid < 2 or self.repeats < 1 or self.rounds < 1 or self.net_repeats < 1:
            raise ValueError(f"invalid profile plan {self}: grid >= 2, repeats, rounds >= 1")
        if self.calibration < 2:
            raise ValueError("calibration needs at least 2 whole networks (dense and thinnest)")


@dataclass(frozen=True, kw_only=True)
class _Entry:
    """Timings of one block over a grid of widths; ``in_grid`` empty means the input channels
    follow the output channels (depthwise)."""

    op: Mapping[str, Any]
    in_grid: tuple[int, ...]
    out_grid: tuple[int, ...]
    ms: np.ndarray  # shape (max(1, len(in_grid)), len(out_grid))

    def at(self, cin: int, cout: int) -> float:
        i0, i1, wi = _bracket(self.in_grid, cin)
        o0, o1, wo = _bracket(self.out_grid, cout)
        m = self.ms
        return float((1 - wi) * ((1 - wo) * m[i0, o0] + wo * m[i0, o1])
                     + wi * ((1 - wo) * m[i1, o0] + wo * m[i1, o1]))

    def to_json(self) -> dict[str, Any]:
        return {"op": dict(self.op), "in_grid": list(self.in_grid), "out_grid": list(self.out_grid),
                "ms": [[round(float(v), 6) for v in row] for row in self.ms]}


@dataclass(frozen=True, kw_only=True)
class _Layer:
    """Where one costed layer's widths come from, so ``predict(config)`` needs no space."""

    name: str
    entry: int
    in_unit: str | None
    out_unit: str | None
    in_full: int
    out_full: int
    depthwise: bool

    def widths(self, config: Mapping[str, int]) -> tuple[int, int]:
        cout = int(config.get(self.out_unit, self.out_full)) if self.out_unit else self.out_full
        if self.depthwise:
            return cout, cout
        cin = int(config.get(self.in_unit, self.in_full)) if self.in_unit else self.in_full
        return cin, cout


def _bracket(grid: Sequence[int], v: float) -> tuple[int, int, float]:
    """Neighbours of ``v`` in ``grid`` and the weight of the upper one, clamped to the grid
    (below the smallest measured width the smallest entry is used: conservative)."""
    n = len(grid)
    if n <= 1:
        return 0, 0, 0.0
    i = int(np.clip(np.searchsorted(grid, v), 1, n - 1))
    w = (v - grid[i - 1]) / (grid[i] - grid[i - 1])
    return i - 1, i, float(np.clip(w, 0.0, 1.0))


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


def _monotone(ms: np.ndarray) -> np.ndarray:
    out = ms.astype(float).copy()
    for _ in range(2):
        out = np.apply_along_axis(_isotonic, 1, out)
        out = np.apply_along_axis(_isotonic, 0, out)
    return np.maximum.accumulate(np.maximum.accumulate(out, axis=0), axis=1)


def _grid(choices: Sequence[int], points: int, divisor: int = 1) -> tuple[int, ...]:
    """At most ``points`` of ``choices``, evenly spread, always the smallest and the largest."""
    usable = [c for c in choices if c % divisor == 0] or [max(choices)]
    if len(usable) <= points:
        return tuple(usable)
    idx = np.unique(np.round(np.linspace(0, len(usable) - 1, points)).astype(int))
    return tuple(usable[i] for i in idx)


def model_signature(space: ChannelSpace) -> str:
    """A hash of the dense shapes of every costed layer (per sample): equal signatures mean the
    table's layers are the space's layers."""
    rows = [[r.name, r.kind, r.in_channels, r.out_channels, list(r.kernel), list(r.stride),
             r.groups, list(r.in_size), r.rows // max(1, r.batch)]
            for r in space.layer_table(space.dense_config()) if r.kind in ("conv", "linear")]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- the model's blocks
def _calls(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[str, nn.Module, int, int]]:
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
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _followers(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, list[nn.Module]]:
    """For each conv/linear, the modules that consume its output in a chain: a BatchNorm (first),
    then activations and pools, each reading exactly the previous one's output tensor."""
    calls = _calls(copy.deepcopy(model).eval(), inputs)
    out: dict[str, list[nn.Module]] = {}
    for i, (name, mod, _, ptr) in enumerate(calls):
        if name in out or not isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        chain: list[nn.Module] = []
        for _, nxt, in_ptr, out_ptr in calls[i + 1:]:
            allowed = _FOLLOWERS if chain else (*_BNS, *_FOLLOWERS)
            if in_ptr != ptr or not isinstance(nxt, allowed):
                break
            chain.append(nxt)
            ptr = out_ptr
        out[name] = chain
    return out


def _op_of(module: nn.Module, row: LayerRow, chain: Sequence[nn.Module],
           depthwise: bool) -> dict[str, Any]:
    """What the block runs, besides its widths: the dedupe key and the recipe of the block."""
    then = [type(m).__name__ if isinstance(m, _BNS) else repr(m) for m in chain]
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "bias": module.bias is not None,
                "rows": row.rows // max(1, row.batch), "then": then}
    return {"type": type(module).__name__, "kernel": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
            "dilation": list(module.dilation), "groups": "depthwise" if depthwise else module.groups,
            "bias": module.bias is not None, "padding_mode": module.padding_mode,
            "in_size": list(row.in_size), "then": then}


def _block(module: nn.Module, chain: Sequence[nn.Module], op: Mapping[str, Any], cin: int,
           cout: int, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """A fresh block at widths (cin, cout) and an input for it."""
    if isinstance(module, nn.Linear):
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


def _unit_links(space: ChannelSpace) -> dict[str, tuple[str | None, str | None]]:
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


# ---------------------------------------------------------------------- the table
class LatencyTable:
    """Predicted latency (ms) of any configuration of one model on one device.

    ``predict(config)`` = ``offset + scale * sum(layer entries)``; ``cost_model()`` is the
    ``latency_ms`` :class:`~autoprune.costs.CostModel` reading a layer table.
    """

    def __init__(self, *, device: Mapping[str, Any], model: Mapping[str, Any],
                 space: Mapping[str, Any], entries: Sequence[_Entry], layers: Sequence[_Layer],
                 correction: Mapping[str, Any], plan: Mapping[str, Any],
                 build_seconds: float, created: str) -> None:
        self.device = dict(device)
        self.model = dict(model)
        self.space = dict(space)
        self.entries = list(entries)
        self.layers = {lay.name: lay for lay in layers}
        self.correction = dict(correction)
        self.offset_ms = float(correction["offset_ms"])
        self.scale = float(correction["scale"])
        self.plan = dict(plan)
        self.build_seconds = float(build_seconds)
        self.created = created

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
              space: ChannelSpace | None = None, threads: int = 1, backend: str = "torch",
              batch: int | None = None, plan: ProfilePlan | None = None,
              console: Console | None = None) -> LatencyTable:
        """Profile ``model``'s layers on this machine and calibrate on whole networks.

        ``example_inputs`` give the input shape; ``batch`` (default: their first dimension) the
        batch the latency is for. ``space`` (default: a ChannelSpace with rounding 8 and
        lower bound 0.2) gives the widths to profile. ``model`` is left untouched.
        """
        started = time.perf_counter()
        plan = plan or ProfilePlan()
        inputs = _with_batch(example_inputs, batch)
        one = tuple(x[:1] for x in inputs)
        space = space or ChannelSpace.from_model(model, one)
        device = device_fingerprint(inputs, threads=threads, backend=backend)
        say = console.print if console else (lambda *a, **k: None)
        say(f"profiling latency on {describe_device(device)}")

        named = dict(model.named_modules())
        chains = _followers(model, one)
        links = _unit_links(space)
        choices = {u.name: u.choices for u in space.units}
        keys: dict[str, int] = {}
        specs: list[tuple[nn.Module, list[nn.Module], dict[str, Any], tuple[int, ...],
                          tuple[int, ...]]] = []
        layers: list[_Layer] = []
        for row in space.layer_table(space.dense_config()):
            if row.kind not in ("conv", "linear"):
                continue
            module = named[row.name]
            in_unit, out_unit = links[row.name]
            depthwise = row.kind == "conv" and 1 < row.groups == row.in_channels == row.out_channels
            div = 1 if depthwise or row.kind == "linear" else row.groups
            out_grid = _grid(choices[out_unit], plan.grid, div) if out_unit else (row.out_channels,)
            in_grid: tuple[int, ...] = () if depthwise else (
                _grid(choices[in_unit], plan.grid, div) if in_unit else (row.in_channels,))
            op = _op_of(module, row, chains.get(row.name, []), depthwise)
            key = json.dumps([op, in_grid, out_grid], sort_keys=True)
            if key not in keys:
                keys[key] = len(specs)
                specs.append((module, chains.get(row.name, []), op, in_grid, out_grid))
            layers.append(_Layer(name=row.name, entry=keys[key], in_unit=in_unit,
                                 out_unit=out_unit, in_full=row.in_channels,
                                 out_full=row.out_channels, depthwise=depthwise))
        n_points = sum(max(1, len(s[3])) * len(s[4]) for s in specs)
        say(f"{len(layers)} costed layers -> {len(specs)} distinct blocks, {n_points} grid "
            f"points; {plan.calibration} whole networks for the correction")
        rng = np.random.default_rng(plan.seed)
        configs = _calibration_configs(space, plan.calibration, rng)
        nets = [space.apply(model, c).eval() for c in configs]  # tracing needs autograd
        ms, net_samples = _measure_all(specs, nets, inputs, threads, backend, plan, rng)
        # Rounded as JSON stores them, so a saved and reloaded table predicts identically.
        entries = [_Entry(op=op, in_grid=ig, out_grid=og, ms=np.round(_monotone(m), 6))
                   for (_, _, op, ig, og), m in zip(specs, ms)]
        table = cls(device=device, model=_model_info(model, space), space=_space_info(space),
                    entries=entries, layers=layers,
                    correction={"offset_ms": 0.0, "scale": 1.0, "points": []},
                    plan=_plan_info(plan), build_seconds=0.0, created="")
        correction = _correction(table, space, configs, net_samples)
        built = cls(device=device, model=table.model, space=table.space, entries=entries,
                    layers=layers, correction=correction, plan=table.plan,
                    build_seconds=time.perf_counter() - started,
                    created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        say(f"built in {built.build_seconds:.1f}s: offset {built.offset_ms:+.3f} ms, scale "
            f"{built.scale:.3f}, leave-one-out error on whole networks: median "
            f"{100 * correction['loo_median_abs_rel']:.1f}%, max {100 * built.loo_error:.1f}%")
        return built

    # ------------------------------------------------------------------ predicting
    def layers_ms(self, table: LayerTable) -> float:
        """Sum of the entries of the costed layers of ``table`` (before the correction)."""
        total = 0.0
        for row in table:
            if row.kind not in ("conv", "linear"):
                continue
            layer = self.layers.get(row.name)
            if layer is None:
                raise LatencyTableError(
                    f"layer {row.name!r} is not in this latency table: it was profiled for "
                    f"another model ({self.model.get('class')}). Fix: build a table for this "
                    "model (autoprune profile, or LatencyTable.build).")
            total += self.entries[layer.entry].at(row.in_channels, row.out_channels)
        return total

    def estimate(self, table: LayerTable) -> float:
        """Predicted whole-network latency (ms) of the network whose layers are ``table``."""
        return self.offset_ms + self.scale * self.layers_ms(table)

    def predict(self, config: Mapping[str, int]) -> float:
        """Predicted latency (ms) of a configuration ({unit: channels kept}; missing = dense)."""
        known = {u for lay in self.layers.values() for u in (lay.in_unit, lay.out_unit) if u}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"configuration names units this table does not know: "
                             f"{sorted(unknown)}; its units are {sorted(known)}")
        total = 0.0
        for lay in self.layers.values():
            total += self.entries[lay.entry].at(*lay.widths(config))
        return self.offset_ms + self.scale * total

    def cost_model(self) -> LatencyCost:
        return LatencyCost(self)

    @property
    def loo_error(self) -> float:
        """Largest leave-one-out relative error of the whole-network correction (a fraction):
        how far a prediction strayed from a measurement the fit had not seen."""
        return float(self.correction.get("loo_max_abs_rel", float("nan")))

    # ------------------------------------------------------------------ checks
    def check_device(self, expected: Mapping[str, Any], *, source: str = "this table") -> None:
        """Refuse a table built for another device, backend, thread count, batch or shape."""
        diff = fingerprint_mismatch(self.device, expected)
        if diff:
            what = ", ".join(f"{k}: table {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise LatencyTableError(
                f"{source} was profiled for another device or setting ({what}). A latency "
                f"table holds only where it was built ({describe_device(self.device)}). Fix: "
                f"build one here with `autoprune profile --model <model> --batch "
                f"{expected.get('batch')} --threads {expected.get('threads')} --backend "
                f"{expected.get('backend')} -o <file>`, or leave out --lut to build and cache "
                "one on first use.")

    def check_space(self, space: ChannelSpace, *, source: str = "this table") -> None:
        """Refuse a table whose layers are not the space's layers."""
        sig = model_signature(space)
        if sig != self.model.get("signature"):
            raise LatencyTableError(
                f"{source} was profiled for another model or input size (signature "
                f"{self.model.get('signature')} of {self.model.get('class')} "
                f"{self.model.get('spec') or ''}, this one is {sig}). Fix: build a table for this "
                "model with `autoprune profile`, or leave out --lut.")

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready copy (editing it never changes the table)."""
        return copy.deepcopy({
                "format": TABLE_FORMAT, "version": TABLE_VERSION, "created": self.created,
                "device": self.device, "model": self.model, "space": self.space,
                "plan": self.plan, "build_seconds": round(self.build_seconds, 3),
                "correction": self.correction,
                "entries": [e.to_json() for e in self.entries],
                "layers": [{"name": lay.name, "entry": lay.entry, "in_unit": lay.in_unit,
                            "out_unit": lay.out_unit, "in_full": lay.in_full,
                            "out_full": lay.out_full, "depthwise": lay.depthwise}
                           for lay in self.layers.values()]})

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (atomically: a killed write leaves the old file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, expected_device: Mapping[str, Any] | None = None
             ) -> LatencyTable:
        """Read a table; with ``expected_device`` (a fingerprint) refuse one built elsewhere."""
        path = Path(path)
        fix = (f"Fix: rebuild it with `autoprune profile --model <model> -o {path}` (or delete "
               "it; a search builds and caches a table on first use).")
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"latency table {path} does not exist. Build one with "
                                    f"`autoprune profile --model <model> -o {path}`.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LatencyTableError(f"latency table {path} is corrupt ({err}). {fix}") from None
        if not isinstance(raw, dict) or raw.get("format") != TABLE_FORMAT:
            raise LatencyTableError(f"{path} is not an autoprune latency table. {fix}")
        if raw.get("version") != TABLE_VERSION:
            raise LatencyTableError(
                f"latency table {path} has format version {raw.get('version')!r}; this autoprune "
                f"reads version {TABLE_VERSION}. {fix}")
        try:
            table = cls._from_json(raw)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise LatencyTableError(f"latency table {path} is corrupt ({type(err).__name__}: "
                                    f"{err}). {fix}") from None
        if expected_device is not None:
            table.check_device(expected_device, source=f"latency table {path}")
        return table

    @classmethod
    def _from_json(cls, raw: Mapping[str, Any]) -> LatencyTable:
        entries = []
        for e in raw["entries"]:
            in_grid = tuple(int(v) for v in e["in_grid"])
            out_grid = tuple(int(v) for v in e["out_grid"])
            ms = np.asarray(e["ms"], dtype=float)
            if ms.shape != (max(1, len(in_grid)), len(out_grid)) or not out_grid:
                raise ValueError(f"an entry's timings have shape {ms.shape}, its grids "
                                 f"{len(in_grid)} x {len(out_grid)}")
            if not np.all(np.isfinite(ms)) or np.any(ms < 0):
                raise ValueError("an entry holds a negative or non-finite timing")
            for g in (in_grid, out_grid):
                if list(g) != sorted(set(g)) or (g and g[0] < 1):
                    raise ValueError(f"grid {list(g)} is not increasing positive widths")
            if not isinstance(e["op"], dict):
                raise TypeError("an entry's op is not an object")
            entries.append(_Entry(op=e["op"], in_grid=in_grid, out_grid=out_grid, ms=ms))
        layers = []
        for lay in raw["layers"]:
            index = int(lay["entry"])
            if not 0 <= index < len(entries):
                raise IndexError(f"layer {lay['name']!r} points at missing entry {index}")
            layers.append(_Layer(name=str(lay["name"]), entry=index, in_unit=lay["in_unit"],
                                 out_unit=lay["out_unit"], in_full=int(lay["in_full"]),
                                 out_full=int(lay["out_full"]), depthwise=bool(lay["depthwise"])))
        if not layers:
            raise ValueError("the table has no layers")
        corr = dict(raw["correction"])
        for k in ("offset_ms", "scale"):
            if not math.isfinite(float(corr[k])):
                raise ValueError(f"correction {k} is not a finite number")
        if float(corr["scale"]) <= 0:
            raise ValueError("correction scale must be positive")
        device = raw["device"]
        if not isinstance(device, dict) or "backend" not in device or "threads" not in device:
            raise ValueError("the device fingerprint is missing")
        return cls(device=device, model=dict(raw["model"]), space=dict(raw.get("space", {})),
                   entries=entries, layers=layers, correction=corr, plan=dict(raw.get("plan", {})),
                   build_seconds=float(raw.get("build_seconds", 0.0)),
                   created=str(raw.get("created", "")))


class LatencyCost(CostModel):
    """``latency_ms``: a lookup table's prediction for a layer table."""

    name = "latency_ms"
    unit = "ms"

    def __init__(self, table: LatencyTable) -> None:
        self.table = table

    def estimate(self, table: LayerTable) -> float:
        return self.table.estimate(table)


# ---------------------------------------------------------------------- profiling helpers
def _with_batch(example_inputs: torch.Tensor | Sequence[torch.Tensor], batch: int | None
                ) -> tuple[torch.Tensor, ...]:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if batch is None:
        return inputs
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    return tuple(x[:1].repeat(batch, *([1] * (x.dim() - 1))) for x in inputs)


def _measure_all(specs: Sequence[tuple[nn.Module, list[nn.Module], dict[str, Any], tuple[int, ...],
                                      tuple[int, ...]]], nets: Sequence[nn.Module],
                 inputs: tuple[torch.Tensor, ...], threads: int, backend: str, plan: ProfilePlan,
                 rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
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
                samples[i].extend(time_calls(run, warmup=warmup, repeats=repeats) * 1e3)
    ms = [np.zeros(shape) for shape in shapes]
    nets_ms: list[np.ndarray] = [np.empty(0)] * len(nets)
    for (e, k, _, _, _), s in zip(items, samples):
        if e >= 0:
            ms[e].flat[k] = np.median(s)
        else:
            nets_ms[k] = np.asarray(s)
    return ms, nets_ms


def _calibration_configs(space: ChannelSpace, n: int, rng: np.random.Generator
                         ) -> list[dict[str, int]]:
    """Dense, thinnest, and ``n - 2`` random configurations spread over the width range."""
    configs = [space.dense_config(), space.decode(np.zeros(space.dim))]
    for k in range(n - 2):
        level = (k + 0.5) / (n - 2)
        configs.append(space.decode(np.clip(level + rng.normal(0, 0.25, space.dim), 0, 1)))
    return configs


def _correction(table: LatencyTable, space: ChannelSpace, configs: Sequence[Mapping[str, int]],
                samples: Sequence[np.ndarray]) -> dict[str, Any]:
    """Least-squares ``measured = offset + scale * sum`` on whole networks, with its
    leave-one-out error.

    A network measured while another process held the CPU can sit far off the line; such a
    point (relative residual over 3x the median one and over 10%) is set aside, one at a time
    and at most a quarter of them, and the fit is redone on the rest. Set-aside points stay in
    the file, marked, and count in the reported error.
    """
    sums = np.array([table.layers_ms(space.layer_table(c)) for c in configs])
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


def _model_info(model: nn.Module, space: ChannelSpace) -> dict[str, Any]:
    spec = getattr(model, "autoprune_spec", None)
    return {"class": type(model).__name__, "spec": dict(spec) if spec else None,
            "signature": model_signature(space)}


def _space_info(space: ChannelSpace) -> dict[str, Any]:
    return {"round_to": space.round_to, "min_ratio": space.min_ratio,
            "units": {u.name: list(u.choices) for u in space.units}}


def _plan_info(plan: ProfilePlan) -> dict[str, Any]:
    return {k: getattr(plan, k) for k in ProfilePlan.__dataclass_fields__}
