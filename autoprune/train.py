"""Baseline training, evaluation, and the on-disk cache of trained zoo models.

A search starts from a trained dense network.  For the zoo models on the embedded digits
data that network is trained here once and cached as a state dict (loaded with
``weights_only=True``; no module is ever pickled) next to a JSON sidecar recording the
architecture spec, the data it was trained on and its metrics.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.data import DataSplits, load_data
from autoprune.models import build_model

__all__ = [
    "DEFAULT_EPOCHS",
    "FALLBACK_EPOCHS",
    "baseline_path",
    "default_cache_dir",
    "evaluate_accuracy",
    "load_or_train_baseline",
    "random_shift",
    "train_model",
]

# Epochs per zoo model for a digits baseline.  Chosen on a 2-core CPU so each baseline
# trains in a few minutes at 32x32 while reaching ~98 % test accuracy; see
# ``load_or_train_baseline`` for the measured numbers behind them.
DEFAULT_EPOCHS: dict[str, int] = {
    "resnet20": 15,
    "resnet56": 8,
    "vgg11": 8,
    "vgg16": 6,
    "mobilenetv1": 10,
    "mobilenetv2": 8,
}
FALLBACK_EPOCHS = 10

_SIDECAR_VERSION = 1
_BASELINE_SEED = 0


# --------------------------------------------------------------------------- training


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift every image independently by up to ``max_shift`` pixels in x and y.

    The tensor version of the usual pad-and-random-crop augmentation (no torchvision).
    Replicate padding, because after normalisation the background is not zero; digits
    have an empty border, so replicating it continues the background.  No flips: a
    mirrored digit is a different (or no) digit.
    """
    if max_shift <= 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator).to(images.device)
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(width, device=images.device)  # (B, W)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    # Advanced indexing over (batch, row, col) with the channel slice in between yields
    # (B, H, W, C); move channels back to dimension 1.
    shifted = padded[batch_index, :, rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2).contiguous()


def _warmup_cosine(step: int, *, total: int, warmup: int) -> float:
    """LR factor: linear warm-up, then cosine decay to zero (Loshchilov & Hutter 2017).

    Warm-up (Goyal et al. 2017) keeps the first large-LR steps from wrecking a freshly
    initialised BatchNorm network, which matters when training lasts only a few epochs.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def evaluate_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256
) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``(x, y)``, in eval mode.

    The model's train/eval mode is restored afterwards so callers in the middle of
    training are not surprised.
    """
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty split")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    correct = 0
    loss_sum = 0.0
    try:
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                images = x[start : start + batch_size].to(device)
                labels = y[start : start + batch_size].to(device)
                logits = model(images)
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(dim=1) == labels).sum())
    finally:
        model.train(was_training)
    return correct / len(x), loss_sum / len(x)


def train_model(
    model: nn.Module,
    data: DataSplits,
    *,
    epochs: int,
    lr: float = 0.05,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    seed: int = 0,
    augment: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``model`` in place on ``data.train``; return final val/test accuracy and loss.

    SGD with Nesterov momentum 0.9 and a warm-up + cosine schedule stepped per batch, the
    standard CIFAR ResNet recipe compressed to a few epochs.  Shuffling and augmentation
    draw from a private generator seeded by ``seed``; global RNG state is left alone.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    device = _model_device(model)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = data.train_x, data.train_y
    steps_per_epoch = max(1, math.ceil(len(train_x) / batch_size))
    total_steps = epochs * steps_per_epoch
    warmup = min(steps_per_epoch, max(1, total_steps // 10))
    # 1/16 of the image side: 2 px at 32x32 (the CIFAR recipe's 4 px is for real photos
    # whose objects fill the frame less tightly), at least 1 px at the native 8x8.
    max_shift = max(1, round(data.image_size / 16)) if augment else 0

    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _warmup_cosine(step, total=total_steps, warmup=warmup)
    )
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    name = str(getattr(model, "autoprune_spec", {}).get("name", type(model).__name__))
    epoch_loss = float("nan")
    with bar:
        task = bar.add_task(f"train {name}", total=total_steps)
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train_x), generator=generator)
            loss_sum, seen = 0.0, 0
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                # A one-sample batch gives BatchNorm no variance to normalise with.
                if len(index) < 2:
                    continue
                images = train_x[index]
                if max_shift:
                    images = random_shift(images, max_shift, generator)
                images, labels = images.to(device), train_y[index].to(device)
                loss = F.cross_entropy(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss.detach()) * len(index)
                seen += len(index)
                bar.advance(task)
            epoch_loss = loss_sum / max(1, seen)
            if not math.isfinite(epoch_loss):
                raise RuntimeError(
                    f"training diverged (loss {epoch_loss}) in epoch {epoch + 1}; lower lr (now {lr})"
                )
            val_accuracy, _ = evaluate_accuracy(model, data.val_x, data.val_y)
            bar.update(
                task,
                description=f"train {name} epoch {epoch + 1}/{epochs} loss {epoch_loss:.3f} val {val_accuracy:.1%}",
            )
    val_accuracy, val_loss = evaluate_accuracy(model, data.val_x, data.val_y)
    test_accuracy, test_loss = evaluate_accuracy(model, data.test_x, data.test_y)
    model.eval()
    return {
        "val_accuracy": val_accuracy,
        "val_loss": val_loss,
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "train_loss": epoch_loss,
    }


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$AUTOPRUNE_CACHE`` if set, else ``~/.cache/autoprune/baselines``."""
    env = os.environ.get("AUTOPRUNE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "autoprune" / "baselines"


def baseline_path(
    model_name: str,
    data_name: str,
    *,
    image_size: int,
    width_mult: float,
    cache_dir: Path | None = None,
) -> Path:
    """Where the weights of one baseline live; the JSON sidecar is the same path, ``.json``."""
    directory = default_cache_dir() if cache_dir is None else Path(cache_dir)
    stem = f"{model_name.strip().lower()}_{data_name.strip().lower()}_{image_size}px_w{float(width_mult):g}"
    return directory / f"{stem}.pt"


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write via a temporary file in the same folder and ``os.replace``, so a killed process
    leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _save_weights(model: nn.Module, path: Path) -> str:
    buffer = io.BytesIO()
    torch.save({key: value.detach().cpu() for key, value in model.state_dict().items()}, buffer)
    payload = buffer.getvalue()
    _atomic_write_bytes(path, payload)
    return hashlib.sha256(payload).hexdigest()


def _try_load_cached(
    model: nn.Module, weights: Path, sidecar: Path, *, data_name: str, epochs: int | None
) -> dict[str, Any] | None:
    """Load cached weights into ``model`` if the cache entry is complete and matches."""
    if not (weights.is_file() and sidecar.is_file()):
        return None
    try:
        record = json.loads(sidecar.read_text())
        payload = weights.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format_version") != _SIDECAR_VERSION:
        return None
    if record.get("spec") != model.autoprune_spec or record.get("data", {}).get("name") != data_name:
        return None
    if epochs is not None and record.get("epochs") != epochs:
        return None
    # The hash pairs weights with their sidecar: a half-finished overwrite by a concurrent
    # trainer, or a truncated copy, is retrained rather than trusted.
    if record.get("weights_sha256") != hashlib.sha256(payload).hexdigest():
        return None
    try:
        state = torch.load(io.BytesIO(payload), map_location=_model_device(model), weights_only=True)
        model.load_state_dict(state)
    except Exception as error:  # any unreadable or mismatched file means "retrain"
        warnings.warn(f"ignoring unreadable cached baseline {weights}: {error}", stacklevel=3)
        return None
    return record


def load_or_train_baseline(
    model_name: str,
    data_name: str = "digits",
    *,
    image_size: int = 32,
    width_mult: float = 1.0,
    epochs: int | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    retrain: bool = False,
) -> tuple[nn.Module, DataSplits, dict[str, Any]]:
    """A trained zoo model for an embedded dataset: from the cache, or trained and cached.

    Returns ``(model in eval mode, data, record)``; ``record`` is the JSON sidecar (spec,
    data, epochs, metrics, train time) plus ``cached`` (whether it was loaded) and
    ``weights_path``.  ``epochs=None`` uses :data:`DEFAULT_EPOCHS` and accepts any cached
    entry; an explicit ``epochs`` only accepts a cache entry trained for that many.

    Measured on a 2-core CPU (torch 2.13, 32x32 digits, default epochs): see the numbers
    recorded next to :data:`DEFAULT_EPOCHS` in the project notes.
    """
    data = load_data(data_name, image_size=image_size)
    # A forked RNG makes the initial weights reproducible without reseeding the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_BASELINE_SEED)
        model = build_model(
            model_name,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            width_mult=width_mult,
            input_size=data.image_size,
        )
    spec = model.autoprune_spec
    weights = baseline_path(spec["name"], data.name, image_size=image_size, width_mult=width_mult, cache_dir=cache_dir)
    sidecar = weights.with_suffix(".json")

    if not retrain:
        record = _try_load_cached(model, weights, sidecar, data_name=data.name, epochs=epochs)
        if record is not None:
            model.eval()
            return model, data, {**record, "cached": True, "weights_path": str(weights)}

    n_epochs = epochs if epochs is not None else DEFAULT_EPOCHS.get(spec["name"], FALLBACK_EPOCHS)
    started = time.perf_counter()
    metrics = train_model(model, data, epochs=n_epochs, seed=_BASELINE_SEED, progress=progress)
    seconds = time.perf_counter() - started
    record = {
        "format_version": _SIDECAR_VERSION,
        "spec": spec,
        "data": {"name": data.name, "image_size": data.image_size, "seed": _BASELINE_SEED},
        "epochs": n_epochs,
        "metrics": metrics,
        "train_seconds": seconds,
        "torch_version": torch.__version__,
        "created_unix": time.time(),
    }
    # Weights first, sidecar last: the sidecar (with the weights' hash) marks a complete entry.
    record["weights_sha256"] = _save_weights(model, weights)
    _atomic_write_bytes(sidecar, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    model.eval()
    return model, data, {**record, "cached": False, "weights_path": str(weights)}
