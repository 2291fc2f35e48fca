"""The language task: a character-level GPT on the ``python-stdlib`` corpus.

- :func:`train_language_model` trains until the validation loss stops improving (checked
  every ``eval_every`` steps; ``patience`` checks without a new best end it) and returns the
  curve, so a baseline is never an unfinished training that a fine-tune merely continues.
- :class:`LanguageModelEvaluator` scores a pruned network by its validation loss (mean
  cross-entropy per character, nats) and perplexity, after an optional few-step fine-tune;
  ``test(model)`` does the same on the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.evaluator import Evaluator

from .text import TextSplits

__all__ = ["LanguageModelEvaluator", "LanguageRecipe", "lm_loss", "train_language_model"]


@dataclass(frozen=True, kw_only=True)
class LanguageRecipe:
    """How the decoder is trained: AdamW, warm-up then constant rate, early stopping."""

    max_steps: int = 6000
    lr: float = 2e-3
    batch_size: int = 32
    weight_decay: float = 0.05
    warmup: int = 100
    eval_every: int = 250
    eval_windows: int = 256
    patience: int = 3
    min_delta: float = 0.002


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch: int = 64) -> float:
    """Mean cross-entropy per character of ``model`` predicting ``y`` from ``x``."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch])
            total += float(F.cross_entropy(logits.flatten(0, 1), y[i:i + batch].flatten(),
                                           reduction="sum"))
            count += y[i:i + batch].numel()
    return total / max(1, count)


def _steps(model: nn.Module, corpus: TextSplits, opt: torch.optim.Optimizer, steps: int, *,
           batch_size: int, generator: torch.Generator,
           schedule: torch.optim.lr_scheduler.LRScheduler | None = None) -> float:
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x, y = corpus.batch("train", batch_size=batch_size, generator=generator)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if schedule is not None:
            schedule.step()
    return float(loss.detach())


def train_language_model(model: nn.Module, corpus: TextSplits, *,
                         recipe: LanguageRecipe = LanguageRecipe(), seed: int = 0,
                         progress: bool = True) -> dict[str, object]:
    """Train ``model`` in place until the validation loss stops improving; the weights of the
    best check are kept. Returns the curve ``[(step, train_loss, val_loss), ...]``, the best
    step and the final validation and test losses."""
    from rich.console import Console  # noqa: PLC0415 - only when training
    from rich.progress import Progress

    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / recipe.warmup))
    val_x, val_y = corpus.windows("val", limit=recipe.eval_windows)
    curve: list[tuple[int, float, float]] = []
    best, best_step, best_state, waited, step = math.inf, 0, None, 0, 0
    with Progress(console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("train chargpt", total=recipe.max_steps)
        while step < recipe.max_steps and waited < recipe.patience:
            train = _steps(model, corpus, opt, recipe.eval_every, batch_size=recipe.batch_size,
                           generator=generator, schedule=warm)
            step += recipe.eval_every
            if not math.isfinite(train):
                raise RuntimeError(f"training diverged (loss {train}) by step {step}; lower lr")
            val = lm_loss(model, val_x, val_y)
            curve.append((step, train, val))
            if val < best - recipe.min_delta:
                best, best_step, waited = val, step, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                waited += 1
            bar.update(task, completed=step,
                       description=f"train chargpt step {step} val loss {val:.3f} (best {best:.3f})")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    test_x, test_y = corpus.windows("test", limit=recipe.eval_windows)
    return {"curve": curve, "best_step": best_step, "stopped_at": step,
            "converged": waited >= recipe.patience, "val_loss": lm_loss(model, val_x, val_y),
            "test_loss": lm_loss(model, test_x, test_y)}


class LanguageModelEvaluator(Evaluator):
    """Validation loss (nats per character) and perplexity of a pruned decoder, after an
    optional ``finetune_steps`` of AdamW on the training split (the same steps, in the same
    order, for every network)."""

    def __init__(self, corpus: TextSplits, *, windows: int = 128, finetune_steps: int = 0,
                 finetune_lr: float = 5e-4, batch_size: int = 32, seed: int = 0) -> None:
        if finetune_steps < 0 or windows < 1:
            raise ValueError("finetune_steps must be >= 0 and windows >= 1")
        self.corpus, self.finetune_steps, self.finetune_lr = corpus, finetune_steps, finetune_lr
        self.batch_size, self.seed = batch_size, seed
        self._val = corpus.windows("val", limit=windows)
        self._test = corpus.windows("test", limit=windows)

    def prepare(self, model: nn.Module) -> nn.Module:
        if self.finetune_steps:
            opt = torch.optim.AdamW(model.parameters(), lr=self.finetune_lr, weight_decay=0.0)
            _steps(model, self.corpus, opt, self.finetune_steps, batch_size=self.batch_size,
                   generator=torch.Generator().manual_seed(self.seed))
        return model.eval()

    def __call__(self, model: nn.Module) -> dict[str, float]:
        self.prepare(model)
        return _scores(lm_loss(model, *self._val))

    def test(self, model: nn.Module, *, prepared: bool = True) -> dict[str, float]:
        if not prepared:
            self.prepare(model)
        return _scores(lm_loss(model, *self._test))


def _scores(loss: float) -> dict[str, float]:
    if not math.isfinite(loss):
        return {"loss": float("nan"), "perplexity": float("nan")}
    return {"loss": loss, "perplexity": math.exp(loss)}
