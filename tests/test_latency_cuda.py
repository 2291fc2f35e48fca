"""GPU latency backends on a machine without a GPU: the one clear error for each missing
runtime, and the cuda backend's timing and table build on a simulated GPU.

The simulated GPU: torch's ``meta`` device stands in for ``cuda:0`` (models run there shape by
shape, so every module and tensor really moves), and ``torch.cuda``'s ``Event``,
``synchronize``, ``is_available``, ``device_count``, ``get_device_name`` and
``get_device_properties`` are fakes that log what is called, so the order of events,
calls and synchronizes is checked exactly. Tables stored before GPU backends still load and
compare as they did."""

from __future__ import annotations

import hashlib
import json
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.latency import backends, measure
from autoprune.latency.build import measure_blocks_and_networks
from autoprune.latency.cache import table_cache_path
from autoprune.latency.device import (DEVICE_MATCH_KEYS, BackendError, Device, describe_device,
                                      fingerprint_mismatch)
from autoprune.latency.measure import make_runner, measure_latency, time_calls
from autoprune.latency.table import LatencyTable
from autoprune.search_spaces import ChannelSpace
from autoprune.settings import ProfilePlan

QUICK = ProfilePlan(grid=2, rounds=1, warmup=1, repeats=2, calibration=4, holdout=3,
                    net_warmup=1, net_repeats=3)
META = torch.device("meta")


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    return ConvNet().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(1, 3, 8, 8)


# ---------------------------------------------------------------------- no GPU here
def _no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine, whatever it is: torch sees no CUDA GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_backend_without_a_gpu_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                       net: nn.Module, x: torch.Tensor) -> None:
    _no_cuda(monkeypatch)
    device = Device(backend="cuda")  # naming it is fine (settings, records, other machines)
    assert device.resolved_clock == "cuda" and device.on_gpu
    for attempt in (lambda: device.fingerprint(x),
                    lambda: measure_latency(net, x, device=device, warmup=0, repeats=1),
                    lambda: LatencyTable.build(net, x, device=device, plan=QUICK),
                    lambda: make_runner(net, x, backend="cuda", threads=1)):
        with pytest.raises(BackendError) as err:
            attempt()
        text = str(err.value)
        assert text.startswith("the cuda latency backend needs a CUDA GPU")
        assert "Fix: use --backend torch or onnxruntime" in text
        assert "\n" not in text
    if torch.version.cuda is None:  # a CPU build of torch says so
        monkeypatch.undo()
        with pytest.raises(BackendError, match="built without CUDA"):
            device.fingerprint(x)


def test_cuda_backend_names_a_gpu_that_is_not_there(monkeypatch: pytest.MonkeyPatch,
                                                    x: torch.Tensor) -> None:
    _fake_gpu(monkeypatch)
    with pytest.raises(BackendError, match=r"asked for GPU 3, but torch sees 1 \(0 to 0\)"):
        Device(backend="cuda", gpu=3).fingerprint(x)
    with pytest.raises(ValueError, match="CUDA device index"):
        Device(backend="cuda", gpu=-1)


def test_clocks_follow_the_backend() -> None:
    assert Device(backend="cuda").resolved_clock == "cuda"
    assert Device(backend="cuda", clock="wall").resolved_clock == "wall"
    assert Device(backend="onnxruntime-cuda").resolved_clock == "wall"
    assert Device().resolved_clock == "cpu"  # as before
    with pytest.raises(ValueError, match="not the GPU"):
        Device(backend="cuda", clock="cpu")
    with pytest.raises(ValueError, match="cuda backend only"):
        Device(clock="cuda")
    with pytest.raises(ValueError, match="cuda backend only"):
        Device(backend="onnxruntime-tensorrt", clock="cuda")
    with pytest.raises(ValueError, match="unknown latency backend"):
        Device(backend="tensorrt")


def test_onnxruntime_gpu_providers_missing_is_one_clear_error(net: nn.Module,
                                                              x: torch.Tensor) -> None:
    ort = pytest.importorskip("onnxruntime")
    for backend, provider in (("onnxruntime-cuda", "CUDAExecutionProvider"),
                              ("onnxruntime-tensorrt", "TensorrtExecutionProvider")):
        if provider in ort.get_available_providers():
            continue  # onnxruntime-gpu is installed: nothing is missing
        for attempt in (lambda: Device(backend=backend).fingerprint(x),
                        lambda: measure_latency(net, x, device=Device(backend=backend),
                                                warmup=0, repeats=1),
                        lambda: make_runner(net, x, backend=backend, threads=1)):
            with pytest.raises(BackendError) as err:
                attempt()
            text = str(err.value)
            assert f"needs onnxruntime's {provider}" in text
            assert "Fix: pip install onnxruntime-gpu" in text
            assert "--backend onnxruntime (CPU)" in text


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_onnxruntime_falling_back_to_the_cpu_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                        net: nn.Module, x: torch.Tensor) -> None:
    """onnxruntime-gpu whose CUDA libraries do not load runs on the CPU without a word: the
    runner refuses to time that as a GPU latency."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: the provider would load")
    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", *available])
    assert backends.ort_providers("onnxruntime-cuda", 1) == [
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    with pytest.raises(BackendError, match="could not start its CUDAExecutionProvider"):
        make_runner(net, x, backend="onnxruntime-cuda", threads=1)


# ---------------------------------------------------------------------- a simulated GPU
class FakeCuda:
    """``torch.cuda``'s timing calls, logged. A recorded event reads a clock that only the test's
    own function moves (``tick``), or with ``real`` the host's clock, in ms."""

    def __init__(self, real: bool = False) -> None:
        self.log: list[str] = []
        self.now = 0.0
        self.real = real

    def synchronize(self, device: Any = None) -> None:
        self.log.append("sync")

    def Event(self, enable_timing: bool = False) -> FakeEvent:  # noqa: N802 - torch's name
        assert enable_timing
        return FakeEvent(self)

    def tick(self, ms: float) -> None:
        self.log.append("call")
        self.now += ms


class FakeEvent:
    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self.at: float | None = None

    def record(self, stream: Any = None) -> None:
        self.cuda.log.append("record")
        self.at = time.perf_counter() * 1e3 if self.cuda.real else self.cuda.now

    def elapsed_time(self, end: FakeEvent) -> float:
        # read only once both events are recorded and a synchronize came after the last one
        assert self.at is not None and end.at is not None
        last_record = len(self.cuda.log) - 1 - self.cuda.log[::-1].index("record")
        assert "sync" in self.cuda.log[last_record:], "event read before a synchronize"
        self.cuda.log.append("read")
        return end.at - self.at


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, *, target: torch.device = META,
              real: bool = False) -> FakeCuda:
    """torch sees one CUDA GPU, which is ``target`` (the meta device) in disguise."""
    fake = FakeCuda(real)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Simulated GPU 80GB")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: types.SimpleNamespace(
        major=9, minor=0, total_memory=80 * 2**30))
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    monkeypatch.setattr(torch.cuda, "synchronize", fake.synchronize)
    monkeypatch.setattr(torch.cuda, "Event", fake.Event)
    monkeypatch.setattr(backends, "_nvidia_smi", lambda gpu: {"driver_version": "550.54.15"})
    monkeypatch.setattr(measure, "gpu_target", lambda gpu: (backends.require_cuda(gpu), target)[1])
    return fake


def test_time_calls_records_events_around_each_call_after_a_synchronize(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_gpu(monkeypatch)
    durations = iter([9.0, 9.0, 2.0, 4.0, 3.0])  # two warm-up calls, then three timed
    timings = time_calls(lambda: fake.tick(next(durations)), warmup=2, repeats=3, cuda=META)
    timed = ["sync", "record", "call", "record"]
    assert fake.log == ["call", "call", *timed, *timed, *timed, "sync", "sync",
                        "read", "read", "read"]
    assert timings.gpu is not None
    assert np.allclose(timings.of("cuda"), [0.002, 0.004, 0.003])  # seconds, per call
    assert len(timings.of("wall")) == 3 and len(timings.of("cpu")) == 3
    plain = time_calls(lambda: None, warmup=0, repeats=2)  # a CPU runner: no events at all
    assert plain.gpu is None and fake.log.count("sync") == 5
    with pytest.raises(ValueError, match="cuda clock needs calls timed on a GPU"):
        plain.of("cuda")


def test_cuda_runner_moves_a_copy_keeps_the_dtype_and_synchronizes_itself(
        monkeypatch: pytest.MonkeyPatch, net: nn.Module, x: torch.Tensor) -> None:
    fake = _fake_gpu(monkeypatch)
    half = ConvNet().to(torch.bfloat16).eval()
    run = make_runner(half, x.to(torch.bfloat16), backend="cuda", threads=1)
    assert run.cuda_device == META
    moved = run.call.__closure__  # the model the runner calls
    models = [c.cell_contents for c in moved if isinstance(c.cell_contents, nn.Module)]
    assert models and all(p.device == META and p.dtype == torch.bfloat16
                          for p in models[0].parameters())
    assert all(p.device.type == "cpu" for p in half.parameters())  # the caller's is untouched
    with torch.inference_mode():
        timings = time_calls(run, warmup=1, repeats=2)  # the runner says where it runs
    assert timings.gpu is not None and fake.log.count("record") == 4
    # a model already on the GPU is used as it is
    there = ConvNet().to(META)
    run = make_runner(there, x, backend="cuda", threads=1)
    assert any(c.cell_contents is there for c in run.call.__closure__)


def test_measure_latency_on_the_cuda_backend_names_the_gpu(monkeypatch: pytest.MonkeyPatch,
                                                           net: nn.Module,
                                                           x: torch.Tensor) -> None:
    fake = _fake_gpu(monkeypatch)
    m = measure_latency(net, x, device=Device(backend="cuda"), warmup=2, repeats=5)
    fp = m.device
    assert fp["backend"] == "cuda" and fp["clock"] == "cuda"
    assert fp["backend_version"] == torch.__version__
    assert (fp["gpu"], fp["gpu_index"], fp["driver"], fp["cuda"], fp["cudnn"]) == (
        "Simulated GPU 80GB", 0, "550.54.15", "12.4", "90100")
    assert fp["gpu_capability"] == "9.0" and fp["gpu_memory_gb"] == 80.0
    assert fp["threads"] == 1 and fp["batch"] == 1 and fp["input_shape"] == [1, 3, 8, 8]
    assert fake.log.count("record") == 10 and fake.log.count("read") == 5
    assert m.median_ms == 0.0  # the fake clock moves only when a test's function says so
    text = describe_device(fp)
    assert text.startswith("Simulated GPU 80GB (GPU 0, driver 550.54.15, CUDA 12.4, cuDNN "
                           "90100) on ")
    assert f"cuda torch {torch.__version__}, 1 thread, batch 1, input 1x3x8x8, CUDA event " \
           "time" in text
    assert Device.of(fp) == Device(backend="cuda", clock="cuda", input_shape=(3, 8, 8))
    # the same GPU again matches; another GPU or CUDA does not
    assert fingerprint_mismatch(fp, dict(fp, driver="999", cudnn="1")) == {}
    assert set(fingerprint_mismatch(fp, dict(fp, gpu="Other GPU", cuda="11.8"))) == {
        "gpu", "cuda"}


def test_a_table_builds_on_the_cuda_backend_through_the_same_code(
        monkeypatch: pytest.MonkeyPatch, net: nn.Module, x: torch.Tensor) -> None:
    """Blocks and networks run on the (simulated) GPU and every timed call is bracketed by
    events; the correction and the held-out check run as on the CPU."""
    fake = _fake_gpu(monkeypatch, real=True)
    space = ChannelSpace.from_model(net, x, round_to=8)
    table = LatencyTable.build(net, x, space=space, device=Device(backend="cuda"), plan=QUICK,
                               refuse=False)
    assert table.device["backend"] == "cuda" and table.device["gpu"] == "Simulated GPU 80GB"
    assert table.device["clock"] == "cuda"
    assert "check" in table.correction and np.isfinite(table.predict({}))
    builds = 1 + ("first_attempt" in table.correction or "second_attempt" in table.correction)
    grid = sum(e.ms.size for e in table.entries)
    nets = QUICK.calibration + QUICK.holdout
    per_build = grid * QUICK.repeats + nets * QUICK.net_repeats  # one round each
    assert fake.log.count("read") == builds * per_build * QUICK.rounds
    assert fake.log.count("record") == 2 * fake.log.count("read")
    assert all(p.device.type == "cpu" for p in net.parameters())


def test_blocks_are_built_in_the_models_dtype_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu(monkeypatch)
    seen: list[torch.dtype] = []
    real = measure.on_device

    def spy(model: nn.Module, inputs: tuple[torch.Tensor, ...], device: torch.device) -> Any:
        seen.append(next(model.parameters()).dtype)
        return real(model, inputs, device)

    monkeypatch.setattr(measure, "on_device", spy)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    op = {"type": "Conv2d", "bias": True, "in_size": [6, 6], "groups": 1}
    spec = (conv, [], op, (4,), (4, 8))
    rng = np.random.default_rng(0)
    ms, _ = measure_blocks_and_networks([spec], [], (torch.randn(1, 4, 6, 6),), 1, "cuda",
                                        "cuda", QUICK, rng, dtype=torch.float16)
    assert seen == [torch.float16, torch.float16] and ms[0].shape == (1, 2)


# ---------------------------------------------------------------------- stored tables
OLD = {"cpu": "AMD EPYC 7B13", "machine": "x86_64", "logical_cores": 2, "backend": "torch",
       "backend_version": "2.5.1", "threads": 1, "batch": 1, "input_shape": [1, 3, 8, 8],
       "clock": "cpu"}


def test_fingerprints_stored_before_gpu_backends_still_read_and_compare(
        net: nn.Module, x: torch.Tensor) -> None:
    assert Device.of(OLD) == Device(backend="torch", threads=1, batch=1, clock="cpu",
                                    input_shape=(3, 8, 8))
    assert Device.of({"backend": "onnxruntime", "threads": 2}) == Device(
        backend="onnxruntime", threads=2)
    now = Device().fingerprint(x)
    assert not {"gpu", "gpu_index", "cuda", "cudnn", "driver"} & set(now)  # CPU: as before
    assert fingerprint_mismatch(OLD, dict(OLD)) == {}
    assert set(fingerprint_mismatch(OLD, now)) <= set(DEVICE_MATCH_KEYS)
    assert "CUDA" not in describe_device(OLD) and describe_device(OLD).startswith("AMD EPYC")
    # a search's cache finds tables it cached before: the key of a CPU device is unchanged
    space = ChannelSpace.from_model(net, x, round_to=8)
    key = json.dumps([{k: OLD.get(k) for k in DEVICE_MATCH_KEYS}, _signature(space),
                      space.round_to, space.min_ratio], sort_keys=True)
    path = table_cache_path(net, space, OLD, Path("cache"))
    assert path.stem.endswith(hashlib.sha256(key.encode()).hexdigest()[:12])
    assert table_cache_path(net, space, dict(OLD, gpu="A", cuda="12.4"), Path("cache")) != path


def _signature(space: ChannelSpace) -> Any:
    from autoprune.latency.table import model_signature

    return model_signature(space)
