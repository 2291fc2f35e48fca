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
"""

from __future__ import annotations

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

from autoprune.latency.device import (FINAL_REPEATS, FINAL_WARMUP, BackendError, Device, as_inputs,
                                      check_backend, onnxruntime_module)

__all__ = ["LatencyMeasurement", "Timings", "export_onnx", "make_runner", "measure_latency",
           "pinned_threads", "time_calls"]

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
    """Seconds of single calls, by both clocks."""

    wall: np.ndarray
    cpu: np.ndarray

    def of(self, clock: str) -> np.ndarray:
        return self.cpu if clock == "cpu" else self.wall


def time_calls(fn: Callable[[], object], *, warmup: int, repeats: int) -> Timings:
    """Seconds of ``repeats`` single calls of ``fn`` after ``warmup`` untimed ones."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        fn()
    wall = np.empty(repeats, dtype=np.int64)
    cpu = np.empty(repeats, dtype=np.int64)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        now, thread_now = time.perf_counter_ns, time.thread_time_ns
        for i in range(repeats):
            w0, c0 = now(), thread_now()
            fn()
            c1, w1 = thread_now(), now()
            wall[i], cpu[i] = w1 - w0, c1 - c0
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timings(wall=wall * 1e-9, cpu=cpu * 1e-9)


def make_runner(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
                backend: str, threads: int) -> Callable[[], object]:
    """A zero-argument callable running one inference of ``model`` on ``example_inputs``.

    torch runners must be called inside ``pinned_threads`` and ``torch.inference_mode`` (as
    :func:`measure_latency` does); onnxruntime sessions pin their own threads.
    """
    check_backend(backend)
    inputs = as_inputs(example_inputs)
    if backend == "torch":
        model.eval()
        if "use_cache" in inspect.signature(model.forward).parameters:  # HF: time no cache
            return lambda: model(*inputs, use_cache=False)
        return lambda: model(*inputs)
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(export_onnx(model, inputs), options,
                                   providers=["CPUExecutionProvider"])
    feed = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
    return lambda: session.run(None, feed)


def measure_latency(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
                    device: Device | None = None, warmup: int = FINAL_WARMUP,
                    repeats: int = FINAL_REPEATS) -> LatencyMeasurement:
    """Time ``model`` on this CPU for ``device`` (default ``Device()``: torch, one thread,
    batch 1), on random inputs shaped like ``example_inputs`` at the device's batch.

    The model is put in eval mode and run without autograd; ``repeats`` single calls are timed
    after ``warmup`` untimed ones, with the thread count pinned. The clock is the device's
    (default: ``cpu`` for one thread, else ``wall``; see the module notes).
    """
    device = device or Device()
    inputs = device.inputs(as_inputs(example_inputs))
    fingerprint = device.fingerprint(inputs)
    with pinned_threads(device.threads), torch.inference_mode():
        run = make_runner(model, inputs, backend=device.backend, threads=device.threads)
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
