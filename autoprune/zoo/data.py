"""The embedded dataset: scikit-learn's handwritten digits, split for search and report.

The digits set (1,797 grey 8x8 images, 10 classes) ships inside scikit-learn, so every
example, test and benchmark runs offline.  The split is fixed and stratified:

* ``test``  — 20 % of all images, touched only by final reports;
* ``val``   — 15 % of the rest, carved out of the training data: the search scores
  candidates here, so the reported test accuracy is not selected on (DESIGN.md, step 4);
* ``train`` — what remains, used for baseline training and fine-tuning.

Images are scaled to [0, 1], optionally upsampled (bilinear) to the resolution the CIFAR-style
zoo was designed for, and normalised with the training split's mean and std only, so no
statistic leaks from the held-out splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DataSplits", "SPLITS", "available_datasets", "load_data", "load_digits_splits"]

SPLITS: tuple[str, ...] = ("train", "val", "test")

_TEST_FRACTION = 0.2
_VAL_FRACTION = 0.15  # of what is left after the test split
_DIGITS_MAX_PIXEL = 16.0  # sklearn's digits are 4-bit intensities 0..16
_DIGITS_NATIVE_SIZE = 8


# eq=False: the fields are tensors, whose == is elementwise and not a truth value.
@dataclass(frozen=True, kw_only=True, eq=False)
class DataSplits:
    """Normalised image tensors ``(N, C, H, W)`` float32 and int64 labels for each split."""

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

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of ``split`` (one of ``train``, ``val``, ``test``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, f"{split}_x"), getattr(self, f"{split}_y")

    def loader(self, split: str, *, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
        """A single-process loader over one split; ``seed`` fixes the shuffling order."""
        images, labels = self.tensors(split)
        # A private generator keeps the order reproducible without touching global RNG state.
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            TensorDataset(images, labels),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
        )

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        """Zeros shaped like one input batch, for tracing and cost counting."""
        return torch.zeros(batch, self.in_channels, self.image_size, self.image_size)


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


def load_data(name: str, *, image_size: int = 32, seed: int = 0) -> DataSplits:
    """Load an embedded dataset by name."""
    key = name.strip().lower()
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available datasets: {', '.join(available_datasets())}")
    return _LOADERS[key](image_size=image_size, seed=seed)
