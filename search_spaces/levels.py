"""The level store: each weight unit's pruned weights at each level, computed once, kept on disk.

A weight-sparse trial used to copy the whole model and rank every pruned layer's weights again
(a sort per layer for magnitude and Wanda, an OBS solve per layer for SparseGPT). The choices a
layer can take are few (the space's grid of levels or N:M patterns), so each ``(unit, kept
count)`` is pruned once and written to a safetensors file: for magnitude and Wanda the kept
mask, bit-packed (the weights are the dense ones times the mask); for SparseGPT, which
updates the kept weights, the pruned weight itself. A later trial that asks for the same
level reads the file. This is EvoPress's database of pre-pruned layer variants (Sieberling et
al., "EvoPress: Accurate Dynamic Model Compression via Evolutionary Search", ICML 2025), the
weight-sparsity counterpart of a once-for-all supernet.

Entries are named by a fingerprint of what decides them (criterion, unit, kept count, pattern,
the layer's shape and dtype, a sample of its weights and of the criterion's statistics), so a
folder shared by a resumed run, ``pick`` or the Ray workers of one machine is read, never
rebuilt, and a folder holding another model's levels is never misread. Files are written to a
temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["LevelStore", "fingerprint", "pack_mask", "unpack_mask"]

#: Elements of a tensor read for its fingerprint (evenly spaced).
_SAMPLE = 4096


def fingerprint(*parts: object, tensors: Iterable[torch.Tensor | None] = ()) -> str:
    """A name for what ``parts`` (plain values) and ``tensors`` (shape, dtype and an even
    sample of their values) decide."""
    h = hashlib.sha1(repr(parts).encode())
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLE)
        sample = flat[::step].to("cpu", torch.float64).numpy()
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        h.update(np.ascontiguousarray(sample).tobytes())
    return h.hexdigest()[:24]


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as bits (uint8, 8 weights a byte)."""
    return torch.from_numpy(np.packbits(mask.detach().cpu().reshape(-1).numpy()))


def unpack_mask(bits: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The bool mask of ``shape`` that :func:`pack_mask` packed into ``bits``."""
    n = int(np.prod(shape)) if shape else 1
    # unpackbits writes 0 and 1 bytes: a bool array as it is (no second pass to convert)
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=n).view(bool)).reshape(shape)


class LevelStore:
    """Pruned layers on disk, one safetensors file per entry, in ``folder`` (default: a
    temporary folder removed when the store that made it is collected)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self._owned = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="autoprune-levels-")) if folder is None \
            else Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._owned:
            weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        self.reads = self.writes = 0

    def __getstate__(self) -> dict:  # a Ray worker reads and adds to the same folder
        return {"folder": str(self.folder)}

    def __setstate__(self, state: dict) -> None:
        self._owned = False
        self.folder = Path(state["folder"])
        self.folder.mkdir(parents=True, exist_ok=True)
        self.reads = self.writes = 0

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self._path(key).exists()

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry ``key``, or ``None`` when it was never written."""
        path = self._path(key)
        if not path.exists():
            return None
        self.reads += 1
        return load_file(str(path))

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write the entry ``key`` (atomically: a reader sees all of it or nothing)."""
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
        self.writes += 1

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.safetensors"))
