"""An image folder as data: one sub-folder per class, PNG or JPEG files, read lazily.

Layout (``--data path/to/folder``)::

    folder/cat/001.png  folder/dog/002.jpg ...            a seeded, stratified split
    folder/train/cat/... folder/val/... folder/test/...   the folder's own splits

With ``train/`` present, a missing ``val/`` is carved out of it (15%, stratified, seeded) and a
missing ``test/`` too (20%); without it, the class folders are split the way the embedded
digits are (``autoprune.zoo.data``). Class names are the sorted sub-folder names.

Only the file list and the labels live in memory: pixels are decoded a batch at a time
(:class:`LazyImages`), so a folder larger than memory works. Decoded images are kept up to
``$AUTOPRUNE_IMAGE_CACHE_MB`` (default 512) per split, so a small folder is decoded once.
Every image is converted to grey (all files grey) or RGB, resized to ``image_size`` (bilinear)
and normalised per channel with the mean and std of up to 2,048 training images (seeded).

Before any work the folder is checked: one class, a file Pillow cannot read, or images of
different sizes (or channel counts) are each one error naming the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["IMAGE_SUFFIXES", "LazyImages", "is_image_folder", "read_image_folder"]

#: The file suffixes read as images (case-insensitive); other files are ignored, and counted.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
_SPLIT_NAMES = ("train", "val", "test")
_STAT_IMAGES = 2048  # training images the normalisation statistics are taken from
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def is_image_folder(text: str) -> bool:
    """Whether ``--data`` names a folder (rather than an embedded source or a file)."""
    return Path(text).expanduser().is_dir()


class LazyImages:
    """``(N, C, H, W)`` float32 images over files, decoded when indexed: ``x[i]``, ``x[a:b]``
    and ``x[index_tensor]`` return tensors, as indexing a tensor would; ``len`` and ``shape``
    answer without decoding. Pickles without its cache (for Ray workers)."""

    dtype = torch.float32

    def __init__(self, files: Sequence[str], *, channels: int, size: int,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
                 cache_mb: float | None = None) -> None:
        self.files = list(files)
        self.channels, self.image_size = channels, size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        mb = float(os.environ.get("AUTOPRUNE_IMAGE_CACHE_MB", 512)) if cache_mb is None else cache_mb
        self._room = int(mb * 2**20) // max(1, 4 * channels * size * size)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), self.channels, self.image_size, self.image_size))

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self._one(int(index) % len(self.files))
        if isinstance(index, slice):
            rows = range(*index.indices(len(self.files)))
        else:
            rows = [int(i) for i in torch.as_tensor(index).reshape(-1).tolist()]
        if not len(rows):
            return torch.zeros(0, self.channels, self.image_size, self.image_size)
        return torch.stack([self._one(i) for i in rows])

    def _one(self, i: int) -> torch.Tensor:
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        image = (decode(self.files[i], self.channels, self.image_size) - self.mean) / self.std
        if len(self._cache) < self._room:
            self._cache[i] = image
        return image

    def raw(self, rows: Sequence[int]) -> torch.Tensor:
        """Decoded, resized images in [0, 1], before normalisation."""
        return torch.stack([decode(self.files[i], self.channels, self.image_size) for i in rows])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}


def decode(path: str, channels: int, size: int) -> torch.Tensor:
    """One file as a ``(C, size, size)`` float tensor in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except Exception as err:  # noqa: BLE001 - truncated or corrupt files surface here
        raise ValueError(f"cannot read the image {path} ({err}). Fix: remove or replace it") from None
    tensor = torch.from_numpy(pixels.copy())
    return tensor[None] if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def _class_files(folder: Path, where: str) -> tuple[dict[str, list[Path]], int]:
    """``{class: files}`` of a folder of class sub-folders, and how many files were ignored."""
    classes: dict[str, list[Path]] = {}
    ignored = 0
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = []
        for f in sorted(sub.rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                else:
                    ignored += 1
        if files:
            classes[sub.name] = files
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise ValueError(f"--data {where}: an image folder needs two or more class sub-folders "
                         f"holding {'/'.join(IMAGE_SUFFIXES)} files (found: {found}). Fix: one "
                         "sub-folder per class, e.g. data/cat/1.png, data/dog/2.png")
    return classes, ignored


def _check_headers(files: Sequence[Path], where: str) -> tuple[tuple[int, int], int]:
    """Every file's header is read (not its pixels): one size and one kind (grey or colour)
    for all, or one error naming the first file that differs."""
    from PIL import Image

    first: tuple[tuple[int, int], bool, Path] | None = None
    colour = False
    for f in files:
        try:
            with Image.open(f) as img:
                size, grey = img.size, img.mode in _GREY_MODES
        except Exception as err:  # noqa: BLE001 - Pillow's errors for non-images vary
            raise ValueError(f"--data {where}: cannot read {f} as an image ({err}). Fix: "
                             "remove or replace it") from None
        if first is None:
            first = (size, grey, f)
        elif size != first[0]:
            raise ValueError(f"--data {where}: images of different sizes: {first[2]} is "
                             f"{first[0][0]}x{first[0][1]} and {f} is {size[0]}x{size[1]}. Fix: "
                             "resize them to one size first")
        colour = colour or not grey
    assert first is not None
    return first[0], 3 if colour else 1


def _splits(root: Path, where: str, rng: np.random.Generator, stratify: Any
            ) -> tuple[list[str], dict[str, tuple[list[Path], np.ndarray]], int, dict[str, str]]:
    """Class names, ``{split: (files, labels)}``, files ignored, and where each split came from."""
    own = {s: root / s for s in _SPLIT_NAMES if (root / s).is_dir()}
    if own and "train" not in own:
        raise ValueError(f"--data {where} has {', '.join(own)}/ but no train/. Fix: add train/ "
                         "(one sub-folder per class), or put the class folders at the top")
    if not own:
        own = {"train": root}
    found = {s: _class_files(p, f"{where}/{s}" if p != root else where) for s, p in own.items()}
    names = sorted(found["train"][0])
    for s, (classes, _) in found.items():
        if extra := sorted(set(classes) - set(names)):
            raise ValueError(f"--data {where}/{s} has classes not in train/: {', '.join(extra)}")
    ignored = sum(n for _, n in found.values())
    listed = {}
    for s, (classes, _) in found.items():
        files = [f for c in names for f in classes.get(c, [])]
        labels = np.array([i for i, c in enumerate(names) for _ in classes.get(c, [])], np.int64)
        listed[s] = (files, labels)
    foldered = own["train"] != root
    origin = {s: f"{s}/" for s in listed} if foldered else {}
    files, labels = listed["train"]
    idx = np.arange(len(files))
    for split, fraction in (("test", 0.2), ("val", 0.15)):
        if split in listed:
            continue
        idx, held = stratify(labels, fraction, rng, idx)
        listed[split] = ([files[i] for i in held], labels[held])
        origin[split] = (f"{round(fraction * 100)}% of {'train/' if foldered else 'the folder'}"
                         f"{'' if split == 'test' else ' after the test split'}, seeded")
    listed["train"] = ([files[i] for i in idx], labels[idx])
    origin.setdefault("train", "the rest")
    return names, listed, ignored, origin


def read_image_folder(folder: str | Path, *, image_size: int, seed: int,
                      stratify: Callable[..., tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The fields of the folder's ``DataSplits`` (``autoprune.zoo.data`` builds it), its images
    :class:`LazyImages`; ``stratify(labels, fraction, rng, indices)`` splits like digits."""
    root = Path(folder).expanduser()
    where = str(folder)
    rng = np.random.default_rng(seed)
    names, listed, ignored, origin = _splits(root, where, rng, stratify)
    every = [f for files, _ in listed.values() for f in files]
    native, channels = _check_headers(every, where)
    digest = hashlib.sha256("\n".join(
        f"{f.relative_to(root)}:{f.stat().st_size}" for f in sorted(every)).encode()).hexdigest()
    train_files = [str(f) for f in listed["train"][0]]
    sample = LazyImages(train_files, channels=channels, size=image_size, cache_mb=0)
    rows = np.sort(np.random.default_rng(seed).permutation(len(train_files))[:_STAT_IMAGES])
    pixels = sample.raw(rows.tolist())
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()

    def split(s: str) -> tuple[LazyImages, torch.Tensor]:
        files, labels = listed[s]
        return (LazyImages([str(f) for f in files], channels=channels, size=image_size,
                           mean=mean, std=std), torch.from_numpy(labels))

    (tx, ty), (vx, vy), (sx, sy) = split("train"), split("val"), split("test")
    return dict(
        name=f"images-{root.resolve().name}-{digest[:8]}", train_x=tx, train_y=ty, val_x=vx,
        val_y=vy, test_x=sx, test_y=sy, num_classes=len(names), in_channels=channels,
        image_size=image_size,
        about={"path": str(root.resolve()), "files_sha256": digest, "classes": names,
               "native_size": [native[1], native[0]], "resized_to": image_size,
               "channels": "grey" if channels == 1 else "RGB", "scaled": "pixels / 255",
               "normalised": f"per channel, mean {[round(m, 4) for m in mean]} and std "
                             f"{[round(s, 4) for s in std]} of {len(rows)} training images",
               "read": "lazily, a batch at a time", "ignored_files": ignored,
               "split": {s: len(listed[s][0]) for s in _SPLIT_NAMES}, "split_from": origin})
