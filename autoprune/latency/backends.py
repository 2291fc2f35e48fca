"""The runtimes a latency can be for, and whether this machine has them.

Backends (``Device.backend``, ``--backend``):

* ``torch``: torch eager on the CPU.
* ``onnxruntime``: the model exported to ONNX, run by onnxruntime's CPU execution provider.
* ``cuda``: torch eager on a CUDA GPU (``Device.gpu``, default 0): the model and its inputs are
  copied to the GPU in the model's own dtype (a bf16 or fp16 model is timed in bf16 or fp16),
  and every call is timed with a pair of CUDA events after a ``torch.cuda.synchronize()``
  (the ``cuda`` clock; :func:`autoprune.latency.measure.time_calls`).
* ``onnxruntime-cuda`` and ``onnxruntime-tensorrt``: the same ONNX graph run by onnxruntime's
  CUDA or TensorRT execution provider on GPU ``Device.gpu`` (onnxruntime places the nodes a
  provider cannot run on the CPU provider, as it always does). Inputs and outputs stay on the
  GPU (I/O binding), and ``session.run`` returns once the GPU is done, so these are timed with
  the ``wall`` clock. They need the ``onnxruntime-gpu`` package (TensorRT also its libraries);
  neither is ever a dependency of autoprune.

One backend name per provider (rather than a separate ``--provider`` option) keeps a latency
table's fingerprint, its cache key and the command line's ``--backend`` one value, as they
have always been.

Availability is checked where a latency is first taken (:func:`require_backend`, called when a
device is fingerprinted and when a runner is made), and a missing runtime is one
:class:`BackendError` naming the fix; naming a backend only (``Device(backend="cuda")``) checks
nothing, so settings and run records stay readable on any machine. Nothing here imports torch
or onnxruntime at module level.
"""

from __future__ import annotations

import subprocess
from typing import Any

__all__ = ["BACKENDS", "GPU_BACKENDS", "ORT_BACKENDS", "BackendError", "check_backend",
           "gpu_facts", "onnxruntime_module", "ort_providers", "require_backend",
           "require_cuda"]

BACKENDS = ("torch", "onnxruntime", "cuda", "onnxruntime-cuda", "onnxruntime-tensorrt")
#: Backends that run on a GPU (their fingerprint names it; their clock is never ``cpu``).
GPU_BACKENDS = ("cuda", "onnxruntime-cuda", "onnxruntime-tensorrt")
#: onnxruntime backends and the execution provider each runs on.
ORT_BACKENDS = {"onnxruntime": "CPUExecutionProvider",
                "onnxruntime-cuda": "CUDAExecutionProvider",
                "onnxruntime-tensorrt": "TensorrtExecutionProvider"}


class BackendError(RuntimeError):
    """A latency backend that is not installed, or a model it cannot run."""


def check_backend(backend: str) -> None:
    """A known backend name (availability is :func:`require_backend`'s)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}; choose one of {list(BACKENDS)}")


def onnxruntime_module() -> Any:
    try:
        import onnxruntime  # noqa: PLC0415 - heavy optional import, only for this backend
    except ImportError as err:
        raise BackendError("the onnxruntime backend needs the onnx and onnxruntime packages. "
                           "Fix: pip install onnx onnxruntime, or use --backend torch.") from err
    return onnxruntime


def require_cuda(gpu: int = 0) -> None:
    """One :class:`BackendError` naming the fix unless torch can run on CUDA GPU ``gpu``."""
    import torch  # noqa: PLC0415 - torch only when a latency is taken: --help stays fast

    fix = ("Fix: use --backend torch or onnxruntime for a CPU latency, or run on the machine "
           "with the GPU (with a CUDA build of torch)")
    if torch.version.cuda is None:
        raise BackendError(f"the cuda latency backend needs a CUDA GPU, but this torch "
                           f"({torch.__version__}) was built without CUDA. {fix}.")
    if not torch.cuda.is_available():
        raise BackendError("the cuda latency backend needs a CUDA GPU, but torch sees none "
                           f"here (driver, or CUDA_VISIBLE_DEVICES). {fix}.")
    count = torch.cuda.device_count()
    if not 0 <= gpu < count:
        raise BackendError(f"the cuda latency backend was asked for GPU {gpu}, but torch sees "
                           f"{count} (0 to {count - 1}). Fix: use one of those.")


def ort_providers(backend: str, gpu: int = 0) -> list[Any]:
    """The ``providers`` argument of an onnxruntime session for ``backend``: its provider (on
    GPU ``gpu``), then the CPU provider for nodes it cannot run. One :class:`BackendError`
    naming the fix when this onnxruntime lacks the provider."""
    ort = onnxruntime_module()
    provider = ORT_BACKENDS[backend]
    if provider == "CPUExecutionProvider":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if provider not in available:
        extra = (" and NVIDIA's TensorRT libraries" if backend == "onnxruntime-tensorrt"
                 else "")
        raise BackendError(
            f"the {backend} latency backend needs onnxruntime's {provider}, which this "
            f"onnxruntime ({ort.__version__}; providers: {', '.join(available) or 'none'}) "
            f"lacks. Fix: pip install onnxruntime-gpu{extra} (in place of onnxruntime) on a "
            "machine with a CUDA GPU, or use --backend onnxruntime (CPU), torch or cuda.")
    chain: list[Any] = [(provider, {"device_id": int(gpu)})]
    if backend == "onnxruntime-tensorrt" and "CUDAExecutionProvider" in available:
        chain.append(("CUDAExecutionProvider", {"device_id": int(gpu)}))
    return [*chain, "CPUExecutionProvider"]


def require_backend(backend: str, gpu: int = 0) -> None:
    """One clear error unless ``backend`` can run here: unknown names are a ``ValueError``,
    missing runtimes a :class:`BackendError` naming the fix."""
    check_backend(backend)
    if backend == "cuda":
        require_cuda(gpu)
    elif backend in ORT_BACKENDS:
        ort_providers(backend, gpu)


def gpu_facts(backend: str, gpu: int) -> dict[str, Any]:
    """What a GPU latency refers to besides the host: the GPU's name and index, its compute
    capability and memory, the driver, and the CUDA and cuDNN versions torch was built with
    (``None`` for what cannot be read here). Empty for CPU backends."""
    if backend not in GPU_BACKENDS:
        return {}
    import torch  # noqa: PLC0415 - see require_cuda

    facts: dict[str, Any] = {"gpu": None, "gpu_index": int(gpu), "gpu_capability": None,
                             "gpu_memory_gb": None, "driver": None,
                             "cuda": torch.version.cuda, "cudnn": None}
    smi = _nvidia_smi(gpu)
    if torch.cuda.is_available() and gpu < torch.cuda.device_count():
        props = torch.cuda.get_device_properties(gpu)
        facts["gpu"] = torch.cuda.get_device_name(gpu)
        facts["gpu_capability"] = f"{props.major}.{props.minor}"
        facts["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        facts["cudnn"] = str(cudnn) if cudnn else None
    elif smi.get("name"):  # e.g. onnxruntime-gpu beside a CPU build of torch
        facts["gpu"] = smi["name"]
    facts["driver"] = smi.get("driver_version")
    return facts


def _nvidia_smi(gpu: int) -> dict[str, str]:
    """``name`` and ``driver_version`` of GPU ``gpu`` from nvidia-smi (the driver is the same
    for every GPU of a machine; nvidia-smi ignores CUDA_VISIBLE_DEVICES, so the name is only a
    fallback); empty when nvidia-smi is absent or fails: the driver is informational, never
    worth an error."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    rows = [[p.strip() for p in line.split(",")] for line in out.strip().splitlines()]
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        return {}
    out = {"driver_version": rows[0][1]}
    return {**out, "name": rows[gpu][0]} if 0 <= gpu < len(rows) else out
