from __future__ import annotations

import dataclasses

import pytest
import torch

from autoprune.zoo.data import DataSplits, available_datasets, load_data, load_digits_splits


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_digits_splits(image_size=32, seed=0)


def test_split_sizes(digits: DataSplits) -> None:
    sizes = {split: len(digits.tensors(split)[0]) for split in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.2 * 1797, abs=10)
    assert sizes["val"] == pytest.approx(0.15 * (1797 - sizes["test"]), abs=10)
    for split in ("train", "val", "test"):
        images, labels = digits.tensors(split)
        assert len(images) == len(labels)
        assert images.shape[1:] == (1, 32, 32) and images.dtype == torch.float32
        assert labels.dtype == torch.int64


def test_metadata(digits: DataSplits) -> None:
    assert (digits.name, digits.num_classes, digits.in_channels, digits.image_size) == ("digits", 10, 1, 32)
    assert digits.example_inputs().shape == (1, 1, 32, 32)
    assert digits.example_inputs(4).shape == (4, 1, 32, 32)
    assert not digits.example_inputs().any()


def test_stratified(digits: DataSplits) -> None:
    total = torch.cat([digits.train_y, digits.val_y, digits.test_y])
    overall = torch.bincount(total, minlength=10).double() / len(total)
    for labels in (digits.train_y, digits.val_y, digits.test_y):
        share = torch.bincount(labels, minlength=10).double() / len(labels)
        assert torch.allclose(share, overall, atol=0.01)


def test_no_overlap_between_splits() -> None:
    # Compare native 8x8 pixels: the dataset has no exact duplicate images, so a shared
    # row would mean a shared sample.
    native = load_digits_splits(image_size=8)
    rows = {
        split: {tuple(x.flatten().tolist()) for x in native.tensors(split)[0]} for split in ("train", "val", "test")
    }
    assert len(rows["train"]) + len(rows["val"]) + len(rows["test"]) == 1797
    assert not rows["train"] & rows["val"]
    assert not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]


def test_normalised_with_training_statistics(digits: DataSplits) -> None:
    assert digits.train_x.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert digits.train_x.std().item() == pytest.approx(1.0, abs=1e-3)
    # Held-out splits are normalised with the same (training) statistics, not their own.
    assert digits.test_x.mean().item() != pytest.approx(0.0, abs=1e-4)


def test_deterministic_and_seeded(digits: DataSplits) -> None:
    again = load_digits_splits(image_size=32, seed=0)
    for field in ("train_x", "train_y", "val_y", "test_y"):
        assert torch.equal(getattr(digits, field), getattr(again, field))
    other = load_digits_splits(image_size=32, seed=1)
    assert not torch.equal(digits.test_y, other.test_y)


def test_native_resolution_option() -> None:
    native = load_data("digits", image_size=8)
    assert native.image_size == 8
    assert native.train_x.shape[1:] == (1, 8, 8)


def test_upsampling_is_bilinear_interpolation_of_native(digits: DataSplits) -> None:
    # Downsampling the 32x32 image back by 4x average pooling recovers roughly the 8x8 one.
    native = load_digits_splits(image_size=8)
    back = torch.nn.functional.avg_pool2d(digits.test_x[:20], 4)
    corr = torch.corrcoef(torch.stack([back.flatten(), native.test_x[:20].flatten()]))[0, 1]
    assert corr > 0.95


def test_loader(digits: DataSplits) -> None:
    first = next(iter(digits.loader("train", batch_size=16, shuffle=True, seed=3)))
    again = next(iter(digits.loader("train", batch_size=16, shuffle=True, seed=3)))
    assert first[0].shape == (16, 1, 32, 32) and first[1].shape == (16,)
    assert torch.equal(first[1], again[1])
    ordered = next(iter(digits.loader("test", batch_size=8, shuffle=False)))
    assert torch.equal(ordered[1], digits.test_y[:8])
    with pytest.raises(ValueError, match="train, val, test"):
        digits.loader("holdout", batch_size=8, shuffle=False)


def test_frozen(digits: DataSplits) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        digits.num_classes = 3  # type: ignore[misc]


def test_unknown_dataset_lists_available() -> None:
    with pytest.raises(ValueError) as info:
        load_data("cifar10")
    assert "digits" in str(info.value)
    assert available_datasets() == ["digits"]


def test_too_small_image_size_rejected() -> None:
    with pytest.raises(ValueError, match="image_size"):
        load_digits_splits(image_size=4)
