"""The channel space's layer table: one row per costed layer call, its sizes affine in the units.

Rows are planned once from the dense forward pass (``exact.run_log``) and the probed slopes
(``exact.probe``); ``LayerPlan.table(removed)`` then evaluates every size for a
configuration in microseconds, with no model in sight.

- A module with parameters of its own gets a row per call: its MACs are, for every operation
  that consumed one of its parameters in that call, the operation's input vectors times the
  parameter's size; its parameters are counted on the first call's row. Kinds: ``conv``,
  ``conv_transpose``, ``linear`` (``nn.Linear`` and HF's ``Conv1D``), ``norm``, ``embedding``,
  ``recurrent`` (MACs: batch x time x its weight matrices), ``attention``
  (``nn.MultiheadAttention``'s own projection weights) and ``param`` (free parameters of any
  other module: class tokens, position tables). A row of a module that a unit removes whole
  (an entry of a plain MoE layer's list of experts, ``expert_lists.py``) counts its
  parameters only while the unit keeps its entry (``RowPlan.until``).
- A matmul between activations (attention's ``q @ k^T`` and ``weights @ v``) is a
  ``matmul`` row named ``<module>:<op>#<n>``, with its ``K`` and ``N`` as in and out channels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn
from torch.nn.utils import parametrize

from .base import LayerRow, LayerTable, call_name
from .exact import Affine, Probe
from .tracing import conv1d_type

__all__ = ["NORMS", "LayerPlan", "RowPlan", "parametrised", "plan_rows"]

NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _product(dims: Sequence[Affine], removed: Sequence[int]) -> int:
    out = 1
    for d in dims:
        out *= d.at(removed)
    return out


@dataclass(frozen=True)
class RowPlan:
    """One row of the layer table, as functions of the removed elements per unit."""

    name: str
    kind: str
    call: int
    params: tuple[tuple[Affine, ...], ...]          # counted on this row (first call only)
    macs: tuple[tuple[int, tuple[Affine, ...]], ...]  # (vectors, dims) per consuming op
    shape: tuple[Affine, ...] = ()                   # the weight's dims, for the channels
    layout: str = ""                                 # how to read channels off ``shape``
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    groups: int = 1
    depthwise: bool = False
    in_size: tuple[int, ...] = ()
    out_size: tuple[int, ...] = ()
    batch: int = 1
    rows: int = 1
    bias: bool = False
    # (unit, limit): the parameters exist while that unit has removed fewer than ``limit``
    # elements (an expert count's list entry; its MACs, the rows routed to it on the dense
    # example, stay: the kept experts run them)
    until: tuple[tuple[int, int], ...] = ()

    def row(self, removed: Sequence[int]) -> LayerRow:
        macs = sum(v * _product(dims, removed) for v, dims in self.macs)
        params = sum(_product(dims, removed) for dims in self.params) \
            if self.exists(removed) else 0
        cin, cout, groups = self._channels(removed)
        return LayerRow(name=self.name, kind=self.kind, in_channels=cin, out_channels=cout,
                        kernel=self.kernel, stride=self.stride, groups=groups,
                        in_size=self.in_size, out_size=self.out_size, batch=self.batch,
                        rows=self.rows, bias=self.bias, call=self.call, macs=macs,
                        params=params)

    def exists(self, removed: Sequence[int]) -> bool:
        """Whether the row's parameters are there (``until``)."""
        return all(removed[u] < limit for u, limit in self.until)

    def _channels(self, removed: Sequence[int]) -> tuple[int, int, int]:
        s = [d.at(removed) for d in self.shape]
        if len(s) < _RANK.get(self.layout, 0):
            return 0, 0, 1  # no weight of the layout's rank to read (its MACs are still counted)
        if self.layout == "conv":  # [out, in / groups, k...]
            groups = s[0] if self.depthwise else self.groups
            return s[1] * groups, s[0], groups
        if self.layout == "conv_transpose":  # [in, out / groups, k...]
            groups = s[0] if self.depthwise else self.groups
            return s[0], s[1] * groups, groups
        if self.layout == "linear":  # [out, in]
            return s[1], s[0], 1
        if self.layout == "conv1d":  # HF Conv1D: [in, out]
            return s[0], s[1], 1
        if self.layout == "norm":
            return s[0], s[0], 1
        if self.layout == "embedding":  # [num, dim]
            return s[0], s[1], 1
        if self.layout == "matmul":  # factors (batch, M, K, N)
            return s[2], s[3], 1
        return 0, 0, 1  # parameters and other operations: no channels of their own


@dataclass
class LayerPlan:
    """Every row of the layer table; ``table(removed)`` evaluates them."""

    rows: list[RowPlan] = field(default_factory=list)

    def table(self, removed: Sequence[int]) -> LayerTable:
        return tuple(r.row(removed) for r in self.rows)

    def totals_near(self, base: Sequence[int]) -> Callable[[Sequence[int]], tuple[int, int]]:
        """``removed -> (MACs, parameters)`` summed over every row, as ``table`` gives them,
        for configurations near ``base``: only the rows of units whose removal differs from
        ``base`` are evaluated again (fitting the cost forms changes one or two units at a
        time; a row depends on a few units)."""
        base = list(base)
        at_base = [(sum(v * _product(d, base) for v, d in r.macs),
                    sum(_product(d, base) for d in r.params) if r.exists(base) else 0)
                   for r in self.rows]
        total = (sum(m for m, _ in at_base), sum(p for _, p in at_base))
        rows_of: dict[int, list[int]] = {}
        for i, r in enumerate(self.rows):
            dims = [d for _, ds in r.macs for d in ds] + [d for ds in r.params for d in ds]
            units = {u for d in dims for u, _ in d.slopes} | \
                {u for d in dims for a, b, _ in d.cross for u in (a, b)} | \
                {u for u, _ in r.until}
            for u in units:
                rows_of.setdefault(u, []).append(i)

        def totals(removed: Sequence[int]) -> tuple[int, int]:
            rows = sorted({i for u, (a, b) in enumerate(zip(removed, base)) if a != b
                           for i in rows_of.get(u, ())})
            macs, params = total
            for i in rows:
                r = self.rows[i]
                macs += sum(v * _product(d, removed) for v, d in r.macs) - at_base[i][0]
                params += (sum(_product(d, removed) for d in r.params)
                           if r.exists(removed) else 0) - at_base[i][1]
            return macs, params

        return totals


#: The fewest dimensions a weight of each layout has (``_channels`` reads them).
_RANK = {"conv": 2, "conv_transpose": 2, "linear": 2, "conv1d": 2, "norm": 1, "embedding": 2,
         "matmul": 4}


def _weight_name(m: nn.Module, canon: Mapping[int, str]) -> str:
    """The parameter that is ``m``'s weight: ``m.weight`` itself, or for a parametrised weight
    (``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm``...), which is computed
    on every call, the parametrisation's original of the weight's shape (weight norm's
    direction ``v``); ``""`` when there is none."""
    weight = getattr(m, "weight", None)
    if weight is None:
        return ""
    if id(weight) in canon:
        return canon[id(weight)]
    originals = getattr(getattr(m, "parametrizations", None), "weight", None)
    for p in (originals.parameters(recurse=False) if originals is not None else ()):
        if id(p) in canon and tuple(p.shape) == tuple(weight.shape):
            return canon[id(p)]
    return ""


def parametrised(model: nn.Module) -> dict[str, str]:
    """Modules of ``model`` with a parametrised tensor (``weight_norm``, ``spectral_norm``,
    any ``torch.nn.utils.parametrize`` parametrisation), each with what parametrises it."""
    out = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m):
            kinds = {type(p).__name__.lstrip("_") for plist in m.parametrizations.values()
                     for p in plist}
            out[name] = ", ".join(sorted(kinds))
    return out


def _kind(m: nn.Module) -> tuple[str, str]:
    conv1d = conv1d_type()
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return "conv_transpose", "conv_transpose"
    if isinstance(m, nn.modules.conv._ConvNd):
        return "conv", "conv"
    if isinstance(m, nn.Linear):
        return "linear", "linear"
    if conv1d is not None and isinstance(m, conv1d):
        return "linear", "conv1d"
    if isinstance(m, NORMS):
        return "norm", "norm"
    if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding", "embedding"
    if isinstance(m, nn.RNNBase):
        return "recurrent", ""
    if isinstance(m, nn.MultiheadAttention):
        return "attention", ""
    return "param", ""


def plan_rows(model: nn.Module, probe: Probe) -> LayerPlan:
    """The rows of ``model`` (the dense working copy the probe started from)."""
    log = probe.dense
    canon = {id(p): n for n, p in model.named_parameters()}  # a shared parameter: first name
    holders: dict[str, set[str]] = {}
    for name, m in model.named_modules():
        for p in m.parameters(recurse=False):
            holders.setdefault(canon[id(p)], set()).add(name)
    owner = {n: _first(n) for n in holders}
    used: dict[str, dict[str, list[int]]] = {}  # module -> parameter -> vectors per use
    for op in log.ops:
        if op.param is not None:
            target = op.module if op.module in holders.get(op.param, ()) else owner[op.param]
            used.setdefault(target, {}).setdefault(op.param, []).append(op.factors[0])
    steps = _recurrent_steps(log.recurrent)
    plan = LayerPlan()
    for name, m in model.named_modules():
        held = [canon[id(p)] for p in m.parameters(recurse=False)]
        if not held:
            continue
        owned = [n for n in held if owner[n] == name]
        until = tuple(sorted({probe.vanish[n] for n in owned if n in probe.vanish}))
        kind, layout = _kind(m)
        mine = used.get(name, {})
        if kind == "recurrent":
            weights = [n for n in held if n.rsplit(".", 1)[-1].startswith("weight_")]
            calls = [[(s, n) for n in weights] for s in steps.get(name, [])]
        else:
            n_calls = max([len(v) for v in mine.values()] + [1])
            calls = [[(v[k], n) for n, v in mine.items() if k < len(v)] for k in range(n_calls)]
        shapes = log.calls.get(name, [])
        weight = _weight_name(m, canon)
        conv = kind in ("conv", "conv_transpose")
        for k, consumed in enumerate(calls or [[]]):
            x, y = shapes[k] if k < len(shapes) else ((), ())
            extra = dict(kernel=tuple(m.kernel_size), stride=tuple(m.stride), groups=m.groups,
                         depthwise=1 < m.groups == m.in_channels == m.out_channels,
                         in_size=tuple(x[2:]), out_size=tuple(y[2:])) if conv else {}
            plan.rows.append(RowPlan(
                name=call_name(name, k), kind=kind, call=k,
                params=tuple(probe.params[n] for n in owned) if k == 0 else (),
                macs=tuple((v, probe.params[n]) for v, n in consumed),
                shape=probe.params.get(weight, ()) if layout else (), layout=layout,
                rows=consumed[0][0] if consumed and kind in ("linear", "recurrent") else 1,
                batch=int(x[0]) if x else 1, bias=getattr(m, "bias", None) is not None,
                until=until if k == 0 else (), **extra))
    for i, (op, dims) in enumerate(probe.functional):
        where = op.module or "model"
        matmul = len(dims) == 4
        plan.rows.append(RowPlan(
            name=f"{where}:{op.func}#{i}", kind="matmul" if matmul else "op", call=0, params=(),
            macs=((1, dims),), shape=dims if matmul else (), layout="matmul" if matmul else "",
            rows=op.factors[0] * op.factors[1] if matmul else 1))
    return plan


def _first(param: str) -> str:
    """The module a parameter's first name belongs to."""
    return param.rsplit(".", 1)[0] if "." in param else ""


def _recurrent_steps(calls: Sequence[tuple[str, int]]) -> Mapping[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, s in calls:
        out.setdefault(name, []).append(s)
    return out
