"""The embedded dataset: scikit-learn's handwritten digits, split for search and report.

The digits set (1,797 grey 8x8 images, 10 classes) ships inside scikit-learn, so every
example, test and benchmark runs offline.  The split is fixed and stratified:

* ``test``  — 20 % of all images, touched only by final reports;
* ``val``   — 15 % of the rest, carved out of the training data: the search scores
  candidates here, so the reported test accuracy is not selected on (DESIGN.md, step 4);
* ``train`` — what remains, used for baseline training and fine-tuning.

A user's own data comes as an ``.npz`` (:func:`load_npz_splits`) or an image folder
(:func:`load_image_folder`, read lazily by :mod:`autoprune.zoo.images`).

Images are scaled to [0, 1], optionally upsampled (bilinear) to the resolution the CIFAR-style
zoo was designed for, and normalised with the training split's mean and std only, so no
statistic leaks from the held-out splits.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from .images import LazyImages, is_image_folder, read_image_folder

__all__ = ["DataSplits", "SPLITS", "available_datasets", "is_data_path", "load_data",
           "load_digits_splits", "load_image_folder", "load_npz_splits"]

SPLITS: tuple[str, ...] = ("train", "val", "test")

_TEST_FRACTION = 0.2
_VAL_FRACTION = 0.15  # of what is left after the test split
_DIGITS_MAX_PIXEL = 16.0  # sklearn's digits are 4-bit intensities 0..16
_DIGITS_NATIVE_SIZE = 8


# eq=False: the fields are tensors, whose == is elementwise and not a truth value.
@dataclass(frozen=True, kw_only=True, eq=False)
class DataSplits:
    """Normalised images ``(N, C, H, W)`` float32 and int64 labels for each split: tensors, or
    for an image folder :class:`~autoprune.zoo.images.LazyImages`, which index like tensors and
    decode a batch at a time."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    # What results record about the data beyond its name (a file's path and hash, how it
    # was scaled and normalised).
    about: dict[str, Any] = field(default_factory=dict)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of ``split`` (one of ``train``, ``val``, ``test``); the images
        of an image folder are :class:`~autoprune.zoo.images.LazyImages`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, f"{split}_x"), getattr(self, f"{split}_y")

    def loader(self, split: str, *, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
        """A single-process loader over one split; ``seed`` fixes the shuffling order."""
        images, labels = self.tensors(split)
        # A private generator keeps the order reproducible without touching global RNG state.
        generator = torch.Generator().manual_seed(seed)
        if isinstance(images, LazyImages):  # a batch decoded at a time, in the same order
            return _LazyLoader(images, labels, batch_size, shuffle, generator)  # type: ignore[return-value]
        return DataLoader(
            TensorDataset(images, labels),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
        )

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        """Zeros shaped like one input batch, for tracing and cost counting."""
        return torch.zeros(batch, self.in_channels, self.image_size, self.image_size)


class _LazyLoader:
    """Batches of an image folder's split, in the order a ``DataLoader`` would give them."""

    def __init__(self, images: LazyImages, labels: torch.Tensor, batch_size: int,
                 shuffle: bool, generator: torch.Generator) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.shuffle, self.generator = shuffle, generator

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self):  # noqa: ANN204 - a generator of (images, labels)
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.images[index], self.labels[index]


def _stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (rest, held_out) with ``fraction`` of every class held out.

    Written out rather than taken from sklearn's ``train_test_split`` so the per-class
    rounding (and therefore every split size) is obvious and stable across versions.
    """
    held: list[np.ndarray] = []
    rest: list[np.ndarray] = []
    for label in np.unique(labels[indices]):
        members = indices[labels[indices] == label]
        members = members[rng.permutation(len(members))]
        n_held = int(round(fraction * len(members)))
        held.append(members[:n_held])
        rest.append(members[n_held:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


def _to_images(pixels: np.ndarray, image_size: int) -> torch.Tensor:
    images = torch.from_numpy(pixels.astype(np.float32) / _DIGITS_MAX_PIXEL)
    images = images.reshape(-1, 1, _DIGITS_NATIVE_SIZE, _DIGITS_NATIVE_SIZE)
    if image_size != _DIGITS_NATIVE_SIZE:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.contiguous()


def load_digits_splits(*, image_size: int = 32, seed: int = 0) -> DataSplits:
    """Load sklearn's digits as a fixed, stratified train/val/test split (see module doc)."""
    from sklearn.datasets import load_digits  # sklearn import costs ~1 s; only pay it here

    if image_size < _DIGITS_NATIVE_SIZE:
        raise ValueError(f"image_size must be at least {_DIGITS_NATIVE_SIZE} (the native size), got {image_size}")
    digits = load_digits()
    labels = np.asarray(digits.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    trainval, test = _stratified_split(labels, _TEST_FRACTION, rng, np.arange(len(labels)))
    train, val = _stratified_split(labels, _VAL_FRACTION, rng, trainval)

    images = _to_images(np.asarray(digits.data), image_size)
    mean = images[train].mean()
    std = images[train].std()
    images = (images - mean) / std
    label_tensor = torch.from_numpy(labels)
    return DataSplits(
        name="digits",
        train_x=images[train],
        train_y=label_tensor[train],
        val_x=images[val],
        val_y=label_tensor[val],
        test_x=images[test],
        test_y=label_tensor[test],
        num_classes=int(labels.max()) + 1,
        in_channels=1,
        image_size=image_size,
    )


_LOADERS = {"digits": load_digits_splits}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_data`."""
    return list(_LOADERS)


def _npz_images(x: np.ndarray, path: Path) -> tuple[torch.Tensor, str]:
    """``x`` as float NCHW in [0, 1] (uint8 scaled by 1/255, floats kept), and its layout."""
    if x.ndim == 3:
        x, layout = x[:, None], "N x H x W (one channel)"
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x, layout = np.moveaxis(x, -1, 1), "N x H x W x C (channels last)"
    elif x.ndim == 4:
        layout = "N x C x H x W"
    else:
        raise ValueError(f"{path}: x has shape {x.shape}; it must be images, N x C x H x W, "
                         "N x H x W x C or N x H x W")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"{path}: x holds {x.dtype}, not numbers")
    images = torch.from_numpy(np.ascontiguousarray(x)).float()
    if x.dtype == np.uint8:
        images = images / 255.0
    return images, layout


def load_npz_splits(path: str | Path, *, image_size: int = 32, seed: int = 0) -> DataSplits:
    """Images and labels from an ``.npz`` with ``x`` and ``y`` (optionally ``x_test`` and
    ``y_test``): resized to ``image_size`` (bilinear), the test split the file's own or 20% of
    ``x``, the validation split 15% of the rest (both stratified and seeded), normalised per
    channel with the training split's statistics."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"--data {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as err:  # noqa: BLE001 - not an npz, or pickled objects
        raise ValueError(f"--data {path} is not a readable .npz of arrays ({err})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing or (("x_test" in arrays) != ("y_test" in arrays)):
        raise ValueError(f"--data {path} has the arrays {sorted(arrays)}; it needs x (images) "
                         "and y (integer labels), and optionally both x_test and y_test")
    x, layout = _npz_images(arrays["x"], path)
    labels = np.asarray(arrays["y"]).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(x) or labels.min() < 0:
        raise ValueError(f"--data {path}: y must hold one non-negative integer label per image "
                         f"(x has {len(x)} images, y is {labels.dtype} of {len(labels)})")
    classes = int(labels.max()) + 1
    if len(np.unique(labels)) < 2:
        raise ValueError(f"--data {path}: y holds a single class; a classifier needs two or more")
    rng = np.random.default_rng(seed)
    if "x_test" in arrays:
        test_x, _ = _npz_images(arrays["x_test"], path)
        test_y = np.asarray(arrays["y_test"]).reshape(-1).astype(np.int64)
        if test_x.shape[1:] != x.shape[1:] or len(test_y) != len(test_x):
            raise ValueError(f"--data {path}: x_test {tuple(test_x.shape)} / y_test "
                             f"{len(test_y)} do not match x {tuple(x.shape)}")
        trainval = np.arange(len(x))
    else:
        trainval, test = _stratified_split(labels, _TEST_FRACTION, rng, np.arange(len(labels)))
        test_x, test_y = x[test], labels[test]
    train, val = _stratified_split(labels, _VAL_FRACTION, rng, trainval)
    if x.shape[-2:] != (image_size, image_size):
        def resize(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=(image_size, image_size), mode="bilinear",
                                 align_corners=False)
        x, test_x = resize(x), resize(test_x)
    mean = x[train].mean(dim=(0, 2, 3), keepdim=True)
    std = x[train].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    x, test_x = (x - mean) / std, (test_x - mean) / std
    y = torch.from_numpy(labels.astype(np.int64))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return DataSplits(
        name=f"npz-{path.stem}-{digest[:8]}", train_x=x[train], train_y=y[train], val_x=x[val],
        val_y=y[val], test_x=test_x.contiguous(), test_y=torch.as_tensor(test_y),
        num_classes=classes, in_channels=int(x.shape[1]), image_size=image_size,
        about={"path": str(path.resolve()), "sha256": digest, "layout": layout,
               "native_size": list(arrays["x"].shape[1:]), "resized_to": image_size,
               "scaled": "uint8 / 255" if arrays["x"].dtype == np.uint8 else "as stored",
               "normalised": "per channel, by the training split's mean and std",
               "split": {"train": len(train), "val": len(val), "test": int(len(test_y)),
                         "test_from": "x_test" if "x_test" in arrays else "x (20%, seeded)"}})


def load_image_folder(folder: str | Path, *, image_size: int = 32, seed: int = 0) -> DataSplits:
    """An image folder (one sub-folder per class; see :mod:`autoprune.zoo.images`), read
    lazily; its test split is the folder's ``test/`` or 20% of it, seeded."""
    return DataSplits(**read_image_folder(folder, image_size=image_size, seed=seed,
                                          stratify=_stratified_split))


def is_data_path(text: str) -> bool:
    """Whether ``--data`` names a file or folder of the user's (not an embedded source)."""
    text = text.strip()
    return text.endswith(".npz") or is_image_folder(text) or "/" in text or os.sep in text


def load_data(name: str, *, image_size: int = 32, seed: int = 0) -> DataSplits:
    """Load an embedded dataset by name, an ``.npz`` file or an image folder by its path."""
    if is_image_folder(name.strip()):
        return load_image_folder(name.strip(), image_size=image_size, seed=seed)
    if name.strip().endswith(".npz"):
        return load_npz_splits(name.strip(), image_size=image_size, seed=seed)
    key = name.strip().lower()
    if is_data_path(name):
        raise ValueError(f"--data {name}: no such folder or .npz file. Fix: the path of an image "
                         "folder (one sub-folder per class) or of an .npz with x and y")
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available datasets: {', '.join(available_datasets())}")
    return _LOADERS[key](image_size=image_size, seed=seed)
