"""``Device``: what a latency is for, as one frozen value -- backend, thread count, batch,
clock, input shape and, for a GPU backend, which GPU. Every measurement, table build, table cache key and check after a
search takes one, so no latency travels without the facts that make it comparable
(DESIGN.md, "Latency, measured honestly"). The machine itself (CPU model, backend version)
is added by :meth:`Device.fingerprint`, which is what tables store and compare; a GPU
backend's fingerprint names the GPU, its driver and the CUDA and cuDNN versions too. The
backends themselves, and the checks that they are installed, are
:mod:`autoprune.latency.backends`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import os
import platform
from typing import TYPE_CHECKING

from autoprune.latency.backends import (BACKENDS, GPU_BACKENDS, BackendError, check_backend,
                                        gpu_facts, onnxruntime_module, require_backend)

if TYPE_CHECKING:
    import torch


__all__ = ["FINAL_REPEATS", "FINAL_WARMUP", "BACKENDS", "CLOCKS", "DEVICE_MATCH_KEYS",
           "GPU_BACKENDS", "GPU_MATCH_KEYS", "BackendError", "Device", "backend_version",
           "as_inputs", "check_backend", "cpu_model", "describe_device", "device_fingerprint",
           "fingerprint_mismatch", "onnxruntime_module", "resolve_clock"]

# How a network whose latency users are told is timed (``autoprune latency``, the check after
# a search, ``measure_latency``'s defaults): more repeats than a calibration point.
FINAL_WARMUP = 10
FINAL_REPEATS = 100

# ``cuda``: CUDA events around each call (the cuda backend's own clock; measure.time_calls).
CLOCKS = ("cpu", "wall", "cuda")

# The fields two latencies must share to be comparable. ``logical_cores`` is informational.
DEVICE_MATCH_KEYS = ("cpu", "machine", "backend", "backend_version", "threads", "batch",
                     "input_shape", "clock")
# And, of a GPU backend's fingerprint, the GPU's name and the CUDA version (absent from CPU
# fingerprints, so tables stored before GPU backends compare, and cache, as they always did;
# the driver, cuDNN and the GPU's index are informational).
GPU_MATCH_KEYS = ("gpu", "cuda")


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


def backend_version(backend: str, gpu: int = 0) -> str:
    """The backend's version; one :class:`BackendError` naming the fix when it cannot run
    here (not installed, no GPU, a missing onnxruntime provider)."""
    require_backend(backend, gpu)
    if backend in ("torch", "cuda"):
        import torch  # noqa: PLC0415 - torch only when a latency is taken: --help stays fast

        return torch.__version__
    return onnxruntime_module().__version__


def resolve_clock(clock: str | None, threads: int, backend: str = "torch") -> str:
    """``None`` means ``cpu`` for one thread, ``wall`` for more (see the module notes); on the
    ``cuda`` backend ``cuda`` (CUDA events), on onnxruntime's GPU providers ``wall``."""
    if clock is None or clock == "auto":
        if backend in GPU_BACKENDS:
            return "cuda" if backend == "cuda" else "wall"
        return "cpu" if threads == 1 else "wall"
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose one of {list(CLOCKS)} (or auto)")
    if clock == "cuda" and backend != "cuda":
        raise ValueError(f"clock 'cuda' (CUDA events on torch's stream) times the cuda backend "
                         f"only, not {backend}; use --clock wall or auto")
    if clock == "cpu" and backend in GPU_BACKENDS:
        raise ValueError(f"clock 'cpu' times the calling thread, not the GPU the {backend} "
                         "backend runs on; use --clock auto (or cuda / wall)")
    if clock == "cpu" and threads != 1:
        raise ValueError(f"clock 'cpu' times the calling thread only, which misses the work of "
                         f"{threads - 1} other thread(s); use --clock wall with --threads "
                         f"{threads}, or --threads 1")
    return clock


def device_fingerprint(example_inputs: torch.Tensor | Sequence[torch.Tensor], *, threads: int,
                       backend: str, clock: str | None = None, gpu: int = 0) -> dict[str, Any]:
    """What a latency refers to: CPU, backend and its version, threads, batch, input shape and
    the clock it was timed with; for a GPU backend also the GPU (name, index, compute
    capability, memory), the driver and the CUDA and cuDNN versions."""
    inputs = as_inputs(example_inputs)
    shapes = [list(x.shape) for x in inputs]
    return {"cpu": cpu_model(), "machine": platform.machine(), "logical_cores": os.cpu_count(),
            "backend": backend, "backend_version": backend_version(backend, gpu),
            "threads": int(threads), "batch": int(inputs[0].shape[0]) if inputs[0].dim() else 1,
            "input_shape": shapes[0] if len(shapes) == 1 else shapes,
            "clock": resolve_clock(clock, threads, backend), **gpu_facts(backend, gpu)}


def describe_device(fp: Mapping[str, Any]) -> str:
    """One line a person reads: ``AMD EPYC, torch 2.13.0, 1 thread, batch 1, input 1x1x32x32``,
    or for a GPU ``NVIDIA H100 80GB HBM3 (GPU 0, driver 550.54.15, CUDA 12.4, cuDNN 90100) on
    AMD EPYC, cuda torch 2.13.0, ...``."""
    shape = fp.get("input_shape", [])
    flat = shape if shape and not isinstance(shape[0], list) else (shape[0] if shape else [])
    threads = fp.get("threads")
    clock = {"cpu": "thread CPU time", "wall": "wall-clock time",
             "cuda": "CUDA event time"}.get(fp.get("clock"), "?")
    where = f"{fp.get('cpu')}"
    if fp.get("backend") in GPU_BACKENDS or fp.get("gpu"):
        facts = [f"GPU {fp.get('gpu_index', 0)}"] + [
            f"{label} {fp[k]}" for k, label in (("driver", "driver"), ("cuda", "CUDA"),
                                                  ("cudnn", "cuDNN")) if fp.get(k)]
        where = f"{fp.get('gpu') or 'unknown GPU'} ({', '.join(facts)}) on {where}"
    if fp.get("measured_on") == "device":  # timed by time_on_device.py there
        where = (f"the device {fp['host']} ({where})" if fp.get("host") else
                 f"the device ({where})")
        if fp.get("provider"):
            where += f", {fp['provider']}"
    version = fp.get("backend_version")
    if fp.get("backend") == "cuda":
        version = f"torch {version}"
    return (f"{where}, {fp.get('backend')} {version}, {threads} "
            f"thread{'s' if threads != 1 else ''}, batch {fp.get('batch')}, input "
            f"{'x'.join(str(d) for d in flat)}, {clock}")


def fingerprint_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any],
                         keys: Sequence[str] = (*DEVICE_MATCH_KEYS, *GPU_MATCH_KEYS)
                         ) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, current)}`` for every compared field that differs."""
    return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}



@dataclass(frozen=True, kw_only=True)
class Device:
    """``backend``: ``torch`` (eager), ``onnxruntime``, ``cuda`` (torch eager on a CUDA GPU),
    ``onnxruntime-cuda`` or ``onnxruntime-tensorrt`` (:mod:`autoprune.latency.backends`);
    ``threads``: intra-op threads; ``batch``: the batch a latency is for; ``clock``: ``cpu``
    (the calling thread's CPU time), ``wall``, ``cuda`` (CUDA events; the cuda backend), or
    ``None`` (``cpu`` with one thread, else ``wall``; ``cuda`` on the cuda backend, ``wall`` on
    onnxruntime's GPU providers); ``input_shape``: one sample's shape without the batch
    (``None``: the example inputs' own); ``gpu``: the CUDA device index a GPU backend runs on
    (as torch numbers them, after CUDA_VISIBLE_DEVICES; CPU backends ignore it).

    Naming a backend checks only the name; whether this machine can run it is checked when a
    latency is first taken (:meth:`fingerprint`, a runner), as one ``BackendError``."""

    backend: str = "torch"
    threads: int = 1
    batch: int = 1
    clock: str | None = None
    input_shape: tuple[int, ...] | None = None
    gpu: int = 0

    def __post_init__(self) -> None:
        check_backend(self.backend)
        if self.threads < 1 or self.batch < 1:
            raise ValueError(f"threads and batch must be at least 1 (got {self.threads}, "
                             f"{self.batch})")
        if self.gpu < 0:
            raise ValueError(f"gpu is a CUDA device index, at least 0 (got {self.gpu})")
        # a clock that cannot time these threads, or this backend, fails
        resolve_clock(self.clock, self.threads, self.backend)

    @property
    def resolved_clock(self) -> str:
        return resolve_clock(self.clock, self.threads, self.backend)

    @property
    def on_gpu(self) -> bool:
        """Whether the backend runs on a GPU."""
        return self.backend in GPU_BACKENDS

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
                                  backend=self.backend, clock=self.clock, gpu=self.gpu)

    @classmethod
    def of(cls, fingerprint: Mapping[str, Any]) -> Device:
        """The device a stored fingerprint (a table's, a measurement's) describes."""
        shape = fingerprint.get("input_shape") or []
        one = shape[0] if shape and isinstance(shape[0], list) else shape
        return cls(backend=str(fingerprint.get("backend", "torch")),
                   threads=int(fingerprint.get("threads", 1)),
                   batch=int(fingerprint.get("batch", 1)), clock=fingerprint.get("clock"),
                   input_shape=tuple(int(d) for d in one[1:]) if one else None,
                   gpu=int(fingerprint.get("gpu_index") or 0))


def _like(example: Any, shape: tuple[int, ...], gen: Any) -> Any:
    """Random values of ``example``'s kind: normal floats, or integers (token ids, class
    labels) drawn from the example's own range so an embedding lookup stays in bounds."""
    import torch  # noqa: PLC0415 - see backend_version

    if example.dtype.is_floating_point or example.dtype.is_complex:
        return torch.randn(shape, generator=gen).to(example.dtype)
    high = max(1, int(example.max()) + 1) if example.numel() else 1
    return torch.randint(0, high, shape, generator=gen).to(example.dtype)


def as_inputs(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    import torch  # noqa: PLC0415 - see backend_version

    out = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not out:
        raise ValueError("example_inputs is empty; pass the tensor(s) the model is called with")
    return out
