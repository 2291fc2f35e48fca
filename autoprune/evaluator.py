"""The Evaluator contract: ``evaluator(model) -> {"accuracy": ..., "loss": ...}``.

The search loop is typed to :class:`Evaluator`; a user's plain callable is wrapped once by
:func:`as_evaluator`, so anything with that signature works wherever an evaluator is
expected. The built-in classification evaluator is ``autoprune.zoo.ClassificationEvaluator``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

from torch import nn

__all__ = ["Evaluator", "FunctionEvaluator", "as_evaluator"]


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
