"""Measured latency: time a model for real on this machine, and say which machine that was.

A latency is only meaningful for a stated device, backend, thread count, batch and input shape
(DESIGN.md, "Latency, measured honestly"), so every measurement carries a *device fingerprint*
with those facts. Timing follows common practice for noisy hosts: pin the thread count, warm
up (first calls pay for kernel selection and allocator growth), time many single calls and
report the median with the 10th and 90th percentiles; the garbage collector is paused while
timing, as ``timeit`` does, so a collection does not land inside one call.

Clocks. ``wall`` is elapsed time. ``cpu`` is the CPU time of the calling thread
(``CLOCK_THREAD_CPUTIME_ID``): with one thread, torch and onnxruntime run the whole inference
on the calling thread, so on an otherwise idle core the two are the same number; on a shared
machine wall-clock time also counts the slices the OS gives other processes, which made the
wall-clock median of the same network differ by more than 10% between two passes a minute
apart for most networks we tried on a loaded 2-core host, while the thread-time median mostly
agreed within 5% (numbers in benchmarks/latency_model.py's re-measurement rows). The default
clock is therefore ``cpu`` for one thread and ``wall`` for more (a thread's CPU time would miss
the work of the others). Both medians are always recorded; the clock is part of the
fingerprint, so a table built with one clock is never compared with the other.

Backends: ``torch`` (eager, ``torch.inference_mode``, ``torch.set_num_threads``) and
``onnxruntime`` (the model exported with torch's TorchScript-based ONNX exporter, run by the CPU
execution provider with ``intra_op_num_threads``). onnx/onnxruntime are imported lazily.

GPU backends (:mod:`autoprune.latency.backends`). ``cuda``: the model is copied to the GPU
(weights moved one by one, dtype kept; a model already there is used as it is) with its
inputs, and :func:`time_calls` times each call with a pair of CUDA events recorded around it on
the GPU's current stream, after a ``torch.cuda.synchronize()`` that drains the calls before it
(warm-up first; every event is read after a final synchronize). That is the ``cuda`` clock;
the ``wall`` clock of the same calls is host time from before the start event to after the
synchronize that follows the call. A runner made by :func:`make_runner` for the cuda backend
says which GPU it runs on (``cuda_device``), so every caller of ``time_calls`` -- a
measurement, a table build, a benchmark -- synchronizes without knowing about GPUs.
``onnxruntime-cuda`` / ``onnxruntime-tensorrt``: inputs and outputs bound on the GPU
(I/O binding), ``run_with_iobinding`` returns once the GPU is done: the ``wall`` clock.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import io
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.latency.backends import (ORT_BACKENDS, check_backend, onnxruntime_module,
                                        ort_providers, require_cuda)
from autoprune.latency.device import FINAL_REPEATS, FINAL_WARMUP, BackendError, Device, as_inputs
from autoprune.placement import on_cpu, placed

__all__ = ["LatencyMeasurement", "Timings", "export_onnx", "gpu_target", "make_runner",
           "measure_latency", "on_device", "pinned_threads", "time_calls"]

@dataclass(frozen=True, kw_only=True)
class LatencyMeasurement:
    """Median and spread of single-call times, in milliseconds, on ``device`` (whose ``clock``
    says which time); ``wall_median_ms`` is the wall-clock median of the same calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    device: Mapping[str, Any]
    wall_median_ms: float = float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"median_ms": round(self.median_ms, 4), "p10_ms": round(self.p10_ms, 4),
                "p90_ms": round(self.p90_ms, 4), "device": dict(self.device)}


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run torch with exactly ``threads`` intra-op threads, restoring the previous count after."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True, kw_only=True)
class Timings:
    """Seconds of single calls, by every clock taken (``gpu``: CUDA events, or ``None``)."""

    wall: np.ndarray
    cpu: np.ndarray
    gpu: np.ndarray | None = None

    def of(self, clock: str) -> np.ndarray:
        if clock == "cuda":
            if self.gpu is None:
                raise ValueError("the cuda clock needs calls timed on a GPU (a runner of the "
                                 "cuda backend, or time_calls(..., cuda=device))")
            return self.gpu
        return self.cpu if clock == "cpu" else self.wall


def time_calls(fn: Callable[[], object], *, warmup: int, repeats: int,
               cuda: torch.device | None = None) -> Timings:
    """Seconds of ``repeats`` single calls of ``fn`` after ``warmup`` untimed ones.

    ``cuda`` (default: ``fn.cuda_device``, which the cuda backend's runners carry): the GPU
    ``fn`` runs on; each call is then also timed with CUDA events (see the module notes)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    gpu = cuda if cuda is not None else getattr(fn, "cuda_device", None)
    if gpu is not None:
        return _time_on_gpu(fn, torch.device(gpu), warmup=warmup, repeats=repeats)
    for _ in range(warmup):
        fn()
    wall, cpu = _clocked(fn, repeats)
    return Timings(wall=wall * 1e-9, cpu=cpu * 1e-9)


def _clocked(step: Callable[[], object], repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """Wall and calling-thread CPU nanoseconds of ``repeats`` calls of ``step``, with the
    garbage collector off while they run."""
    wall = np.empty(repeats, dtype=np.int64)
    cpu = np.empty(repeats, dtype=np.int64)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        now, thread_now = time.perf_counter_ns, time.thread_time_ns
        for i in range(repeats):
            w0, c0 = now(), thread_now()
            step()
            c1, w1 = thread_now(), now()
            wall[i], cpu[i] = w1 - w0, c1 - c0
    finally:
        if gc_was_enabled:
            gc.enable()
    return wall, cpu


def _on(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.cuda.device(device)`` for a CUDA device (events and synchronize then act on
    its current stream), else nothing."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _time_on_gpu(fn: Callable[[], object], device: torch.device, *, warmup: int,
                 repeats: int) -> Timings:
    """:func:`time_calls` on a GPU: after the warm-up, each call between a start and an end
    CUDA event, after a synchronize (so the GPU is idle when the start event is recorded and
    each call is timed alone); the events are read after the last synchronize."""
    with _on(device):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        pairs = iter(zip(starts, ends))

        def step() -> None:
            start, end = next(pairs)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)

        wall, cpu = _clocked(step, repeats)
        torch.cuda.synchronize(device)  # every event has completed before it is read
        gpu_ms = np.array([s.elapsed_time(e) for s, e in zip(starts, ends)], dtype=float)
    return Timings(wall=wall * 1e-9, cpu=cpu * 1e-9, gpu=gpu_ms * 1e-3)


class _GpuRunner:
    """One inference on a GPU; ``cuda_device`` tells :func:`time_calls` to time it there."""

    def __init__(self, call: Callable[[], object], device: torch.device) -> None:
        self.call = call
        self.cuda_device = device

    def __call__(self) -> object:
        return self.call()


def gpu_target(gpu: int) -> torch.device:
    """The torch device of GPU ``gpu`` (checked: one ``BackendError`` naming the fix when
    there is none). Tests point this at another device to simulate a GPU."""
    require_cuda(gpu)
    return torch.device("cuda", gpu)


def on_device(model: nn.Module, inputs: tuple[torch.Tensor, ...], device: torch.device
              ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``model`` (itself when already on ``device``, else a copy there: weights moved one by
    one, dtype kept, ``model`` untouched; a network placed for scoring moves its inputs to the
    new place, ``autoprune.placement``) and ``inputs`` on ``device``, in eval mode."""
    with torch.no_grad():
        return placed(model, device=device).eval(), tuple(x.to(device) for x in inputs)


def _call(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    if "use_cache" in inspect.signature(model.forward).parameters:  # HF: time no cache
        return lambda: model(*inputs, use_cache=False)
    return lambda: model(*inputs)


def make_runner(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
                backend: str, threads: int, gpu: int = 0) -> Callable[[], object]:
    """A zero-argument callable running one inference of ``model`` on ``example_inputs``.

    torch runners must be called inside ``pinned_threads`` and ``torch.inference_mode`` (as
    :func:`measure_latency` does); onnxruntime sessions pin their own threads. ``gpu``: the
    CUDA device a GPU backend runs on; the cuda backend's runner carries it as
    ``cuda_device`` (:func:`time_calls` synchronizes and times it there).
    """
    check_backend(backend)
    inputs = as_inputs(example_inputs)
    if backend == "torch":  # on the CPU: a model placed on a GPU is timed as a CPU copy
        work, moved = on_device(model, inputs, torch.device("cpu"))
        return _call(work, moved)
    if backend == "cuda":
        device = gpu_target(gpu)
        work, moved = on_device(model, inputs, device)
        return _GpuRunner(_call(work, moved), device)
    return _ort_runner(model, inputs, backend=backend, threads=threads, gpu=gpu)


def _ort_runner(model: nn.Module, inputs: tuple[torch.Tensor, ...], *, backend: str,
                threads: int, gpu: int) -> Callable[[], object]:
    ort = onnxruntime_module()
    providers = ort_providers(backend, gpu)  # fails with the fix before the export
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    host = torch.device("cpu")  # exported from the host, whatever the network was scored on
    session = ort.InferenceSession(export_onnx(on_cpu(model), tuple(x.to(host) for x in inputs)),
                                   options, providers=providers)
    feed = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
    if backend == "onnxruntime":
        return lambda: session.run(None, feed)
    wanted = ORT_BACKENDS[backend]
    if wanted not in session.get_providers():  # onnxruntime falls back to the CPU silently
        raise BackendError(
            f"onnxruntime could not start its {wanted} for the {backend} latency backend (it "
            f"would run on {', '.join(session.get_providers())}): its CUDA, cuDNN or TensorRT "
            "libraries are missing or do not match this onnxruntime-gpu. Fix: install the "
            "versions onnxruntime-gpu's documentation names, or use --backend cuda or "
            "onnxruntime.")
    binding = session.io_binding()
    for name, x in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", gpu))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", gpu)

    def run() -> object:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return None

    return run


def measure_latency(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
                    device: Device | None = None, warmup: int = FINAL_WARMUP,
                    repeats: int = FINAL_REPEATS) -> LatencyMeasurement:
    """Time ``model`` on this machine for ``device`` (default ``Device()``: torch on the CPU,
    one thread, batch 1), on random inputs shaped like ``example_inputs`` at the device's
    batch (on a GPU backend: a copy of the model on the GPU, in its own dtype).

    The model is put in eval mode and run without autograd; ``repeats`` single calls are timed
    after ``warmup`` untimed ones, with the thread count pinned. The clock is the device's
    (default: ``cpu`` for one thread, else ``wall``; see the module notes).
    """
    device = device or Device()
    inputs = device.inputs(as_inputs(example_inputs))
    fingerprint = device.fingerprint(inputs)  # a backend this machine lacks fails here
    with pinned_threads(device.threads), torch.inference_mode():
        run = make_runner(model, inputs, backend=device.backend, threads=device.threads,
                          gpu=device.gpu)
        timings = time_calls(run, warmup=warmup, repeats=repeats)
    times = timings.of(fingerprint["clock"]) * 1e3
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return LatencyMeasurement(median_ms=float(median), p10_ms=float(p10), p90_ms=float(p90),
                              device=fingerprint,
                              wall_median_ms=float(np.median(timings.wall) * 1e3))


def export_onnx(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> bytes:
    """The model as an ONNX graph (bytes), via torch's TorchScript-based exporter, which needs
    no extra package (the dynamo exporter needs onnxscript)."""
    onnxruntime_module()  # fail early, with the install hint, if the backend is missing
    buffer = io.BytesIO()
    names = [f"input{i}" for i in range(len(example_inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model.eval(), example_inputs, buffer, input_names=names,
                              opset_version=17, dynamo=False)
        except Exception as err:  # noqa: BLE001 - one clear message for any exporter failure
            raise BackendError(
                f"exporting {type(model).__name__} to ONNX failed ({type(err).__name__}: {err}). "
                "Fix: use --backend torch, or make the model exportable with torch.onnx.export."
            ) from err
    return buffer.getvalue()
