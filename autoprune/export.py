"""Export a chosen network for deployment: ``autoprune export RUN -o model.onnx``.

A run's ``best.json`` (or a ``pick-*.json``, or an ``ofa extract`` result) is rebuilt with its
weights (:func:`autoprune.run_folder.rebuild_choice`) and written as

- ``onnx``: an ONNX graph (torch's TorchScript-based exporter, opset 17); onnxruntime runs it
  on random inputs of the recorded shape and its outputs must match torch's within
  ``atol + rtol * |torch output|``;
- ``torchscript``: ``torch.jit.trace``, reloaded and checked the same way;
- ``exported-program``: ``torch.export`` (``.pt2``), which loads with ``torch.export.load``
  without autoprune or the model's code; checked the same way;
- ``state_dict``: the weights only (rebuild with ``autoprune.load_pruned``).

The result states the file's size and the largest difference found.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.latency.device import Device
from autoprune.latency.measure import export_onnx
from autoprune.placement import on_cpu, to_device
from autoprune.run_folder import read_choice, rebuild_choice

__all__ = ["EXPORT_FORMATS", "ExportError", "Exported", "export_choice", "export_program",
           "format_of", "save_program"]

EXPORT_FORMATS = ("onnx", "torchscript", "exported-program", "state_dict")
_SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "exported-program": ".pt2", "state_dict": ".pt"}


class ExportError(ValueError):
    """A network that cannot be written in the asked format, or whose export disagrees."""


@dataclass(frozen=True, kw_only=True)
class Exported:
    """What was written: the file, its format and size, and how closely the exported
    network reproduced torch's outputs (None for a state dict, which runs nothing)."""

    path: Path
    format: str
    bytes: int
    max_abs_diff: float | None
    tolerance: str

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "bytes": self.bytes,
                "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance}


def export_choice(source: str | Path, output: str | Path, *, fmt: str | None = None,
                  atol: float = 1e-4, rtol: float = 1e-3) -> Exported:
    """Write the network of ``source`` (a run folder: its ``best.json``; or a chosen-network
    JSON) to ``output`` in ``fmt`` (default: from the suffix of ``output``, else onnx)."""
    output = Path(output)
    fmt = fmt or format_of(output) or "onnx"
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of "
                          f"{', '.join(EXPORT_FORMATS)}")
    _check_writable(output)
    choice, path = read_choice(source)
    if not (path.parent / choice.get("weights", "pruned.pt")).exists():
        raise FileNotFoundError(f"{path.parent / choice.get('weights', 'pruned.pt')} is missing: "
                                f"{path} has no weights to export")
    model, _, example = rebuild_choice(choice, path.parent)
    x = Device().inputs(example)  # random inputs like the recorded example (ids stay in range)
    output.parent.mkdir(parents=True, exist_ok=True)
    tolerance = f"|exported - torch| <= {atol:g} + {rtol:g} * |torch|"
    if fmt == "state_dict":
        torch.save(model.state_dict(), output)
        return Exported(path=output, format=fmt, bytes=output.stat().st_size, max_abs_diff=None,
                        tolerance="weights only")
    with torch.no_grad():
        expected = _tensor(model(*x))
    if fmt == "onnx":
        output.write_bytes(export_onnx(model, x))
        got = _run_onnx(output, x)
    elif fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                torch.jit.trace(model, x).save(str(output))
            except Exception as err:  # noqa: BLE001 - one message for any tracer failure
                raise ExportError(f"torch.jit.trace failed on {type(model).__name__} "
                                  f"({type(err).__name__}: {err}); export to onnx instead") from err
        with torch.no_grad():
            got = _tensor(torch.jit.load(str(output))(*x)).numpy()
    else:
        export_program(model, x, output)
        with torch.no_grad():
            got = _tensor(torch.export.load(str(output)).module()(*x)).numpy()
    want = expected.numpy()
    if got.shape != want.shape:
        raise ExportError(f"the exported network's output has shape {got.shape}, torch's "
                          f"{want.shape}")
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    if not np.all(np.abs(got - want) <= atol + rtol * np.abs(want)):
        raise ExportError(f"the {fmt} export does not reproduce torch's output (largest "
                          f"difference {diff:.3g}, allowed {tolerance}); {output} is kept for "
                          "inspection")
    return Exported(path=output, format=fmt, bytes=output.stat().st_size, max_abs_diff=diff,
                    tolerance=tolerance)


def format_of(output: str | Path) -> str | None:
    """The export format the suffix of ``output`` names (``.onnx``, ``.ts``, ``.pt2``,
    ``.pt``), or None."""
    return next((f for f, s in _SUFFIX.items() if Path(output).suffix == s), None)


def _check_writable(output: Path) -> None:
    """``output`` can be written as a file (before the network is rebuilt)."""
    if output.is_dir():
        raise ExportError(f"{output} is a folder; name the file to write in it, e.g. "
                          f"{output / 'model.onnx'}")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"cannot write {output}: {parent} is a file, not a folder")
            break


def export_program(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    """``model`` as a ``torch.export`` program at ``path`` (loads with ``torch.export.load``,
    without the model's code), for any batch size where the model allows it, else for the
    batch of ``inputs``."""
    try:
        try:  # traced at batch 2: a batch of 1 would be specialised to 1
            program = torch.export.export(
                model.eval(), tuple(torch.cat([x, x]) for x in inputs),
                dynamic_shapes=tuple({0: torch.export.Dim.AUTO} for _ in inputs))
        except Exception:  # noqa: BLE001 - a model whose batch cannot vary: the example's
            program = torch.export.export(model.eval(), tuple(inputs))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    except Exception as err:  # noqa: BLE001 - torch.export's errors are many and long
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ExportError(f"torch.export failed on {type(model).__name__} "
                          f"({type(err).__name__}: {first}); export to onnx instead") from err
    path.write_bytes(buffer.getvalue())
    return path


def _tensor(out: Any) -> torch.Tensor:
    """The first tensor of a model's output (a tensor, tuple, dict or ``ModelOutput``)."""
    if isinstance(out, torch.Tensor):
        return out.detach().float()
    values = out.values() if isinstance(out, dict) else out
    for v in values:
        if isinstance(v, torch.Tensor):
            return v.detach().float()
    raise ExportError("the network returns no tensor to export")


def _run_onnx(path: Path, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    from autoprune.latency.device import onnxruntime_module  # noqa: PLC0415 - optional backend

    ort = onnxruntime_module()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return np.asarray(session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})[0],
                      dtype=np.float32)


def save_program(model: nn.Module, example: torch.Tensor, path: Path,
                 console: Any) -> str | None:
    """A chosen network as a ``torch.export`` program beside its weights (loads without
    autoprune or the model's code); a model torch.export cannot take gets a note on
    ``console`` (and loses a stale program), and the caller goes on."""
    try:
        export_program(on_cpu(model), Device().inputs(to_device(example, torch.device("cpu"))),
                       path)
    except ExportError as err:
        path.unlink(missing_ok=True)
        console.print(f"[yellow]note:[/] no {path.name}: {err}", highlight=False)
        return None
    return str(path)
