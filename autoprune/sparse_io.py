"""The compressed file of a weight-sparse model: what ``size=`` budgets count, written.

``save_sparse(model, path, storage_format=...)`` bakes the model's masks in (every tensor
parametrized through ``torch.nn.utils.parametrize``, e.g. by a mask module with a ``mask``
buffer, is stored as the value the model computes, the original times the mask) and writes
its state dict with every sparse weight in the storage format:

- ``bitmap``: a mask of one bit per element (``np.packbits``, the weight's bits rounded up to
  whole bytes) and the non-zero values, fp32, in row-major order;
- ``csr``: the weight as a ``[rows, cols]`` matrix (rows: its first dimension, the output
  channels of a conv or linear weight): the non-zero values, fp32, then the column index of
  each (``ceil(log2 cols)`` bits) and the ``rows + 1`` row pointers (``ceil(log2(nonzero +
  1))`` bits), bit-packed, rounded up to whole bytes per weight;
- ``dense``: nothing sparse, every tensor as it is.

A weight is *sparse* when it is a float32/float16/bfloat16 parameter of two or more
dimensions whose sparse form is smaller than dense fp32 (``costs.sparse_weight_bytes``, the
same rule ``SizeCost`` counts with); everything else (biases, norms, dense weights, buffers) is
stored as it is. All of a model's arrays go in a few tensors: one float32 tensor of every
sparse weight's values, one uint8 tensor of every index bit, one flat tensor per dtype of
everything dense, plus a JSON header of names, shapes and offsets, saved with ``torch.save``
(it loads with ``weights_only=True``). So the file is ``SizeCost``'s bytes plus about 3 kB of
container and header.

``load_sparse(path)`` gives back the dense state dict (zeros in place) of the plain
architecture: ``model.load_state_dict(load_sparse(path))`` reproduces the outputs exactly.
"""

from __future__ import annotations

import json
import zlib
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.costs import STORAGE_FORMATS, sparse_weight_bytes

__all__ = ["container_bytes", "FILE_FORMAT", "buffer_bytes", "load_sparse", "plain_state_dict", "save_sparse"]

FILE_FORMAT = "autoprune-sparse"
_VERSION = 1
_PARAMETRIZED = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.(.+)$")
_SPARSE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # exact as float32 values


def _plain_name(key: str) -> tuple[str, str, str] | None:
    """``(module, tensor, rest)`` of a key under a parametrization, else ``None``."""
    match = _PARAMETRIZED.match(key)
    return None if match is None else (match.group(1) or "", match.group(2), match.group(3))


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with its parametrizations baked in, as the plain architecture
    names it: each parametrized tensor under its own name (``conv.weight``) holding the value
    the model computes (its mask applied), the parametrizations' own buffers (masks) left out,
    on the CPU. ``model`` is left untouched."""
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            parts = _plain_name(key)
            if parts is None:
                out[key] = value.detach().cpu()  # saved from the host, wherever it was scored
            elif parts[2] == "original":
                module, tensor, _ = parts
                out[f"{module}.{tensor}" if module else tensor] = \
                    getattr(modules[module], tensor).detach().cpu()
    return out


def _parameter_names(model: nn.Module) -> set[str]:
    names = set()
    for name, _ in model.named_parameters():
        parts = _plain_name(name)
        if parts is None:
            names.add(name)
        elif parts[2] == "original":
            names.add(f"{parts[0]}.{parts[1]}" if parts[0] else parts[1])
    return names


def buffer_bytes(model: nn.Module) -> int:
    """Bytes of the buffers ``save_sparse`` stores (BatchNorm running statistics and the like,
    masks not included): pass it as ``SizeCost(..., buffer_bytes=...)`` for an exact count."""
    params = _parameter_names(model)
    return sum(t.numel() * t.element_size() for k, t in plain_state_dict(model).items()
               if k not in params)


def _bits(values: np.ndarray, width: int) -> np.ndarray:
    """``values`` as ``width``-bit unsigned integers, most significant bit first, one uint8 per
    bit."""
    if width == 0 or values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values.astype(np.int64)[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)


def _ints(bits: np.ndarray, width: int, count: int) -> np.ndarray:
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    weights = 1 << np.arange(width - 1, -1, -1, dtype=np.int64)
    return bits[:count * width].reshape(count, width).astype(np.int64) @ weights


def _encode(matrix: np.ndarray, storage_format: str) -> tuple[np.ndarray, np.ndarray]:
    """The values (float32) and index bytes (uint8) of a ``[rows, cols]`` weight."""
    mask = matrix != 0
    values = matrix[mask].astype(np.float32)
    if storage_format == "bitmap":
        return values, np.packbits(mask.reshape(-1))
    rows, cols = matrix.shape
    columns = np.nonzero(mask)[1]
    pointers = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
    bits = np.concatenate([_bits(columns, (cols - 1).bit_length()),
                           _bits(pointers, int(values.size).bit_length())])
    return values, np.packbits(bits)


def _decode(entry: Mapping[str, Any], values: np.ndarray, index: np.ndarray) -> np.ndarray:
    rows, cols = entry["rows"], entry["cols"]
    nonzero = values.size
    if entry["kind"] == "bitmap":
        mask = np.unpackbits(index)[:rows * cols].astype(bool)
        dense = np.zeros(rows * cols, dtype=np.float32)
        dense[mask] = values
        return dense
    bits = np.unpackbits(index)
    col_width, ptr_width = (cols - 1).bit_length(), nonzero.bit_length()
    columns = _ints(bits, col_width, nonzero)
    pointers = _ints(bits[nonzero * col_width:], ptr_width, rows + 1)
    row_of = np.repeat(np.arange(rows), np.diff(pointers))
    dense = np.zeros((rows, cols), dtype=np.float32)
    dense[row_of, columns] = values
    return dense.reshape(-1)


def save_sparse(model: nn.Module, path: str | os.PathLike[str], *,
                storage_format: str = "bitmap") -> int:
    """Write ``model`` (masks baked in) to ``path`` with its sparse weights in
    ``storage_format`` (``bitmap``, ``csr`` or ``dense``; see the module's docstring); the
    bytes written. ``model`` is left untouched."""
    if storage_format not in STORAGE_FORMATS:
        raise ValueError(f"unknown storage format {storage_format!r}; known: "
                         f"{', '.join(STORAGE_FORMATS)}")
    params = _parameter_names(model)
    header: list[dict[str, Any]] = []
    values: list[np.ndarray] = []
    index: list[np.ndarray] = []
    dense: dict[str, list[torch.Tensor]] = {}
    at = {"values": 0, "index": 0}
    for key, tensor in plain_state_dict(model).items():
        tensor = tensor.cpu()
        entry: dict[str, Any] = {"name": key, "shape": list(tensor.shape),
                                 "dtype": str(tensor.dtype).removeprefix("torch.")}
        if (storage_format != "dense" and key in params and tensor.dim() >= 2
                and tensor.dtype in _SPARSE_DTYPES):
            rows = tensor.shape[0]
            cols = tensor.numel() // rows if rows else 0
            nonzero = int(torch.count_nonzero(tensor))
            if rows and sparse_weight_bytes(tensor.numel(), nonzero, rows,
                                            storage_format) < 4 * tensor.numel():
                v, i = _encode(tensor.float().numpy().reshape(rows, cols), storage_format)
                entry.update(kind=storage_format, rows=rows, cols=cols,
                             values=at["values"], nonzero=int(v.size),
                             index=at["index"], index_bytes=int(i.size))
                values.append(v)
                index.append(i)
                at["values"] += int(v.size)
                at["index"] += int(i.size)
                header.append(entry)
                continue
        flat = dense.setdefault(entry["dtype"], [])
        entry.update(kind="dense", offset=sum(t.numel() for t in flat))
        flat.append(tensor.reshape(-1))
        header.append(entry)
    blob = {
        "format": FILE_FORMAT, "version": _VERSION, "storage_format": storage_format,
        # the names, shapes and offsets, deflated: as JSON they outweighed a small model's
        # index bits (14 kB of 91 kB for a half-width ResNet-20)
        "header": torch.frombuffer(bytearray(zlib.compress(
            json.dumps(header, separators=(",", ":")).encode(), 9)), dtype=torch.uint8),
        "values": torch.from_numpy(np.concatenate(values) if values
                                   else np.zeros(0, dtype=np.float32)),
        "index": torch.from_numpy(np.concatenate(index) if index
                                  else np.zeros(0, dtype=np.uint8)),
        "dense": {dtype: torch.cat(parts) for dtype, parts in dense.items()},
    }
    torch.save(blob, path)
    return os.path.getsize(path)


def container_bytes() -> int:
    """The bytes a ``save_sparse`` file adds to its payload whatever the model holds (torch's
    zip container, its aligned records and the deflated header of a model with nothing in
    it): about 4 kB, measured by saving an empty model."""
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        return save_sparse(nn.Module(), os.path.join(tmp, "empty.pt"))


def load_sparse(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The dense state dict a ``save_sparse`` file holds (zeros in place), named as the plain
    architecture names it, read with ``torch.load(weights_only=True)``."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FILE_FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not an {FILE_FORMAT} file (save_sparse "
                         "writes them)")
    if blob.get("version") != _VERSION:
        raise ValueError(f"{os.fspath(path)!r} is {FILE_FORMAT} version {blob.get('version')}; "
                         f"this autoprune reads version {_VERSION}")
    values = blob["values"].numpy()
    index = blob["index"].numpy()
    out: dict[str, torch.Tensor] = {}
    for entry in json.loads(zlib.decompress(blob["header"].numpy().tobytes())):
        dtype = getattr(torch, entry["dtype"])
        shape = tuple(entry["shape"])
        if entry["kind"] == "dense":
            flat = blob["dense"][entry["dtype"]]
            count = int(np.prod(shape, dtype=np.int64))
            out[entry["name"]] = flat[entry["offset"]:entry["offset"] + count].reshape(shape).clone()
            continue
        v = values[entry["values"]:entry["values"] + entry["nonzero"]]
        i = index[entry["index"]:entry["index"] + entry["index_bytes"]]
        out[entry["name"]] = torch.from_numpy(_decode(entry, v, i)).reshape(shape).to(dtype)
    return out
