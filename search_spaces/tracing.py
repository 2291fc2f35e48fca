"""Running and tracing a user's model: its inputs, its output, and Torch-Pruning's graph of it.

Models come from anywhere: our zoo, plain PyTorch, Hugging Face. This module is the one place
that knows how to call them and what of their output counts:

- inputs are a tensor or a tuple of tensors (positional arguments);
- the output may be a tensor, a tuple or list, a dict, or a Hugging Face ``ModelOutput``;
  every tensor in it is traced, and the model's value (what costs and checks are about) is
  the first tensor or the entry the user names (``output=``). Every tensor keeps its shape,
  except that a named value frees the outputs it is computed from (T5's
  ``encoder_last_hidden_state``): their widths may change with the units;
- Hugging Face models are run without a cache (``use_cache=False``): caches are not tensors
  Torch-Pruning can trace, and a pruned network must not reuse one;
- layers Torch-Pruning does not know are given pruners here (HF's ``Conv1D``, whose weight is
  stored transposed).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .base import UntraceableModelError
from .broadcast import decouple_broadcasts

__all__ = ["MAX_GROUP_STEPS", "swapped_forwards", "PRUNABLE_ROOTS", "Conv1DPruner", "GroupTooLarge", "Output",
           "aliased_copy", "as_inputs", "build_graph", "call_model", "conv1d_type", "copy_graph",
           "inner_outputs", "inner_outputs_note", "no_cache", "output_tensor", "output_tensors",
           "own_tensors", "prefix_views", "pruning_group", "roots", "traceable_copy",
           "traced_tensors"]

#: Which output of the model is traced and compared: ``None`` (the first tensor), an entry's
#: name (a dict key or ``ModelOutput`` field) or a position in a tuple.
Output = str | int | None


def as_inputs(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The positional inputs of the model as a tuple of tensors."""
    out = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not out or not all(isinstance(x, torch.Tensor) for x in out):
        raise ValueError("example_inputs must be a tensor or a sequence of tensors (the model's "
                         f"positional inputs), got {type(inputs).__name__}")
    return out


@contextlib.contextmanager
def no_cache(model: nn.Module) -> Iterator[None]:
    """Run a Hugging Face model (or any module with ``config.use_cache``) without its key/value
    cache, restoring the setting afterwards."""
    configs = []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "use_cache", None) and all(c is not cfg for c, _ in configs):
            configs.append((cfg, cfg.use_cache))
    for cfg, _ in configs:
        cfg.use_cache = False
    try:
        yield
    finally:
        for cfg, value in configs:
            cfg.use_cache = value


def call_model(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    """``model(*inputs)`` without a cache."""
    with no_cache(model):
        return model(*inputs)


def _tensors(out: Any) -> list[tuple[str, torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        return [("", out)]
    if isinstance(out, Mapping):
        return [(str(k), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [(str(i), v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    return []


def output_tensor(out: Any, output: Output = None) -> torch.Tensor:
    """The tensor of ``out`` that stands for the model's value: ``output`` names it, else the
    first tensor (a ``ModelOutput`` is a dict of its fields that are set)."""
    if isinstance(out, torch.Tensor) and output is None:
        return out
    named = _tensors(out)
    if output is None:
        if named:
            return named[0][1]
    else:
        for name, t in named:
            if name == str(output):
                return t
    if isinstance(out, torch.Tensor):
        raise UntraceableModelError(
            f"the model returns one tensor, so there is no output named {output!r} to choose. "
            "Fix: leave out output= (--output), which is for a model returning several")
    kinds = ", ".join(n or "tensor" for n, _ in named) or "none"
    want = f"entry named {output!r}" if output is not None else "tensor"
    raise UntraceableModelError(
        f"the model's output ({type(out).__name__}) has no {want}; its tensors: {kinds}. Fix: "
        "pass output=NAME (--output NAME) naming the tensor to prune for, e.g. 'logits'.")


def traced_tensors(out: Any, output: Output = None) -> list[torch.Tensor]:
    """Every tensor of ``out``: all are traced, so that every branch of a multi-output model
    is pruned consistently. ``output`` is checked to name one."""
    output_tensor(out, output)
    return [t for _, t in _tensors(out)]


def output_tensors(out: Any, output: Output = None) -> list[torch.Tensor]:
    """The tensors of ``out`` that keep their shapes when the model is pruned: every one,
    except the outputs the value ``output`` names is computed from (:func:`inner_outputs`)."""
    inner = set(inner_outputs(out, output))
    return [t for n, t in _tensors(out) if n not in inner]


def inner_outputs(out: Any, output: Output = None) -> list[str]:
    """The names of the outputs of ``out`` that the value ``output`` names (not the default
    first tensor) is computed from: the model's inside, exposed (an encoder-decoder's
    ``encoder_last_hidden_state``, read by the decoder; hidden states before a pooler). Their
    widths are the units' to change; an output the value does not read (an auxiliary head)
    keeps its shape, as the value does. Found by walking the value's autograd graph, so only
    where it was recorded (grad enabled, weights that require grad); else none."""
    if output is None:
        return []
    value = output_tensor(out, output)
    others = {t.grad_fn: n for n, t in _tensors(out) if t is not value and t.grad_fn is not None}
    if not others or value.grad_fn is None:
        return []
    found, seen, stack = [], {value.grad_fn}, [value.grad_fn]
    while stack and len(found) < len(others):
        for nxt, _ in stack.pop().next_functions:
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
                if nxt in others:
                    found.append(others[nxt])
    return [n for n, t in _tensors(out) if n in found]


def inner_outputs_note(graph: tp.DependencyGraph, output: Output) -> list[str]:
    """The note saying which outputs of the model traced into ``graph`` may change width."""
    inner = getattr(graph, "inner_outputs", ())
    if not inner:
        return []
    return [f"{', '.join(inner)} may change width with the units: the value {output!r} "
            f"(output=) is computed from {'it' if len(inner) == 1 else 'them'}, and only the "
            "value, with the outputs it does not read, keeps its shape (leave output= out "
            "to keep every output's shape)"]


def conv1d_type() -> type[nn.Module] | None:
    """Hugging Face's ``Conv1D`` (GPT-2's linear layer, weight ``[in, out]``), if loaded."""
    import sys  # noqa: PLC0415 - only to look, never to import transformers ourselves

    utils = sys.modules.get("transformers.pytorch_utils")
    return getattr(utils, "Conv1D", None)


def _kept(n: int, idxs: Sequence[int]) -> list[int]:
    """The indices of ``range(n)`` not in ``idxs``, ascending (through a mask: the set
    difference of Python ints cost 0.9 ms for a 6000-wide layer, 8x this)."""
    ix = idxs.cpu().numpy() if isinstance(idxs, torch.Tensor) else \
        np.fromiter((int(i) for i in idxs), dtype=np.int64)
    ix = ix.reshape(-1).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[ix[(ix >= 0) & (ix < n)]] = False  # (as the set difference, others are ignored)
    return np.flatnonzero(mask).tolist()


class Conv1DPruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning's view of HF ``Conv1D``: a linear layer whose weight is ``[in, out]``."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = _kept(layer.nf, idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        if layer.bias is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = _kept(layer.weight.shape[0], idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return int(layer.nf)

    def get_in_channels(self, layer: nn.Module) -> int:
        return int(layer.weight.shape[0])


def padded_conv_input(m: nn.Module, x: torch.Tensor
                      ) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """A conv's input padded as the layer pads it (numbers, ``"same"``/``"valid"``, any
    padding mode), as a batch of 2-D images, with kernel, stride and dilation (a Conv1d seen
    as a conv of height 1): what ``F.unfold`` takes for the layer's im2col patches."""
    nd = len(m.kernel_size)
    if x.dim() == nd + 1:
        x = x.unsqueeze(0)
    k, s, dil = tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation)
    if isinstance(m.padding, str):
        total = [0] * nd if m.padding == "valid" else [d * (kk - 1) for d, kk in zip(dil, k)]
        pairs = [(n // 2, n - n // 2) for n in total]
    else:
        pairs = [(p, p) for p in m.padding]
    if any(a or b for a, b in pairs):
        flat = [v for pair in reversed(pairs) for v in pair]
        x = torch.nn.functional.pad(
            x, flat, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
    if nd == 1:
        x, k, s, dil = x.unsqueeze(2), (1, *k), (1, *s), (1, *dil)
    return x, k, s, dil


def _customized_pruners() -> dict[type[nn.Module], tp.pruner.BasePruningFunc]:
    conv1d = conv1d_type()
    return {conv1d: Conv1DPruner()} if conv1d is not None else {}


#: Module types that root a channel group (Torch-Pruning's default is convs and linears).
PRUNABLE_ROOTS: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.RNNBase)


def roots() -> tuple[type[nn.Module], ...]:
    conv1d = conv1d_type()
    return PRUNABLE_ROOTS + ((conv1d,) if conv1d is not None else ())


class GroupTooLarge(RuntimeError):
    """Torch-Pruning's search for a channel group did not end (index mappings that cycle, as
    through rotary position embeddings' halves)."""


#: The most dependencies one channel group may collect before its search is given up.
MAX_GROUP_STEPS = 20_000


def pruning_group(graph: tp.DependencyGraph, module: nn.Module, idxs: Sequence[int]) -> tp.Group:
    """``graph``'s group of ``module``'s out-channels ``idxs``, given up with
    :class:`GroupTooLarge` after ``MAX_GROUP_STEPS`` steps."""
    from torch_pruning.dependency.group import Group  # noqa: PLC0415 - the class to bound

    original = Group.add_dep
    steps = [0]

    def add_dep(self: Group, dep: Any, idxs: Any) -> Any:
        steps[0] += 1
        if steps[0] > MAX_GROUP_STEPS:
            raise GroupTooLarge(f"the search for the channels coupled to this layer did not end "
                                f"after {MAX_GROUP_STEPS:,} steps")
        return original(self, dep, idxs)

    fn = graph.get_pruner_of_module(module).prune_out_channels
    Group.add_dep = add_dep
    try:
        return graph.get_pruning_group(module, fn, list(idxs))
    finally:
        Group.add_dep = original


def aliased_copy(obj: Any, model: nn.Module) -> Any:
    """A deep copy of ``obj`` (``model``, or a structure holding it, such as the model with
    its dependency graph) in which every parameter and buffer of ``model`` is a new tensor
    *sharing storage* with the original: the modules are copied, no weight is. Pruning the
    copy replaces its tensors by smaller ones (Torch-Pruning selects out of place), so the
    original is never written; :func:`own_tensors` gives the copy its own memory for what no
    pruning replaced."""
    memo: dict[int, Any] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        for p in m._parameters.values():
            if p is not None and id(p) not in memo:
                memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
        for b in m._buffers.values():
            if b is not None and id(b) not in memo:
                memo[id(b)] = b.detach()
    return copy.deepcopy(obj, memo)


def own_tensors(model: nn.Module, of: nn.Module) -> nn.Module:
    """Give every parameter and buffer of ``model`` that still shares storage with ``of``
    a copy of its own (ties kept), so that ``model`` may be trained or recalibrated in place
    without touching ``of``. Only what pruning left whole is copied."""
    theirs = {t.untyped_storage().data_ptr()
              for t in chain(of.parameters(), of.buffers()) if t.numel()}
    done: dict[int, torch.Tensor] = {}

    def mine(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in done:
            clone = t.detach().clone()
            done[id(t)] = nn.Parameter(clone, requires_grad=t.requires_grad) \
                if isinstance(t, nn.Parameter) else clone
        return done[id(t)]

    for _, m in model.named_modules(remove_duplicate=False):
        for kind in (m._parameters, m._buffers):
            for name, t in kind.items():
                if t is not None and t.numel() and t.untyped_storage().data_ptr() in theirs:
                    kind[name] = mine(t)
    return model


def copy_graph(graph: tp.DependencyGraph, model: nn.Module) -> tp.DependencyGraph:
    """``graph`` (Torch-Pruning's dependency graph of ``graph.model``) for ``model``, a copy of
    ``graph.model`` made by :func:`aliased_copy`. Its nodes and dependencies are copied without
    recursion (a deep copy of a long graph passes Python's recursion limit); the autograd
    records of the trace (read for index mappings, never written) and the pruners (no state of
    their own) are shared."""
    same: dict[int, Any] = {}
    for (_, a), (_, b) in zip(graph.model.named_modules(remove_duplicate=False),
                              model.named_modules(remove_duplicate=False)):
        same[id(a)] = b
        for pa, pb in zip(a._parameters.values(), b._parameters.values()):
            if pa is not None:
                same[id(pa)] = pb

    def mapped(obj: Any) -> Any:
        if id(obj) not in same:  # one of Torch-Pruning's own ops: offsets and sizes of its own
            op = copy.copy(obj)
            op.__dict__ = {k: list(v) if isinstance(v, list) else v for k, v in vars(obj).items()}
            same[id(obj)] = op
        return same[id(obj)]

    nodes: dict[int, Any] = {}
    for node in graph.module2node.values():
        twin = copy.copy(node)
        twin.module = mapped(node.module) if isinstance(node.module, nn.Module) \
            else same.get(id(node.module), node.module)
        nodes[id(node)] = twin
    for node in graph.module2node.values():
        twin = nodes[id(node)]
        twin.inputs = [nodes[id(n)] for n in node.inputs]
        twin.outputs = [nodes[id(n)] for n in node.outputs]
        twin.dependencies = []
        for dep in node.dependencies:
            d = copy.copy(dep)
            d.source, d.target = nodes[id(dep.source)], nodes[id(dep.target)]
            d.index_mapping = list(dep.index_mapping)
            twin.dependencies.append(d)
    out = copy.copy(graph)
    out.model = model
    out.module2node = {nodes[id(n)].module: nodes[id(n)] for n in graph.module2node.values()}
    out._module2name = {same.get(id(m), m): n for m, n in graph._module2name.items()}
    out._param_to_name = {same.get(id(p), p): n for p, n in graph._param_to_name.items()}
    out.unwrapped_parameters = [type(u)(*((same.get(id(u[0]), u[0]),) + tuple(u[1:])))
                                for u in graph.unwrapped_parameters]
    out.ignored_params = [same.get(id(p), p) for p in graph.ignored_params]
    out.IGNORED_LAYERS_IN_TRACING = [same.get(id(m), m) for m in graph.IGNORED_LAYERS_IN_TRACING]
    out._pruning_history = list(graph._pruning_history)
    return out


@contextlib.contextmanager
def prefix_views() -> Iterator[None]:
    """While it holds, Torch-Pruning keeps the *leading* elements of a parameter (what
    removing the last ones leaves) as a view of it instead of a copy. Probing sizes removes a
    few elements of every unit; with copies that cost a second model's memory, with views
    nothing. For working copies whose values are never trained or handed out."""
    base = tp.pruner.function.BasePruningFunc
    original = base._prune_parameter_and_grad

    def narrowed(self: Any, weight: torch.Tensor, keep_idxs: Sequence[int],
                 pruning_dim: int) -> torch.Tensor:
        k = len(keep_idxs)
        if k and int(keep_idxs[0]) == 0 and int(keep_idxs[-1]) == k - 1 and weight.grad is None:
            return nn.Parameter(weight.detach().narrow(pruning_dim, 0, k))
        return original(self, weight, keep_idxs, pruning_dim)

    base._prune_parameter_and_grad = narrowed
    try:
        yield
    finally:
        base._prune_parameter_and_grad = original


def traceable_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode (tracing must not touch BN statistics) whose parameters require
    grad (Torch-Pruning traces through autograd). It shares the weights of ``model``
    (:func:`aliased_copy`): nothing is copied but the modules."""
    work = aliased_copy(model, model).eval()
    for p in work.parameters():
        p.requires_grad_(True)
    return work


def build_graph(model: nn.Module, inputs: tuple[torch.Tensor, ...],
                output: Output = None) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` (a traceable copy) on ``inputs``; its
    ``inner_outputs`` are those of :func:`inner_outputs`."""
    inner: list[str] = []

    def traced(out: Any) -> list[torch.Tensor]:
        inner[:] = inner_outputs(out, output)
        return traced_tensors(out, output)

    try:
        with torch.enable_grad(), no_cache(model):
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, forward_fn=lambda m, x: m(*x),
                output_transform=traced, customized_pruners=_customized_pruners(),
                verbose=False)
        graph.inner_outputs = tuple(inner)
        decouple_broadcasts(graph)  # (a routing weight does not couple the residual width)
        return graph
    except UntraceableModelError:
        raise
    except Exception as err:  # noqa: BLE001 - any tracing failure becomes one clear error
        raise UntraceableModelError(
            f"Torch-Pruning could not trace {type(model).__name__} with the example inputs "
            f"({type(err).__name__}: {err}). Fix: make forward() run on the example inputs using "
            "differentiable tensor operations only (no .numpy(), .item() or .detach() on the "
            "feature path), or pass example inputs of the right shape."
        ) from err


@contextlib.contextmanager
def swapped_forwards(forwards: Mapping[type, Any]) -> Iterator[None]:
    """Each class of ``forwards`` runs the given forward while the block runs (a trace that
    must see a layer as one op), its own (or its inherited one) again after."""
    saved = {c: c.__dict__.get("forward") for c in forwards}
    for c, f in forwards.items():
        c.forward = f
    try:
        yield
    finally:
        for c, f in saved.items():
            if f is None:
                del c.forward
            else:
                c.forward = f
