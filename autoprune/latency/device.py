"""``Device``: what a latency is for, as one frozen value -- backend, thread count, batch,
clock and input shape. Every measurement, table build, table cache key and check after a
search takes one, so no latency travels without the facts that make it comparable
(DESIGN.md, "Latency, measured honestly"). The machine itself (CPU model, backend version)
is added by :meth:`Device.fingerprint`, which is what tables store and compare."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import os
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


__all__ = ["FINAL_REPEATS", "FINAL_WARMUP", "BACKENDS", "CLOCKS", "DEVICE_MATCH_KEYS", "BackendError", "Device", "backend_version",
           "as_inputs", "check_backend", "cpu_model", "describe_device", "device_fingerprint",
           "fingerprint_mismatch", "onnxruntime_module", "resolve_clock"]

# How a network whose latency users are told is timed (``autoprune latency``, the check after
# a search, ``measure_latency``'s defaults): more repeats than a calibration point.
FINAL_WARMUP = 10
FINAL_REPEATS = 100

BACKENDS = ("torch", "onnxruntime")
CLOCKS = ("cpu", "wall")

# The fields two latencies must share to be comparable. ``logical_cores`` is informational.
DEVICE_MATCH_KEYS = ("cpu", "machine", "backend", "backend_version", "threads", "batch",
                     "input_shape", "clock")


class BackendError(RuntimeError):
    """A latency backend that is not installed, or a model it cannot run."""


def cpu_model() -> str:
    """The processor's marketing name (``model name`` in /proc/cpuinfo on x86, ``Hardware`` /
    ``CPU part`` on ARM), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            fields: dict[str, str] = {}
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip().lower(), value.strip())
        for key in ("model name", "hardware", "cpu model", "processor"):
            if fields.get(key) and not fields[key].isdigit():
                return fields[key]
        if "cpu part" in fields:
            return f"{fields.get('cpu implementer', '?')}:{fields['cpu part']}"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def backend_version(backend: str) -> str:
    check_backend(backend)
    if backend == "torch":
        import torch  # noqa: PLC0415 - torch only when a latency is taken: --help stays fast

        return torch.__version__
    return onnxruntime_module().__version__


def resolve_clock(clock: str | None, threads: int) -> str:
    """``None`` means ``cpu`` for one thread, ``wall`` for more (see the module notes)."""
    if clock is None or clock == "auto":
        return "cpu" if threads == 1 else "wall"
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose one of {list(CLOCKS)} (or auto)")
    if clock == "cpu" and threads != 1:
        raise ValueError(f"clock 'cpu' times the calling thread only, which misses the work of "
                         f"{threads - 1} other thread(s); use --clock wall with --threads "
                         f"{threads}, or --threads 1")
    return clock


def device_fingerprint(example_inputs: torch.Tensor | Sequence[torch.Tensor], *, threads: int,
                       backend: str, clock: str | None = None) -> dict[str, Any]:
    """What a latency refers to: CPU, backend and its version, threads, batch, input shape and
    the clock it was timed with."""
    inputs = as_inputs(example_inputs)
    shapes = [list(x.shape) for x in inputs]
    return {"cpu": cpu_model(), "machine": platform.machine(), "logical_cores": os.cpu_count(),
            "backend": backend, "backend_version": backend_version(backend),
            "threads": int(threads), "batch": int(inputs[0].shape[0]) if inputs[0].dim() else 1,
            "input_shape": shapes[0] if len(shapes) == 1 else shapes,
            "clock": resolve_clock(clock, threads)}


def describe_device(fp: Mapping[str, Any]) -> str:
    """One line a person reads: ``AMD EPYC, torch 2.13.0, 1 thread, batch 1, input 1x1x32x32``."""
    shape = fp.get("input_shape", [])
    flat = shape if shape and not isinstance(shape[0], list) else (shape[0] if shape else [])
    threads = fp.get("threads")
    clock = {"cpu": "thread CPU time", "wall": "wall-clock time"}.get(fp.get("clock"), "?")
    return (f"{fp.get('cpu')}, {fp.get('backend')} {fp.get('backend_version')}, {threads} "
            f"thread{'s' if threads != 1 else ''}, batch {fp.get('batch')}, input "
            f"{'x'.join(str(d) for d in flat)}, {clock}")


def fingerprint_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any],
                         keys: Sequence[str] = DEVICE_MATCH_KEYS) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, current)}`` for every compared field that differs."""
    return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}



@dataclass(frozen=True, kw_only=True)
class Device:
    """``backend``: ``torch`` (eager) or ``onnxruntime``; ``threads``: intra-op threads;
    ``batch``: the batch a latency is for; ``clock``: ``cpu`` (the calling thread's CPU time),
    ``wall``, or ``None`` (``cpu`` with one thread, else ``wall``); ``input_shape``: one
    sample's shape without the batch (``None``: the example inputs' own)."""

    backend: str = "torch"
    threads: int = 1
    batch: int = 1
    clock: str | None = None
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_backend(self.backend)
        if self.threads < 1 or self.batch < 1:
            raise ValueError(f"threads and batch must be at least 1 (got {self.threads}, "
                             f"{self.batch})")
        resolve_clock(self.clock, self.threads)  # a clock that cannot time these threads fails

    @property
    def resolved_clock(self) -> str:
        return resolve_clock(self.clock, self.threads)

    def inputs(self, example: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Random inputs shaped like ``example`` (or ``input_shape``) at this batch. Values do
        not change the time of dense layers; random rather than zeros so nothing takes a
        shortcut. Seeded: the same inputs every time."""
        import torch  # noqa: PLC0415 - see backend_version

        gen = torch.Generator().manual_seed(0)
        examples = as_inputs(example)
        shapes = [tuple(x.shape[1:]) for x in examples]
        if self.input_shape is not None:
            shapes[0] = tuple(self.input_shape)
        return tuple(_like(x, (self.batch, *s), gen) for s, x in zip(shapes, examples))

    def fingerprint(self, example: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, Any]:
        """This device on this machine, for inputs like ``example``: what tables store."""
        return device_fingerprint(self.inputs(example), threads=self.threads,
                                  backend=self.backend, clock=self.clock)

    @classmethod
    def of(cls, fingerprint: Mapping[str, Any]) -> Device:
        """The device a stored fingerprint (a table's, a measurement's) describes."""
        shape = fingerprint.get("input_shape") or []
        one = shape[0] if shape and isinstance(shape[0], list) else shape
        return cls(backend=str(fingerprint.get("backend", "torch")),
                   threads=int(fingerprint.get("threads", 1)),
                   batch=int(fingerprint.get("batch", 1)), clock=fingerprint.get("clock"),
                   input_shape=tuple(int(d) for d in one[1:]) if one else None)


def _like(example: Any, shape: tuple[int, ...], gen: Any) -> Any:
    """Random values of ``example``'s kind: normal floats, or integers (token ids, class
    labels) drawn from the example's own range so an embedding lookup stays in bounds."""
    import torch  # noqa: PLC0415 - see backend_version

    if example.dtype.is_floating_point or example.dtype.is_complex:
        return torch.randn(shape, generator=gen).to(example.dtype)
    high = max(1, int(example.max()) + 1) if example.numel() else 1
    return torch.randint(0, high, shape, generator=gen).to(example.dtype)


def onnxruntime_module() -> Any:
    try:
        import onnxruntime  # noqa: PLC0415 - heavy optional import, only for this backend
    except ImportError as err:
        raise BackendError("the onnxruntime backend needs the onnx and onnxruntime packages. "
                           "Fix: pip install onnx onnxruntime, or use --backend torch.") from err
    return onnxruntime


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}; choose one of {list(BACKENDS)}")


def as_inputs(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    import torch  # noqa: PLC0415 - see backend_version

    out = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not out:
        raise ValueError("example_inputs is empty; pass the tensor(s) the model is called with")
    return out
