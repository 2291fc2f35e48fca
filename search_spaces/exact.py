"""Costs that are exact by construction: every size as an affine function of the units' widths.

Pruning a unit removes whole elements (channels, heads) from every tensor its group touches,
the same number from each at every step. So every dimension of every parameter, and every
dimension of every matmul between activations (attention's ``q @ k^T``), is an affine function
of how many elements each unit removed: ``size = dense - sum(slope[u] * removed[u])``.

The slopes are measured, not assumed: on a copy of the model, each unit in turn loses one step
of elements, and the change of every parameter's shape and every matmul's shape is read off
(``probe``). Then

- parameters = the sum over parameters of the product of their dimensions;
- MACs = the sum over operations that consume a parameter of (input vectors x the parameter's
  size), which is what convs (batch x output positions), transposed convs (batch x input
  positions), linears and HF's ``Conv1D`` (rows) and recurrent layers (batch x time) compute,
  plus the products of the dimensions of matmuls between activations.

A unit whose removal breaks the forward pass, changes the output's shape or changes a size by
a fraction of an element is not searched; ``ChannelSpace.from_model`` checks the whole model
at further widths against direct counts (``verify``) and drops any unit that disagrees.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .progress import report
from .reference import recurrent_steps
from .tracing import Output, call_model, output_tensors

__all__ = ["Affine", "OpRecord", "Probe", "RunLog", "ShortProbeMismatch", "probe", "run_log",
           "short_inputs"]

_MATMULS = {"mm": 2, "addmm": 2, "bmm": 3, "baddbmm": 3}  # op -> rank of its matrix operands


@dataclass(frozen=True)
class Affine:
    """``dense - sum(slope * removed[unit]) / per`` over the units it depends on (``per`` > 1
    when a size shrinks by less than one per element removed: an ``nn.MultiheadAttention``'s
    head size loses one per ``num_heads`` channels of its width)."""

    dense: int
    slopes: tuple[tuple[int, int], ...] = ()  # (unit index, size lost per ``per`` elements)
    per: int = 1
    # Sizes that are a product of two units' counts (a layer's heads x its head size) give
    # back ``weight / per`` for every pair of elements removed from both: (u, v, weight).
    cross: tuple[tuple[int, int, int], ...] = ()

    def at(self, removed: Sequence[int]) -> int:
        lost = sum(s * removed[u] for u, s in self.slopes) \
            - sum(w * removed[u] * removed[v] for u, v, w in self.cross)
        if lost % self.per:
            raise ValueError(f"a size {self.dense} - {lost}/{self.per} is not whole: the "
                             "configuration removes elements in steps the layer cannot take")
        return self.dense - lost // self.per


@dataclass(frozen=True)
class OpRecord:
    """One operation that does multiply-accumulates, in the order the forward pass ran it.

    ``factors`` multiply to its MACs: ``(vectors, *param_shape)`` for an operation consuming
    the parameter ``param`` (its input vectors times the parameter's size), the matmul's
    ``(batch, M, K, N)`` between activations, or ``(macs,)`` for anything else."""

    func: str
    module: str
    param: str | None
    factors: tuple[int, ...]

    @property
    def macs(self) -> int:
        out = 1
        for f in self.factors:
            out *= f
        return out


@dataclass
class RunLog:
    """What one forward pass did: the operations, the recurrent layers' input vectors per
    call, how often each parameterised module ran, and the traced output's shape."""

    ops: list[OpRecord] = field(default_factory=list)
    recurrent: list[tuple[str, int]] = field(default_factory=list)
    calls: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = field(default_factory=dict)
    sequence: list[str] = field(default_factory=list)  # parameterised modules, in call order
    output_shape: tuple[tuple[int, ...], ...] = ()

    @property
    def functional(self) -> list[OpRecord]:
        return [o for o in self.ops if o.param is None]


class _Recorder(TorchDispatchMode):
    def __init__(self, params: Mapping[int, tuple[str, torch.Tensor]], stack: list[str],
                 skip: Callable[[], bool]) -> None:
        super().__init__()
        self.params, self.stack, self.skip = params, stack, skip
        self.registry = FlopCounterMode(display=False).flop_registry
        self.ops: list[OpRecord] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        if packet in self.registry and not self.skip():
            flops = int(self.registry[packet](*args, **kwargs, out_val=out))
            if flops:
                self.ops.append(self._record(packet.__name__, args, flops // 2))
        return out

    def _param(self, t: object) -> tuple[str, torch.Tensor] | None:
        if not isinstance(t, torch.Tensor):
            return None
        try:
            return self.params.get(t.untyped_storage().data_ptr())
        except RuntimeError:  # a tensor without storage
            return None

    def _record(self, name: str, args: tuple, macs: int) -> OpRecord:
        module = self.stack[-1] if self.stack else ""
        if name == "_grouped_mm" and len(args) >= 2 and args[0].dim() == 2 \
                and args[1].dim() == 3:  # routed rows x K x N: the same for any expert count
            k, n = int(args[0].shape[-1]), int(args[1].shape[-1])
            if k * n and macs % (k * n) == 0:
                return OpRecord(func=name, module=module, param=None,
                                factors=(1, macs // (k * n), k, n))
        operands = args[1:3] if name in ("addmm", "baddbmm") else args[:2]
        for t in operands:
            hit = self._param(t)
            if hit is not None and macs % hit[1].numel() == 0:
                return OpRecord(func=name, module=module, param=hit[0],
                                factors=(macs // hit[1].numel(), *hit[1].shape))
        rank = _MATMULS.get(name)
        a, b = (operands + (None, None))[:2]
        if rank and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) \
                and a.dim() == rank == b.dim():
            batch = int(a.shape[0]) if rank == 3 else 1
            m, k, n = int(a.shape[-2]), int(a.shape[-1]), int(b.shape[-1])
            if batch * m * k * n == macs:
                return OpRecord(func=name, module=module, param=None, factors=(batch, m, k, n))
        return OpRecord(func=name, module=module, param=None, factors=(macs,))


@contextlib.contextmanager
def _module_stack(model: nn.Module) -> Iterator[tuple[list[str], RunLog, Callable[[], bool]]]:
    """Hooks that keep the stack of running module names, count calls of parameterised
    modules (with their input and output shapes) and note recurrent layers' input vectors."""
    stack: list[str] = []
    log = RunLog()
    recurrent_depth = [0]
    hooks = []
    for name, m in model.named_modules():
        own = next(m.parameters(recurse=False), None) is not None

        def pre(mod: nn.Module, args: tuple, name: str = name, own: bool = own) -> None:
            stack.append(name)
            if own:
                log.sequence.append(name)
            if isinstance(mod, nn.RNNBase):
                recurrent_depth[0] += 1
                if args:
                    log.recurrent.append((name, recurrent_steps(mod, args[0])))

        def post(mod: nn.Module, args: tuple, out: object, name: str = name,
                 own: bool = own) -> None:
            if own:
                x = args[0] if args and isinstance(args[0], torch.Tensor) else None
                y = out if isinstance(out, torch.Tensor) else None
                log.calls.setdefault(name, []).append(
                    (tuple(x.shape) if x is not None else (), tuple(y.shape) if y is not None else ()))
            if isinstance(mod, nn.RNNBase):
                recurrent_depth[0] -= 1
            if stack and stack[-1] == name:
                stack.pop()

        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    try:
        yield stack, log, lambda: recurrent_depth[0] > 0
    finally:
        for h in hooks:
            h.remove()


def named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter once (a shared one under its first name)."""
    return dict(model.named_parameters())


def run_log(model: nn.Module, inputs: tuple[torch.Tensor, ...], output: Output = None) -> RunLog:
    """Run ``model`` once (grad enabled, math attention: nothing hidden in fused kernels) and
    record what it did. Recurrent layers' own matmuls are not recorded: their cost is their
    weights times their input vectors (``reference.recurrent_macs``)."""
    params = {p.untyped_storage().data_ptr(): (n, p) for n, p in named_parameters(model).items()}
    with _module_stack(model) as (stack, log, in_recurrent):
        recorder = _Recorder(params, stack, in_recurrent)
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), recorder:
            out = call_model(model, inputs)
    log.ops = recorder.ops
    log.output_shape = tuple(tuple(t.shape) for t in output_tensors(out, output))
    return log


# ---------------------------------------------------------------------- probing the slopes
class ProbeError(Exception):
    """Removing elements of one unit broke something; ``unit`` says which, the message what."""

    def __init__(self, unit: int | None, message: str) -> None:
        super().__init__(message)
        self.unit = unit


@dataclass
class Probe:
    """Affine sizes of every parameter and every activation matmul, over the probed units."""

    params: dict[str, tuple[Affine, ...]]
    functional: list[tuple[OpRecord, tuple[Affine, ...]]]
    dense: RunLog
    #: parameters that exist only while a unit has removed fewer than a number of elements
    #: (``probe``'s ``vanish``): name -> (unit, limit)
    vanish: dict[str, tuple[int, int]] = field(default_factory=dict)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in named_parameters(model).items()}


def _slopes(before: Sequence[int], after: Sequence[int], step: int, unit: int,
            what: str) -> list[Fraction]:
    """Size lost per element removed, per dimension (a fraction when a dimension loses less
    than one per element; ``Affine`` checks that whole configurations give whole sizes)."""
    if len(before) != len(after):
        raise ProbeError(unit, f"{what} changed rank ({list(before)} -> {list(after)})")
    if any(a > b for b, a in zip(before, after)):
        raise ProbeError(unit, f"{what} grew when it was pruned ({list(before)} -> {list(after)})")
    return [Fraction(b - a, step) for b, a in zip(before, after)]


def _undo_order(dense: int, slopes: list[tuple[int, Fraction]],
                products: Sequence[tuple[int, int]], steps: Sequence[int]
                ) -> list[tuple[int, Fraction]]:
    """The dense slopes of a size ``c * a * b``: the probe measured ``b``'s slope after ``a``
    (probed first) had lost ``steps[a]`` elements, when ``b``'s slope was already
    ``s_b * (1 - s_a * steps[a] / dense)``."""
    of = dict(slopes)
    for u, v in products:
        first, second = min(u, v), max(u, v)
        if first in of and second in of and dense:
            of[second] = of[second] / (1 - of[first] * steps[first] / dense)
    return list(of.items())


def _affine(dense: int, slopes: Sequence[tuple[int, Fraction]],
            products: Sequence[tuple[int, int]] = ()) -> Affine:
    """The size, with a cross term for each pair of ``products`` it depends on both of: a
    size ``c * a * b`` of two counts loses ``s_a * r_a + s_b * r_b - r_a * r_b * s_a * s_b /
    dense`` when ``r_a`` and ``r_b`` elements go."""
    of = dict(slopes)
    cross = [(u, v, of[u] * of[v] / dense) for u, v in products if u in of and v in of and dense]
    per = math.lcm(*(s.denominator for _, s in slopes), *(w.denominator for *_, w in cross)) \
        if slopes else 1
    return Affine(dense, tuple((u, int(s * per)) for u, s in slopes), per,
                  tuple((u, v, int(w * per)) for u, v, w in cross))


def short_inputs(inputs: tuple[torch.Tensor, ...], length: int = 4) -> tuple[torch.Tensor, ...] | None:
    """The example cut to its first ``length`` positions when it is a sequence of tokens (every
    input an integer or bool tensor ``[batch, time, ...]`` of one ``time`` longer than
    ``length``), else ``None``. A unit's size changes are the same on a shorter sequence, and
    a decoder's forward pass is then many times cheaper (its weights are read, not its
    activations multiplied)."""
    times = {int(x.shape[1]) for x in inputs if x.dim() >= 2}
    if len(times) != 1 or any(x.dim() < 2 or x.is_floating_point() or x.is_complex()
                              for x in inputs):
        return None
    (time,) = times
    return tuple(x[:, :length] for x in inputs) if time > length else None


def probe(model: nn.Module, inputs: tuple[torch.Tensor, ...], steps: Sequence[int],
          remove: Callable[[nn.Module, int, int], None], output: Output = None, *,
          check_each: bool = False, products: Sequence[tuple[int, int]] = (),
          dense: RunLog | None = None, short: tuple[torch.Tensor, ...] | None = None,
          vanish: Mapping[str, tuple[int, int]] | None = None) -> Probe:
    """:func:`probe_on`, running the per-unit forward passes on ``short`` inputs (a prefix of
    the example's sequence, :func:`short_inputs`) where that measures the same: the short
    run performs the same operations, and every size that a unit changes is the same in both
    runs. Otherwise, or without ``short``, every pass runs on ``inputs``. ``model`` must be
    unpruned (a copy the caller can prune again when the short probe does not apply)."""
    dense = dense or run_log(model, inputs, output)
    if short is not None and (check_each or dense.functional):
        try:
            log = run_log(model, short, output)
        except Exception:  # noqa: BLE001 - the short sequence does not run: the full one
            log = None
        if log is not None and [o.func for o in log.functional] == \
                [o.func for o in dense.functional]:
            found = probe_on(model, inputs, steps, remove, output, check_each=check_each,
                             products=products, dense=dense, runs=(short, log), vanish=vanish)
            if found is not None:
                return found
            raise ShortProbeMismatch("a size that a unit changes also depends on the "
                                     "sequence's length: probe on the whole example")
    return probe_on(model, inputs, steps, remove, output, check_each=check_each,
                    products=products, dense=dense, vanish=vanish)


class ShortProbeMismatch(Exception):
    """The short probe measured something the full sequence changes: probe a fresh copy on
    the whole example instead (``short=None``)."""


def probe_on(model: nn.Module, inputs: tuple[torch.Tensor, ...], steps: Sequence[int],
             remove: Callable[[nn.Module, int, int], None], output: Output = None, *,
             check_each: bool = False, products: Sequence[tuple[int, int]] = (),
             dense: RunLog | None = None,
             runs: tuple[tuple[torch.Tensor, ...], RunLog] | None = None,
             vanish: Mapping[str, tuple[int, int]] | None = None) -> Probe | None:
    """Measure the slopes: on ``model`` (a working copy, pruned in place), unit ``u`` in turn
    loses ``steps[u]`` elements through ``remove(model, u, n)``; a forward pass after each
    unit (with ``check_each``, or when the dense one ran activation matmuls) or once at the
    end checks that the network still runs with the same output shape. Raises
    :class:`ProbeError` naming the unit that broke it (``unit`` is ``None`` when only the
    final check failed: probe again with ``check_each`` to find it). ``products`` are pairs
    of units whose counts multiply in a size (an attention layer's heads and head size);
    ``dense`` is the dense model's log when the caller has it already. ``vanish`` names the
    parameters a unit removes whole (an expert count's list entries), each with ``(unit,
    limit)``: it exists while that unit has removed fewer than ``limit`` elements; any other
    parameter that comes or goes breaks the unit. Such a unit is probed after every unit that
    changes those parameters' sizes (once gone, their slopes are not measured)."""
    dense = dense or run_log(model, inputs, output)
    vanish = dict(vanish or {})
    shapes = dense_shapes = _shapes(model)
    per_inputs, per_dense = runs if runs is not None else (inputs, dense)
    functional = per_dense.functional
    slopes_p: dict[str, list[list[tuple[int, Fraction]]]] = {n: [[] for _ in s] for n, s in shapes.items()}
    slopes_f: list[list[list[tuple[int, Fraction]]]] = [[[] for _ in o.factors] for o in functional]
    per_unit = check_each or bool(functional)
    for u, step in enumerate(steps):
        report("probing units", u, len(steps))
        try:
            remove(model, u, step)
        except Exception as err:  # noqa: BLE001 - named with the unit by the caller
            raise ProbeError(u, f"pruning it failed inside Torch-Pruning ({type(err).__name__}: "
                                f"{err})") from err
        now = _shapes(model)
        due = {n for n in shapes if vanish.get(n, (None, 0))[0] == u and vanish[n][1] <= step}
        if set(now) != set(shapes) - due:
            raise ProbeError(u, "pruning it added or removed parameters")
        for n, before in shapes.items():
            if n in due:
                continue
            for d, s in enumerate(_slopes(before, now[n], step, u, f"parameter {n}")):
                if s:
                    slopes_p[n][d].append((u, s))
        shapes = now
        if runs is not None and u == len(steps) - 1:  # the whole pruned network, full length
            _checked_run(model, inputs, output, dense, None)
        if per_unit or u == len(steps) - 1:
            log = _checked_run(model, per_inputs, output, per_dense, u if per_unit else None)
            if per_unit:
                ops = log.functional
                if [o.func for o in ops] != [o.func for o in functional]:
                    raise ProbeError(u, "the pruned network runs other operations")
                for i, (o, old) in enumerate(zip(ops, functional)):
                    for d, s in enumerate(_slopes(old.factors, o.factors, step, u,
                                                  f"{o.func} in {o.module or 'the model'}")):
                        if s:
                            slopes_f[i][d].append((u, s))
                functional = ops
    report("probing units", len(steps), len(steps))
    for n, dims in slopes_p.items():
        for d, sl in enumerate(dims):
            dims[d] = _undo_order(dense_shapes[n][d], sl, products, steps)
    for (o, short, dims) in zip(dense.functional, per_dense.functional, slopes_f):
        for d, sl in enumerate(dims):
            if sl and o.factors[d] != short.factors[d]:
                return None  # a size the sequence's length changes, that a unit changes too
            dims[d] = _undo_order(o.factors[d], sl, products, steps)
    return Probe(
        params={n: tuple(_affine(dense_shapes[n][d], sl, products) for d, sl in enumerate(dims))
                for n, dims in slopes_p.items()},
        functional=[(o, tuple(_affine(f, sl, products) for f, sl in zip(o.factors, dims)))
                    for o, dims in zip(dense.functional, slopes_f)],
        dense=dense, vanish=vanish)


def _checked_run(model: nn.Module, inputs: tuple[torch.Tensor, ...], output: Output,
                 dense: RunLog, unit: int | None) -> RunLog:
    try:
        log = run_log(model, inputs, output)
    except Exception as err:  # noqa: BLE001
        raise ProbeError(unit, f"the pruned network fails in forward ({type(err).__name__}: "
                               f"{err})") from err
    if log.output_shape != dense.output_shape:
        raise ProbeError(unit, f"pruning it changes the output's shape ({dense.output_shape} -> "
                               f"{log.output_shape})")
    return log
