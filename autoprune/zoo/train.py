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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.zoo.data import DataSplits, load_data
from autoprune.placement import model_device, trained_on
from autoprune.zoo.evaluate import evaluate_accuracy
from autoprune.zoo.models import LANGUAGE_MODELS, build_model

__all__ = [
    "BASELINE_RECIPES",
    "BaselineRecipe",
    "archived_baseline",
    "DEFAULT_EPOCHS",
    "FALLBACK_RECIPE",
    "baseline_path",
    "default_cache_dir",
    "evaluate_accuracy",
    "load_or_train_baseline",
    "random_shift",
    "train_model",
]


@dataclass(frozen=True, kw_only=True)
class BaselineRecipe:
    """How one zoo model's digits baseline is trained (arguments of :func:`train_model`)."""

    epochs: int
    lr: float = 0.05
    batch_size: int = 64
    # sgd (Nesterov momentum 0.9, weight decay 5e-4) or adamw (weight decay 0.05), which
    # transformers need from scratch
    optimizer: str = "sgd"


# Chosen on the 2-core CPU so every 32x32 baseline trains in a few minutes.  Measured with
# these recipes (torch 2.13 CPU, one thread, seed 0; CPU seconds / test accuracy):
#   resnet20 56 s / 98.1 %   resnet56 174 s / 96.9 %   vgg11 84 s / 98.3 %
#   vgg16 150 s / 98.6 %     mobilenetv1 84 s / 96.7 %   mobilenetv2 184 s / 97.2 %
# Short schedules need gentler rates for the deepest nets: VGG at lr 0.05
# diverges within a few steps on upsampled digits (loss 2.4 -> 20, stuck at chance after
# 3 epochs) and trains cleanly at 0.01, the original VGG rate (Simonyan & Zisserman 2015);
# ResNet-56 reached 85.0 % at 0.1, 94.7 % at 0.05 and 96.9 % at 0.02 in 10 epochs.
BASELINE_RECIPES: dict[str, BaselineRecipe] = {
    "resnet20": BaselineRecipe(epochs=10),
    "resnet56": BaselineRecipe(epochs=10, lr=0.02),
    "vgg11": BaselineRecipe(epochs=4, lr=0.01),
    "vgg16": BaselineRecipe(epochs=4, lr=0.01),
    "mobilenetv1": BaselineRecipe(epochs=10),
    "mobilenetv2": BaselineRecipe(epochs=8),
    # A ViT needs AdamW and many more steps than the CNNs (16 patches of 8x8 at 32 px, 1,293
    # training images): 15 epochs at 4x4 patches reached 54.0% test accuracy, 40 epochs at
    # 8x8 patches 92.8%, 80 epochs 98.9% (83 s on a shared 2-core host).
    "vit": BaselineRecipe(epochs=80, lr=2e-3, optimizer="adamw"),
}
FALLBACK_RECIPE = BaselineRecipe(epochs=10)
DEFAULT_EPOCHS: dict[str, int] = {name: recipe.epochs for name, recipe in BASELINE_RECIPES.items()}

_SIDECAR_VERSION = 1
_BASELINE_SEED = 0


# --------------------------------------------------------------------------- training


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


def train_model(
    model: nn.Module,
    data: DataSplits,
    *,
    epochs: int,
    lr: float = 0.05,
    batch_size: int = 64,
    weight_decay: float | None = None,
    seed: int = 0,
    augment: bool = True,
    progress: bool = True,
    optimizer: str = "sgd",
) -> dict[str, float]:
    """Train ``model`` in place on ``data.train``; return final val/test accuracy and loss.

    SGD with Nesterov momentum 0.9 (or AdamW, ``optimizer="adamw"``, for transformers) and a
    warm-up + cosine schedule stepped per batch, the standard CIFAR ResNet recipe compressed
    to a few epochs. ``weight_decay`` defaults to 5e-4 for SGD and 0.05 for AdamW.  Shuffling and augmentation
    draw from a private generator seeded by ``seed``; global RNG state is left alone.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = data.train_x, data.train_y
    steps_per_epoch = max(1, math.ceil(len(train_x) / batch_size))
    total_steps = epochs * steps_per_epoch
    warmup = min(steps_per_epoch, max(1, total_steps // 10))
    # 1/16 of the image side: 2 px at 32x32 (the CIFAR recipe's 4 px is for real photos
    # whose objects fill the frame less tightly), at least 1 px at the native 8x8.
    max_shift = max(1, round(data.image_size / 16)) if augment else 0

    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, weight_decay=0.05 if weight_decay is None else weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4 if weight_decay is None else weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose sgd or adamw")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: _warmup_cosine(step, total=total_steps, warmup=warmup)
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
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
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
        # mkstemp creates owner-only files; a cache is meant to be readable like any other.
        os.fchmod(handle, 0o644)
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


def read_cached_baseline(model: nn.Module, weights: Path, sidecar: Path,
                         accept: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """Load cached weights into ``model`` if the entry is complete, of this format, accepted
    by ``accept(sidecar record)``, and its weights match the hash the sidecar recorded; else
    None (the caller retrains)."""
    if not (weights.is_file() and sidecar.is_file()):
        return None
    try:
        record = json.loads(sidecar.read_text())
        payload = weights.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format_version") != _SIDECAR_VERSION:
        return None
    if not accept(record):
        return None
    # The hash pairs weights with their sidecar: a half-finished overwrite by a concurrent
    # trainer, or a truncated copy, is retrained rather than trusted.
    if record.get("weights_sha256") != hashlib.sha256(payload).hexdigest():
        return None
    try:
        state = torch.load(io.BytesIO(payload), map_location=model_device(model), weights_only=True)
        model.load_state_dict(state)
    except Exception as error:  # any unreadable or mismatched file means "retrain"
        warnings.warn(f"ignoring unreadable cached baseline {weights}: {error}", stacklevel=3)
        return None
    return record


def archived_baseline(weights: Path, sha256: str) -> Path:
    """Where a baseline replaced by a new training is kept: beside it, named by its hash."""
    return weights.with_name(f"{weights.stem}.{sha256[:12]}{weights.suffix}")


def _keep_previous(weights: Path) -> None:
    """A complete cache entry about to be replaced is moved aside (``archived_baseline``),
    never overwritten in place: the runs searched on it name it by its hash."""
    sidecar = weights.with_suffix(".json")
    try:
        sha = json.loads(sidecar.read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(sha, str) or not weights.is_file():
        return
    kept = archived_baseline(weights, sha)
    os.replace(weights, kept)
    os.replace(sidecar, kept.with_suffix(".json"))


def write_baseline(model: nn.Module, weights: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Cache ``model``'s weights and their sidecar ``record`` (with the format version and the
    weights' hash added). Weights first, sidecar last: the sidecar marks a complete entry."""
    record = {"format_version": _SIDECAR_VERSION, **record}
    _keep_previous(weights)
    record["weights_sha256"] = _save_weights(model, weights)
    _atomic_write_bytes(weights.with_suffix(".json"),
                        (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return record


def _try_load_cached(
    model: nn.Module,
    weights: Path,
    sidecar: Path,
    *,
    data_name: str,
    recipe: BaselineRecipe,
    epochs: int | None,
) -> dict[str, Any] | None:
    """Load cached weights into ``model`` if the cache entry is complete and matches.

    The epoch count only has to match when the caller asked for one, so a baseline trained
    longer on purpose is reused by later searches; a changed learning rate or batch size
    in the model's default recipe makes older entries stale.
    """
    def accept(record: dict[str, Any]) -> bool:
        if record.get("spec") != model.autoprune_spec or record.get("data", {}).get("name") != data_name:
            return False
        if epochs is not None and record.get("epochs") != epochs:
            return False
        cached = record.get("recipe")
        return isinstance(cached, dict) and (
            cached.get("lr"), cached.get("batch_size"), cached.get("optimizer", "sgd")
        ) == (recipe.lr, recipe.batch_size, recipe.optimizer)

    return read_cached_baseline(model, weights, sidecar, accept)


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
    device: torch.device | None = None,
) -> tuple[nn.Module, DataSplits, dict[str, Any]]:
    """A trained zoo model for an embedded dataset: from the cache, or trained and cached.

    Returns ``(model in eval mode, data, record)``; ``record`` is the JSON sidecar (spec,
    data, epochs, metrics, train time) plus ``cached`` (whether it was loaded) and
    ``weights_path``.  Training follows the model's :data:`BASELINE_RECIPES` entry.
    ``epochs=None`` uses the recipe's epochs and accepts a cached entry of any length;
    an explicit ``epochs`` only accepts an entry trained for exactly that many. ``device``:
    where it trains (the model returned is on the CPU).
    """
    if model_name.strip().lower() in LANGUAGE_MODELS:
        raise ValueError(f"{model_name} is a language model and {data_name} is not text; use "
                         "--data python-stdlib (autoprune.zoo.language."
                         "load_or_train_language_baseline)")
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

    recipe = BASELINE_RECIPES.get(spec["name"], FALLBACK_RECIPE)
    if not retrain:
        record = _try_load_cached(model, weights, sidecar, data_name=data.name, recipe=recipe, epochs=epochs)
        if record is not None:
            model.eval()
            return model, data, {**record, "cached": True, "weights_path": str(weights)}

    n_epochs = epochs if epochs is not None else recipe.epochs
    started = time.perf_counter()
    with trained_on(model, device):
        metrics = train_model(model, data, epochs=n_epochs, lr=recipe.lr,
                              batch_size=recipe.batch_size, seed=_BASELINE_SEED,
                              progress=progress, optimizer=recipe.optimizer)
    seconds = time.perf_counter() - started
    record = write_baseline(model, weights, {
        "spec": spec,
        "data": {"name": data.name, "image_size": data.image_size, "seed": _BASELINE_SEED},
        "epochs": n_epochs,
        "recipe": {**asdict(recipe), "epochs": n_epochs},
        "metrics": metrics,
        "train_seconds": seconds,
        "torch_version": torch.__version__,
        "created_unix": time.time(),
    })
    model.eval()
    return model, data, {**record, "cached": False, "weights_path": str(weights)}
