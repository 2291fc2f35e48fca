"""Scoring pruned candidates: adaptive BatchNorm, then accuracy on the validation split.

EagleEye (Li et al., ECCV 2020): a pruned network evaluated with the dense network's BN
statistics scores near chance; re-estimating the statistics on a few training batches makes the
score track accuracy after full fine-tuning. Candidates are scored on a split held out from the
training data — never the test split, which only final reports touch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.evaluator import Evaluator
from autoprune.placement import model_device
from autoprune.zoo.data import DataSplits

__all__ = ["ClassificationEvaluator", "adaptive_bn", "evaluate_accuracy", "finetune",
           "model_device"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def adaptive_bn(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from ``batches`` (a cumulative average,
    no gradients); other layers (dropout) stay in eval mode. Returns the model in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not bns or not batches:
        return model.eval()
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the calibration batches
        bn.train()
    device = model_device(model)
    with torch.no_grad():
        for x in batches:
            model(x.to(device))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def evaluate_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256
) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``(x, y)``, in eval mode.

    The model's train/eval mode is restored afterwards so callers in the middle of
    training are not surprised.
    """
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty split")
    device = model_device(model)
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


def _accuracy_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       batch_size: int) -> dict[str, float]:
    accuracy, loss = evaluate_accuracy(model, x, y, batch_size=batch_size)
    return {"accuracy": accuracy, "loss": loss}


# The fine-tune's learning rate per optimizer (the baseline recipe's optimizer is used).
_FINETUNE_LR = {"sgd": 0.01, "adamw": 5e-4}


class ClassificationEvaluator(Evaluator):
    """Adaptive BN on ``calib_batches`` training batches, an optional few-step fine-tune
    (``finetune_optimizer``: sgd, or adamw for transformers), then accuracy and cross-entropy
    on the validation split. ``test(model)`` does the same on the
    test split, for final reports only."""

    def __init__(self, data: DataSplits, *, calib_batches: int = 16, batch_size: int = 64,
                 finetune_steps: int = 0, finetune_lr: float | None = None,
                 finetune_optimizer: str = "sgd", seed: int = 0) -> None:
        if calib_batches < 0 or finetune_steps < 0:
            raise ValueError("calib_batches and finetune_steps must be >= 0")
        if finetune_optimizer not in _FINETUNE_LR:
            raise ValueError(f"unknown optimizer {finetune_optimizer!r}; choose sgd or adamw")
        self.data = data
        self.batch_size = batch_size
        self.finetune_steps = finetune_steps
        self.finetune_optimizer = finetune_optimizer
        self.finetune_lr = _FINETUNE_LR[finetune_optimizer] if finetune_lr is None else finetune_lr
        self.seed = seed
        loader = data.loader("train", batch_size=batch_size, shuffle=True, seed=seed)
        self._calib = [x for x, _ in _take(loader, calib_batches)]
        self._placed: dict[tuple[str, torch.device], Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_placed": {}}  # what sat on a GPU is placed again there

    def _on(self, model: nn.Module, name: str) -> Any:
        """The calibration batches or a split's tensors (``name``) on the network's device,
        moved there once."""
        value = self._calib if name == "calib" else getattr(self.data, name)
        device = model_device(model)
        if device.type == "cpu" or not (name == "calib" or isinstance(value, torch.Tensor)):
            return value  # here already, or an image folder read a batch at a time (moved so)
        key = (name, device)
        if key not in self._placed:
            self._placed[key] = [x.to(device) for x in value] if name == "calib" \
                else value.to(device)
        return self._placed[key]

    def prepare(self, model: nn.Module) -> nn.Module:
        """Fine-tune (if asked) and recalibrate BN: what every score is taken after."""
        if self.finetune_steps:
            finetune(model, self.data, steps=self.finetune_steps, lr=self.finetune_lr,
                     batch_size=self.batch_size, seed=self.seed,
                     optimizer=self.finetune_optimizer)
        return adaptive_bn(model, self._on(model, "calib"))

    def __call__(self, model: nn.Module) -> dict[str, float]:
        self.prepare(model)
        return _checked(_accuracy_and_loss(model, self._on(model, "val_x"),
                                           self._on(model, "val_y"), 256))

    def test(self, model: nn.Module, *, prepared: bool = True) -> dict[str, float]:
        """Accuracy and loss on the test split (pass ``prepared=False`` to recalibrate first)."""
        if not prepared:
            self.prepare(model)
        return _checked(_accuracy_and_loss(model, self._on(model, "test_x"),
                                           self._on(model, "test_y"), 256))


def finetune(model: nn.Module, data: DataSplits, *, steps: int, lr: float, batch_size: int,
             seed: int, optimizer: str = "sgd") -> nn.Module:
    """A few steps on the training split (no augmentation): SGD with momentum, or AdamW for
    networks trained with it (transformers: SGD at the CNNs' rate wrecked a trained ViT, 0.97
    -> 0.77 validation accuracy in 100 steps)."""
    opt: torch.optim.Optimizer = (
        torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0) if optimizer == "adamw"
        else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4))
    model.train()
    device = model_device(model)
    done = 0
    while done < steps:
        for x, y in data.loader("train", batch_size=batch_size, shuffle=True, seed=seed + done):
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    return model.eval()


def _take(loader: torch.utils.data.DataLoader, n: int) -> list:
    out = []
    while len(out) < n:
        before = len(out)
        for batch in loader:
            out.append(batch)
            if len(out) >= n:
                break
        if len(out) == before:
            break
    return out


def _checked(metrics: dict[str, float]) -> dict[str, float]:
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in metrics.items()}
