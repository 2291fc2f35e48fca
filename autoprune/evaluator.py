"""The Evaluator contract: ``evaluator(model) -> {"accuracy": ..., "loss": ...}``.

The search loop is typed to :class:`Evaluator`; a user's plain callable is wrapped once by
:func:`as_evaluator`, so anything with that signature works wherever an evaluator is
expected. The built-in classification evaluator is ``autoprune.zoo.ClassificationEvaluator``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from autoprune.errors import SearchError
from autoprune.placement import model_device, to_device

__all__ = ["BatchesEvaluator", "Evaluator", "FunctionEvaluator", "as_evaluator",
           "checked_metrics"]

_CONTRACT = ("it must return a dict such as {'accuracy': 0.93} (higher is better) or "
             "{'loss': 1.21} (lower is better), other entries optional")


def checked_metrics(out: Any, name: str = "evaluate") -> dict[str, float]:
    """``out`` as the metrics dict the search reads, or one ``SearchError`` naming the fix:
    not a dict, no ``accuracy`` or ``loss`` in it, or a value that is not a number."""
    if not isinstance(out, Mapping):
        shown = repr(out)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        fix = (" Fix: return {'accuracy': value} (or {'loss': value})"
               if isinstance(out, (int, float)) else "")
        raise SearchError(f"{name} returned {type(out).__name__} {shown}; {_CONTRACT}.{fix}")
    if not ({"accuracy", "loss"} & set(out)):
        keys = ", ".join(repr(k) for k in list(out)[:6]) or "none"
        raise SearchError(f"{name} returned the keys {keys} but neither 'accuracy' nor 'loss': "
                          f"{_CONTRACT}. Fix: name the score the search should optimise "
                          "'accuracy' (or 'loss')")
    metrics: dict[str, float] = {}
    for key, value in out.items():
        try:
            metrics[str(key)] = float(value)
        except (TypeError, ValueError):
            raise SearchError(f"{name} returned {key!r}: {value!r}, not a number; {_CONTRACT} "
                              "(a tensor: call .item() on it)") from None
    return metrics


class Evaluator(ABC):
    """Scores a pruned network: a dict with at least ``accuracy`` or ``loss``."""

    @abstractmethod
    def __call__(self, model: nn.Module) -> Mapping[str, float]:
        """Score ``model`` (which the evaluator may modify: it is a throw-away copy)."""


class FunctionEvaluator(Evaluator):
    """A plain callable ``model -> metrics`` as an :class:`Evaluator`."""

    def __init__(self, fn: Callable[[nn.Module], Mapping[str, float]]) -> None:
        self.fn = fn

    def __call__(self, model: nn.Module) -> Mapping[str, float]:
        return checked_metrics(self.fn(model), getattr(self.fn, "__name__", "evaluate"))


def as_evaluator(evaluate: Evaluator | Callable[[nn.Module], Mapping[str, float]]) -> Evaluator:
    """``evaluate`` as an :class:`Evaluator`; refuses what cannot score a model."""
    if isinstance(evaluate, Evaluator):
        return evaluate
    if not callable(evaluate):
        raise TypeError("evaluate must be a callable model -> {'accuracy': ...} or {'loss': ...}")
    return FunctionEvaluator(evaluate)


class BatchesEvaluator(Evaluator):
    """A user's metric ``fn(model, batches) -> {"accuracy": ...} or {"loss": ...}`` over the
    validation split's ``(inputs, targets)`` batches (on the network's device), after the built-in evaluator's
    preparation (adaptive BatchNorm, the optional fine-tune); ``test(model)`` runs it over
    the test split's batches, for the final report."""

    def __init__(self, fn: Callable[[nn.Module, Iterable[Any]], Mapping[str, float]],
                 base: Any, val: Sequence[Any], test: Sequence[Any], name: str) -> None:
        self.fn, self.base, self.name = fn, base, name
        self._val, self._test = list(val), list(test)
        self._placed: dict[tuple[int, Any], list[Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_placed": {}}  # what sat on a GPU is placed again there

    def _score(self, model: nn.Module, batches: Sequence[Any]) -> dict[str, float]:
        device = model_device(model)
        if device.type != "cpu":  # the batches go where the network is, once per device
            key = (id(batches), device)
            if key not in self._placed:
                self._placed[key] = to_device(list(batches), device)
            batches = self._placed[key]
        return checked_metrics(self.fn(model.eval(), iter(batches)), f"the evaluator {self.name}")

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return self._score(self.base.prepare(model), self._val)

    def test(self, model: nn.Module, *, prepared: bool = True) -> dict[str, float]:
        return self._score(model if prepared else self.base.prepare(model), self._test)
