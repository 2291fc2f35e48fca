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

__all__ = ["BatchesEvaluator", "Evaluator", "FunctionEvaluator", "as_evaluator"]


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
        return self.fn(model)


def as_evaluator(evaluate: Evaluator | Callable[[nn.Module], Mapping[str, float]]) -> Evaluator:
    """``evaluate`` as an :class:`Evaluator`; refuses what cannot score a model."""
    if isinstance(evaluate, Evaluator):
        return evaluate
    if not callable(evaluate):
        raise TypeError("evaluate must be a callable model -> {'accuracy': ...} or {'loss': ...}")
    return FunctionEvaluator(evaluate)


class BatchesEvaluator(Evaluator):
    """A user's metric ``fn(model, batches) -> {"accuracy": ...} or {"loss": ...}`` over the
    validation split's ``(inputs, targets)`` batches, after the built-in evaluator's
    preparation (adaptive BatchNorm, the optional fine-tune); ``test(model)`` runs it over
    the test split's batches, for the final report."""

    def __init__(self, fn: Callable[[nn.Module, Iterable[Any]], Mapping[str, float]],
                 base: Any, val: Sequence[Any], test: Sequence[Any], name: str) -> None:
        self.fn, self.base, self.name = fn, base, name
        self._val, self._test = list(val), list(test)

    def _score(self, model: nn.Module, batches: Sequence[Any]) -> dict[str, float]:
        out = self.fn(model.eval(), iter(batches))
        if not isinstance(out, Mapping) or not ({"accuracy", "loss"} & set(out)):
            raise TypeError(f"the evaluator {self.name} returned {out!r}; it must return a dict "
                            "with 'accuracy' (higher is better) or 'loss' (lower is better)")
        return {str(k): float(v) for k, v in out.items()}

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return self._score(self.base.prepare(model), self._val)

    def test(self, model: nn.Module, *, prepared: bool = True) -> dict[str, float]:
        return self._score(model if prepared else self.base.prepare(model), self._test)
