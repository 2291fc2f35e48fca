from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoprune.zoo.data import load_data
from autoprune.zoo.models import available_models, build_model
from autoprune.zoo.train import (
    DEFAULT_EPOCHS,
    baseline_path,
    default_cache_dir,
    evaluate_accuracy,
    load_or_train_baseline,
    random_shift,
    train_model,
)

# A tiny, fast configuration: ResNet-20 at half width on native 8x8 digits (~1 s per
# 3 epochs on 2 idle cores; far slower when other torch processes compete for them).
TINY = {"image_size": 8, "width_mult": 0.5}
CHANCE = 0.1


def test_default_epochs_cover_the_zoo() -> None:
    assert set(DEFAULT_EPOCHS) == set(available_models("images"))


def test_short_training_beats_chance() -> None:
    data = load_data("digits", image_size=8)
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, width_mult=0.5, input_size=8)
    before, _ = evaluate_accuracy(model, data.val_x, data.val_y)
    rng_before = torch.get_rng_state()
    metrics = train_model(model, data, epochs=3, progress=False)
    # Training draws from its own generator; the caller's RNG stream is untouched.
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert set(metrics) >= {"val_accuracy", "test_accuracy", "train_loss"}
    # ~65 % after 3 epochs; the bound leaves room for platform differences.
    assert metrics["val_accuracy"] > 3 * CHANCE > before
    assert metrics["test_accuracy"] > 3 * CHANCE
    assert not model.training


def test_evaluate_restores_mode_and_matches_manual_count() -> None:
    data = load_data("digits", image_size=8)
    model = build_model("resnet20", num_classes=10, in_channels=1, width_mult=0.5, input_size=8)
    model.train()
    accuracy, loss = evaluate_accuracy(model, data.test_x, data.test_y, batch_size=50)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(data.test_x)
    assert accuracy == pytest.approx((logits.argmax(1) == data.test_y).float().mean().item())
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, data.test_y).item(), rel=1e-4)


def test_random_shift_moves_content_within_bounds() -> None:
    images = torch.zeros(64, 1, 8, 8)
    images[:, :, 3, 3] = 1.0
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    rows, cols = torch.nonzero(shifted[:, 0] == 1.0)[:, 1:].T
    assert len(rows) == 64  # each image keeps its one bright pixel
    assert rows.min() >= 1 and rows.max() <= 5 and cols.min() >= 1 and cols.max() <= 5
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5  # shifts differ per image


def test_cache_round_trip(tmp_path: Path) -> None:
    model, data, record = load_or_train_baseline(
        "resnet20", "digits", epochs=3, cache_dir=tmp_path, progress=False, **TINY
    )
    assert record["cached"] is False
    assert record["metrics"]["test_accuracy"] > 3 * CHANCE
    weights = baseline_path("resnet20", "digits", cache_dir=tmp_path, **TINY)
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["spec"] == model.autoprune_spec
    assert sidecar["epochs"] == 3 and sidecar["metrics"] == record["metrics"]
    assert sidecar["recipe"] == {"epochs": 3, "lr": 0.05, "batch_size": 64, "optimizer": "sgd"}
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))

    # The second call loads: same weights, no training (epochs=None accepts any cached entry).
    loaded, _, again = load_or_train_baseline("resnet20", "digits", cache_dir=tmp_path, progress=False, **TINY)
    assert again["cached"] is True
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert evaluate_accuracy(loaded, data.test_x, data.test_y)[0] == pytest.approx(record["metrics"]["test_accuracy"])


def test_cache_invalidation(tmp_path: Path) -> None:
    kwargs = {"cache_dir": tmp_path, "progress": False, **TINY}
    load_or_train_baseline("resnet20", epochs=1, **kwargs)
    assert load_or_train_baseline("resnet20", epochs=1, **kwargs)[2]["cached"] is True
    assert load_or_train_baseline("resnet20", epochs=1, retrain=True, **kwargs)[2]["cached"] is False
    # A different explicit epoch count is a different baseline.
    assert load_or_train_baseline("resnet20", epochs=2, **kwargs)[2]["cached"] is False
    # Weights that do not match their sidecar's hash (e.g. truncated) are retrained, not trusted.
    weights = baseline_path("resnet20", "digits", cache_dir=tmp_path, **TINY)
    weights.write_bytes(weights.read_bytes()[:100])
    assert load_or_train_baseline("resnet20", epochs=2, **kwargs)[2]["cached"] is False
    # A corrupt sidecar is retrained too.
    weights.with_suffix(".json").write_text("{not json")
    assert load_or_train_baseline("resnet20", epochs=2, **kwargs)[2]["cached"] is False
    assert load_or_train_baseline("resnet20", epochs=2, **kwargs)[2]["cached"] is True


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    path = baseline_path("ResNet20", "digits", image_size=32, width_mult=1.0)
    assert path.parent == tmp_path / "env-cache"
    assert path.name == "resnet20_digits_32px_w1.pt"
    monkeypatch.delenv("AUTOPRUNE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "autoprune" / "baselines"


def test_bad_epochs_rejected() -> None:
    data = load_data("digits", image_size=8)
    model = build_model("resnet20", in_channels=1, width_mult=0.25, input_size=8)
    with pytest.raises(ValueError, match="epochs"):
        train_model(model, data, epochs=0, progress=False)
