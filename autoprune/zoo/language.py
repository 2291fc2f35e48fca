"""The language task: a character-level GPT on the ``python-stdlib`` corpus.

- :func:`train_language_model` trains until the validation loss stops improving (checked
  every ``eval_every`` steps; ``patience`` checks without a new best end it) and returns the
  curve, so a baseline is never an unfinished training that a fine-tune merely continues.
- :func:`load_or_train_language_baseline` is the zoo decoder trained that way on this
  Python's corpus, cached like the image baselines and keyed by the corpus's content hash
  (another Python's files make another baseline).
- :class:`LanguageModelEvaluator` scores a pruned network by its validation loss (mean
  cross-entropy per character, nats) and perplexity, after an optional few-step fine-tune;
  ``test(model)`` does the same on the test split.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.evaluator import Evaluator
from autoprune.placement import model_device, trained_on

from .models import LANGUAGE_MODELS, build_model
from .text import TextSplits, load_stdlib_corpus
from .train import default_cache_dir, read_cached_baseline, write_baseline

__all__ = ["CONTEXT", "LanguageModelEvaluator", "LanguageRecipe", "lm_loss",
           "load_or_train_language_baseline", "train_language_model"]

#: The context length (characters) of the zoo's decoder.
CONTEXT = 64
_SEED = 0


@dataclass(frozen=True, kw_only=True)
class LanguageRecipe:
    """How the decoder is trained: AdamW, warm-up then constant rate, early stopping."""

    max_steps: int = 10000
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
    device = model_device(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch].to(device))
            total += float(F.cross_entropy(logits.flatten(0, 1),
                                           y[i:i + batch].flatten().to(device), reduction="sum"))
            count += y[i:i + batch].numel()
    return total / max(1, count)


def _steps(model: nn.Module, corpus: TextSplits, opt: torch.optim.Optimizer, steps: int, *,
           batch_size: int, generator: torch.Generator,
           schedule: torch.optim.lr_scheduler.LRScheduler | None = None) -> float:
    model.train()
    device = model_device(model)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x, y = corpus.batch("train", batch_size=batch_size, generator=generator)
        x, y = x.to(device), y.to(device)
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
            chunk = min(recipe.eval_every, recipe.max_steps - step)
            train = _steps(model, corpus, opt, chunk, batch_size=recipe.batch_size,
                           generator=generator, schedule=warm)
            step += chunk
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


def load_or_train_language_baseline(
        model_name: str = "chargpt", *, width_mult: float = 1.0, cache_dir: Path | None = None,
        progress: bool = True, retrain: bool = False, recipe: LanguageRecipe = LanguageRecipe(),
        max_steps: int | None = None, corpus: TextSplits | None = None,
        device: torch.device | None = None) -> tuple[nn.Module, TextSplits, dict[str, Any]]:
    """The zoo decoder trained on the ``python-stdlib`` corpus (or ``corpus``) until its
    validation loss stops improving: from the cache, or trained now and cached. Returns
    ``(model in eval mode, corpus, record)``; ``record`` holds the curve, the corpus's hash
    and files, and ``cached``. ``max_steps=None`` trains at most the recipe's steps and
    accepts a cached baseline of any length; a number accepts only one trained with it.
    ``device``: where it trains (the model returned is on the CPU)."""
    key = model_name.strip().lower()
    if key not in LANGUAGE_MODELS:
        raise ValueError(f"{model_name!r} is not a language model; python-stdlib is text, so "
                         f"use --model {' or '.join(sorted(LANGUAGE_MODELS))}")
    corpus = corpus or load_stdlib_corpus(block=CONTEXT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        model = build_model(key, num_classes=corpus.vocab_size, in_channels=1,
                            width_mult=width_mult, input_size=corpus.block)
    spec = model.autoprune_spec
    weights = Path(cache_dir or default_cache_dir()) / (
        f"{key}_{corpus.name}_ctx{corpus.block}_w{float(width_mult):g}_{corpus.sha256[:12]}.pt")

    if max_steps is not None:
        recipe = replace(recipe, max_steps=max_steps)
    wanted = {k: v for k, v in asdict(recipe).items() if k != "max_steps" or max_steps}

    def accept(record: dict[str, Any]) -> bool:
        cached = record.get("recipe") or {}
        return (record.get("spec") == spec and record.get("data", {}).get("sha256") == corpus.sha256
                and all(cached.get(k) == v for k, v in wanted.items()))

    if not retrain and (record := read_cached_baseline(model, weights, weights.with_suffix(".json"),
                                                       accept)) is not None:
        return model.eval(), corpus, {**record, "cached": True, "weights_path": str(weights)}
    started = time.perf_counter()
    with trained_on(model, device):
        out = train_language_model(model, corpus, recipe=recipe, seed=_SEED, progress=progress)
    record = write_baseline(model, weights, {
        "spec": spec, "data": corpus.info(), "recipe": asdict(recipe),
        "epochs": None, "steps": out["stopped_at"], "best_step": out["best_step"],
        "converged": out["converged"], "curve": out["curve"],
        "metrics": {"val_loss": out["val_loss"], "test_loss": out["test_loss"]},
        "train_seconds": time.perf_counter() - started, "torch_version": torch.__version__,
        "created_unix": time.time()})
    return model.eval(), corpus, {**record, "cached": False, "weights_path": str(weights)}


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
