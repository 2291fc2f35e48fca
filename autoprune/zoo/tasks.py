"""A task: a trained zoo model on an embedded data source, with the evaluator that scores its
pruned copies and the metric a search optimises.

- ``digits`` (images): the classification baselines, scored by validation accuracy after
  adaptive BatchNorm (:class:`~autoprune.zoo.evaluate.ClassificationEvaluator`);
- ``python-stdlib`` (text): the character-level decoder, scored by validation loss
  (nats per character) and perplexity
  (:class:`~autoprune.zoo.language.LanguageModelEvaluator`).

Both evaluators score on the validation split and keep ``test(model)`` for the final report.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.evaluator import BatchesEvaluator
from autoprune.placement import trained_on
from autoprune.user_model import (UserModelError, build_user_model, is_factory, load_callable,
                                  parse_model_args)

from .data import DataSplits, available_datasets, is_data_path, load_data
from .evaluate import ClassificationEvaluator, evaluate_accuracy
from .language import CONTEXT, LanguageModelEvaluator, load_or_train_language_baseline
from .models import LANGUAGE_MODELS, build_model
from .text import VOCAB, TextSplits
from .train import (FALLBACK_RECIPE, default_cache_dir, load_or_train_baseline,
                    read_cached_baseline, train_model, write_baseline)

__all__ = ["DATA_SOURCES", "TEXT_SOURCES", "Task", "load_task", "zoo_architecture"]

#: The text data sources (read by the language models).
TEXT_SOURCES: tuple[str, ...] = ("python-stdlib",)
#: Every name ``--data`` takes.
DATA_SOURCES: tuple[str, ...] = (*available_datasets(), *TEXT_SOURCES)


@dataclass(frozen=True, kw_only=True)
class Task:
    """A trained model, its data, and the metric searched (``accuracy``, higher is better, or
    ``loss``, lower is better); :meth:`evaluator` makes the evaluator that scores it."""

    model: nn.Module
    data: DataSplits | TextSplits
    metric: str
    baseline: dict[str, Any]

    def weights_hash(self) -> str | None:
        """The SHA-256 of the weights the model was loaded with (a cached baseline's, as its
        sidecar records it, or a ``--weights`` file's), so a run can tell when they change."""
        if isinstance(sha := self.baseline.get("weights_sha256"), str):
            return sha
        path = self.baseline.get("weights_path")
        if path and Path(path).is_file():
            return hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return None

    def evaluator(self, *, calib_batches: int = 16, finetune_steps: int = 0, seed: int = 0,
                  user: str | None = None
                  ) -> ClassificationEvaluator | LanguageModelEvaluator | BatchesEvaluator:
        """Scores on the validation split, after ``finetune_steps`` (with the optimizer the
        baseline was trained with) and, for images, adaptive BatchNorm on ``calib_batches``
        training batches; ``test(model)`` for final reports. ``user`` (``file.py:fn`` or
        ``package.module:fn``) scores with ``fn(model, batches)`` over the split's
        ``(inputs, targets)`` batches instead, after the same preparation."""
        if isinstance(self.data, TextSplits):
            base: ClassificationEvaluator | LanguageModelEvaluator = LanguageModelEvaluator(
                self.data, finetune_steps=finetune_steps, seed=seed)
            val, test, size = base._val, base._test, 32
        else:
            optimizer = str((self.baseline.get("recipe") or {}).get("optimizer", "sgd"))
            base = ClassificationEvaluator(self.data, calib_batches=calib_batches,
                                           finetune_steps=finetune_steps,
                                           finetune_optimizer=optimizer, seed=seed)
            val, test, size = self.data.tensors("val"), self.data.tensors("test"), 256
        if user is None:
            return base
        return BatchesEvaluator(load_callable(user), base, _batches(*val, size),
                                _batches(*test, size), user)

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return self.data.example_inputs(batch)

    def calibration_batches(self, n: int = 8, *, batch_size: int = 64,
                            seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` seeded ``(inputs, targets)`` batches of the **training** split, never the
        validation or test split: what data-driven pruning criteria rank channels on."""
        if n < 1:
            raise ValueError(f"calibration needs at least one batch, got {n}")
        if isinstance(self.data, TextSplits):
            generator = torch.Generator().manual_seed(seed)
            return [self.data.batch("train", batch_size=min(batch_size, 32), generator=generator)
                    for _ in range(n)]
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        loader = self.data.loader("train", batch_size=batch_size, shuffle=True, seed=seed)
        while len(out) < n:
            before = len(out)
            out.extend((x, y) for x, y in itertools.islice(loader, n - len(out)))
            if len(out) == before:
                break
        return out

    def scores(self) -> dict[str, float]:
        """The model as it is (no BN recalibration, no fine-tune) on the validation and test
        splits of image data: ``val_accuracy``, ``val_loss``, ``test_accuracy``, ``test_loss``."""
        if isinstance(self.data, TextSplits):
            raise ValueError("scores() is for image classifiers; a language model's evaluator "
                             "reports its loss")
        return {f"{split}_{k}": v for split in ("val", "test") for k, v in zip(
            ("accuracy", "loss"), evaluate_accuracy(self.model, *self.data.tensors(split)))}

    def data_info(self) -> dict[str, Any]:
        """What results record about the data (a corpus's content hash and files)."""
        if isinstance(self.data, TextSplits):
            return self.data.info()
        return {"name": self.data.name, "image_size": self.data.image_size, **self.data.about}

    def describe(self, metrics: dict[str, float]) -> str:
        """``metrics`` (an evaluator's, or a user's) as people read them."""
        if "accuracy" in metrics:
            return f"accuracy {metrics['accuracy']:.4f}"
        if "perplexity" in metrics:
            return f"loss {metrics['loss']:.4f} (perplexity {metrics['perplexity']:.3f})"
        return f"loss {metrics['loss']:.4f}"


def _check_pair(model: str, data: str) -> tuple[str, str]:
    """The normalised names; a language model on images, or an image model on text, is one
    clear error."""
    name, source = model.strip().lower(), data.strip().lower()
    if is_data_path(data):  # an npz or an image folder: any image model reads it
        source = data.strip()
        if name in LANGUAGE_MODELS:
            raise ValueError(f"{model} is a language model and {data} holds images; use --data "
                             f"{' or '.join(TEXT_SOURCES)}")
        return (model.strip() if is_factory(model) else name), source
    if source not in DATA_SOURCES:
        raise ValueError(f"unknown data source {data!r}; available: {', '.join(DATA_SOURCES)}, "
                         "a path/to/file.npz, or an image folder (one sub-folder per class)")
    if is_factory(model):
        if source in TEXT_SOURCES:
            raise ValueError(f"a model of your own reads images here: use --data "
                             f"{' or '.join(available_datasets())}")
        return model.strip(), source
    if (source in TEXT_SOURCES) != (name in LANGUAGE_MODELS):
        if name in LANGUAGE_MODELS:
            raise ValueError(f"{model} is a language model and {data} is not text; use --data "
                             f"{' or '.join(TEXT_SOURCES)}")
        raise ValueError(f"{data} is text and {model} is an image model; use --model "
                         f"{' or '.join(sorted(LANGUAGE_MODELS))}")
    return name, source


def zoo_architecture(model: str, data: str, *, image_size: int = 32, width_mult: float = 1.0,
                     model_args: tuple[str, ...] = (), weights: str | None = None,
                     input_shape: tuple[int, ...] | None = None
                     ) -> tuple[nn.Module, torch.Tensor]:
    """The architecture for ``data`` and an example input (what latency depends on): a zoo
    model untrained, without loading its corpus; a user's factory with its ``weights`` if
    given, and an input of ``input_shape`` if given, else shaped like ``data``'s."""
    name, source = _check_pair(model, data)
    if is_factory(name):
        net = build_user_model(name, parse_model_args(model_args),
                               Path(weights) if weights else None)
        example = (torch.zeros(1, *input_shape) if input_shape is not None
                   else load_data(source, image_size=image_size).example_inputs(1))
        _check_fits(net, example, None,
                    fix=_FIT_GIVEN_SHAPE if input_shape is not None else _FIT_SHAPE)
        return net, example
    if source in TEXT_SOURCES:
        net = build_model(name, num_classes=len(VOCAB) + 1, in_channels=1,
                          width_mult=width_mult, input_size=CONTEXT)
        return net.eval(), torch.zeros(1, CONTEXT, dtype=torch.long)
    images = load_data(source, image_size=image_size)
    net = build_model(name, num_classes=images.num_classes, in_channels=images.in_channels,
                      width_mult=width_mult, input_size=images.image_size)
    return net.eval(), images.example_inputs(1)


def load_task(model: str, data: str, *, image_size: int = 32, width_mult: float = 1.0,
              epochs: int | None = None, cache_dir: Path | None = None,
              progress: bool = True, model_args: tuple[str, ...] = (),
              weights: str | None = None, device: torch.device | None = None) -> Task:
    """The trained ``model`` on ``data``, from the baseline cache or trained now (images:
    ``epochs`` as :func:`~autoprune.zoo.train.load_or_train_baseline` takes them). A language
    model on images, or an image model on text, is one clear error. ``image_size`` and
    ``epochs`` do not apply to text (the decoder's context is fixed, 64 characters, and it
    trains until its validation loss stops improving). ``device``: where a baseline trains
    (the model returned is on the CPU)."""
    name, source = _check_pair(model, data)
    if is_factory(name):
        return _user_task(name, source, image_size=image_size, epochs=epochs,
                          cache_dir=cache_dir, progress=progress, model_args=model_args,
                          weights=weights, device=device)
    if source in TEXT_SOURCES:
        net, corpus, record = load_or_train_language_baseline(
            name, width_mult=width_mult, cache_dir=cache_dir, progress=progress, device=device)
        return Task(model=net, data=corpus, metric="loss", baseline=record)
    net, images, record = load_or_train_baseline(name, source, image_size=image_size,
                                                 width_mult=width_mult, epochs=epochs,
                                                 cache_dir=cache_dir, progress=progress,
                                                 device=device)
    return Task(model=net, data=images, metric="accuracy", baseline=record)


# What changes the input a user's model is given, where the example came from: the data (at
# --image-size) for a search or training; --input-shape too where it can be given (latency,
# profile), and it alone when it was.
_FIT_DATA = "--image-size or other --data"
_FIT_SHAPE = "--image-size, --input-shape or other --data"
_FIT_GIVEN_SHAPE = "--input-shape"


def _check_fits(model: nn.Module, example: torch.Tensor, classes: int | None, *,
                fix: str = _FIT_DATA) -> None:
    """Data whose shape does not fit the model is one error, before any work; ``fix`` names
    the options that change the input (those of the commands that reach here)."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.cat([example, example]))
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward
        said = (str(err).strip().splitlines() or [""])[0]
        raise UserModelError(f"the model cannot take inputs of shape {tuple(example.shape[1:])} "
                             f"(per sample): {type(err).__name__}: {said.rstrip('.')}. Fix: {fix}, or the "
                             "model (its factory, or --model-arg)") from None
    if classes is not None and (not isinstance(out, torch.Tensor) or out.shape != (2, classes)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserModelError(f"the model returns {shape} for a batch of 2, but the data has "
                             f"{classes} classes: it must return (batch, {classes}) logits")


def _user_task(factory: str, data: str, *, image_size: int, epochs: int | None,
               cache_dir: Path | None, progress: bool, model_args: tuple[str, ...],
               weights: str | None, device: torch.device | None = None) -> Task:
    """A user's model on image data: its weights, or a baseline trained here and cached
    (keyed by the factory's record and the data)."""
    images = load_data(data, image_size=image_size)
    net = build_user_model(factory, parse_model_args(model_args), Path(weights) if weights else None)
    _check_fits(net, images.example_inputs(1), images.num_classes)
    if weights:
        return Task(model=net, data=images, metric="accuracy",
                    baseline={"cached": False, "weights_path": net.autoprune_spec["weights"],
                              "epochs": None})
    spec = json.loads(json.dumps(net.autoprune_spec, default=str))  # as the sidecar holds it
    key = hashlib.sha256(json.dumps([spec, images.name, image_size],
                                    sort_keys=True).encode()).hexdigest()[:16]
    # images.name, not the --data text: an npz's path would put folders into the file name
    path = Path(cache_dir or default_cache_dir()) / f"user_{key}_{images.name}_{image_size}px.pt"
    recipe = FALLBACK_RECIPE

    def accept(record: dict[str, Any]) -> bool:
        return record.get("spec") == spec and (epochs is None or record.get("epochs") == epochs)

    record = read_cached_baseline(net, path, path.with_suffix(".json"), accept)
    if record is None:
        started = time.perf_counter()
        n = epochs or recipe.epochs
        with trained_on(net, device):
            metrics = train_model(net, images, epochs=n, lr=recipe.lr,
                                  batch_size=recipe.batch_size, progress=progress,
                                  optimizer=recipe.optimizer)
        record = write_baseline(net, path, {
            "spec": spec, "data": {"name": images.name, "image_size": image_size},
            "epochs": n, "recipe": {**asdict(recipe), "epochs": n}, "metrics": metrics,
            "train_seconds": time.perf_counter() - started, "torch_version": torch.__version__,
            "created_unix": time.time()})
        record = {**record, "cached": False}
    else:
        record = {**record, "cached": True}
    return Task(model=net.eval(), data=images, metric="accuracy",
                baseline={**record, "weights_path": str(path)})


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]
