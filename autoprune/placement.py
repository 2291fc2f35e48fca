"""Where the work of a search runs: the compute device (``--device`` / ``device=``).

Scoring, recovery, Wanda and SparseGPT statistics, least-squares refits and once-for-all
training all run where the dense model is placed: ``cpu``, ``cuda``, ``cuda:N``, or ``auto``
(the first CUDA GPU when torch sees one, else the CPU). This is not the latency
:class:`autoprune.latency.device.Device`, which says what a latency is *for* (backend,
threads, batch); a latency on a GPU is ``--backend cuda``.

The dense model is placed once: :func:`placed` gives a copy on the device (modules copied,
each weight moved one by one, so the host never holds a second full copy), with a forward
pre-hook that moves tensor inputs there, so that evaluators and data loaders written for the
CPU keep working. Every trial's network is built from those weights, on the device. Batches a
search owns (calibration, statistics, fine-tunes) are moved with :func:`to_device`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from autoprune.errors import SearchError
from autoprune.precision import cast_inputs, parse_dtype
from autoprune.search_spaces.tracing import aliased_copy

__all__ = ["cpu_state", "describe_compute", "example_on", "model_device",
           "on_cpu", "placed", "resolve_device", "to_device", "trained_on"]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``spec`` as a torch device this machine has; one clear error for anything else.

    ``None`` and ``"auto"`` mean the first CUDA GPU when torch sees one, else the CPU."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "gpu":
        text = "cuda"
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise SearchError(f"unknown device {spec!r}. Fix: use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        why = ("this torch was built without CUDA" if torch.version.cuda is None
               else "torch sees no CUDA GPU here (driver, or CUDA_VISIBLE_DEVICES)")
        raise SearchError(f"device {spec!r} asked for, but {why}. Fix: use --device cpu (or "
                          "auto), or install a CUDA build of torch on a machine with a GPU")
    count = torch.cuda.device_count()
    n = int(index or 0)
    if n >= count:
        raise SearchError(f"device {spec!r} asked for, but this machine has {count} CUDA "
                          f"GPU{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1}). Fix: "
                          "use one of those")
    return torch.device("cuda", n)


def describe_compute(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3, CUDA 12.4)``: for run records and logs."""
    if device.type != "cuda":
        return str(device)
    return f"{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights are (the CPU for a model without any)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(value: Any, device: torch.device | None) -> Any:
    """``value`` with every tensor in it (nested tuples, lists and dicts) on ``device``; other
    values as they are. ``device=None`` leaves everything where it is."""
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device)
    if isinstance(value, Mapping):
        return type(value)({k: to_device(v, device) for k, v in value.items()}) \
            if type(value) is dict else {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(to_device(v, device) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def _moved_inputs(device: torch.device, module: nn.Module, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return to_device(args, device), to_device(kwargs, device)


def placed(model: nn.Module, *, device: torch.device | None = None,
           dtype: str | torch.dtype | None = None) -> nn.Module:
    """``model`` itself when it is already on ``device`` in ``dtype`` (either ``None``: as it
    is), else a copy there (``model`` untouched; weights are moved one by one, tied weights stay
    tied) whose forward moves its tensor inputs to ``device`` and casts floating ones to
    ``dtype``."""
    target = None if dtype is None else parse_dtype(dtype)
    here = model_device(model)
    move = device is not None and here != device
    floats = [p for p in model.parameters() if p.is_floating_point()]
    cast = target is not None and any(p.dtype != target for p in floats)
    if not move and not cast:
        return model
    work = aliased_copy(model, model)  # modules copied, weights shared until converted
    done: dict[int, torch.Tensor] = {}

    def converted(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in done:
            new = t.detach().to(device=device if move else t.device,
                                dtype=target if cast and t.is_floating_point() else t.dtype)
            done[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) \
                if isinstance(t, nn.Parameter) else new
        return done[id(t)]

    with torch.no_grad():
        for m in work.modules():
            for kind in (m._parameters, m._buffers):
                for name, t in list(kind.items()):
                    if t is not None and (move or t.is_floating_point()):
                        kind[name] = converted(t)
    if cast:
        work.register_forward_pre_hook(functools.partial(cast_inputs, target))
    if move:
        _drop_moves(work)  # a copy of a placed model moves its inputs to the new place only
        work.register_forward_pre_hook(functools.partial(_moved_inputs, device), with_kwargs=True)
    return work


def _drop_moves(model: nn.Module) -> None:
    for key, hook in list(model._forward_pre_hooks.items()):
        if isinstance(hook, functools.partial) and hook.func is _moved_inputs:
            del model._forward_pre_hooks[key]
            model._forward_pre_hooks_with_kwargs.pop(key, None)


@contextmanager
def trained_on(model: nn.Module, device: torch.device | None) -> Iterator[nn.Module]:
    """``model`` moved in place to ``device`` while it trains, and back on the CPU after (what
    a baseline cache saves); ``None``: where it is."""
    if device is None or model_device(model) == device:
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to("cpu")


def on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when it is on the CPU, else a copy there (for what runs on the host:
    exports, CPU latencies, saved weights)."""
    return placed(model, device=torch.device("cpu"))


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every tensor on the CPU (tied tensors stay tied), as a run
    folder saves it, whatever device the network was scored on."""
    ident = {name: id(t) for name, t in model.named_parameters(remove_duplicate=False)}
    ident.update((name, id(t)) for name, t in model.named_buffers(remove_duplicate=False))
    done: dict[int, torch.Tensor] = {}
    out = {}
    for key, t in model.state_dict().items():
        which = ident.get(key, id(t))  # tied entries are one parameter under two names
        if which not in done:
            done[which] = t if t.device.type == "cpu" else t.detach().cpu()
        out[key] = done[which]
    return out


def example_on(inputs: torch.Tensor | Sequence[torch.Tensor], device: torch.device | None
               ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Example inputs on ``device`` (as they are for ``None``)."""
    if isinstance(inputs, torch.Tensor):
        return to_device(inputs, device)
    return tuple(to_device(t, device) for t in inputs)
