"""A run's search space from its settings: which granularity, criterion and budgets go
together (checked before any work), and the options ``make_space`` takes for them (a
data-driven criterion's calibration batches from the training split)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autoprune.errors import SearchError
from autoprune.search_spaces import (CRITERIA, SPACES, Criterion, criterion_names,
                                     make_criterion)
from autoprune.search_spaces.weight_masks import CRITERIA_NEEDING_DATA, WEIGHT_CRITERIA
from autoprune.settings import SPACE_KINDS, SpaceSettings
from autoprune.targets import Target
from autoprune.zoo.tasks import Task

__all__ = ["CHANNEL_SPACES", "check_space", "check_space_targets", "criterion_options",
           "space_options"]

#: Granularities that prune channels: a channel criterion ranks them, and a latency budget
#: steers them.
CHANNEL_SPACES = tuple(name for name, kinds in SPACE_KINDS.items() if "channels" in kinds)


def check_space(space: SpaceSettings, targets: Sequence[Target]) -> None:
    """A known granularity, a criterion of its kind, and budgets it can meet."""
    if space.space not in SPACES:
        raise SearchError(f"unknown granularity {space.space!r}; choose one of "
                          f"{', '.join(sorted(SPACES))}")
    names = criterion_names() if space.space in CHANNEL_SPACES else list(WEIGHT_CRITERIA)
    if space.criterion not in names:
        raise SearchError(f"unknown criterion {space.criterion!r} for --granularity "
                          f"{space.space}; available: {', '.join(names)}")
    check_space_targets(space.space, targets)


def check_space_targets(space: str, targets: Sequence[Target]) -> None:
    """A latency budget on a weight-sparsity space is refused, with the reason, and so are
    sparsity= and size= budgets on channels; channel+unstructured takes every budget (latency
    and flops= steer its channels, sparsity= and size= its weights)."""
    if "weights" not in SPACE_KINDS.get(space, frozenset()) \
            and any(t.metric in ("weights", "size_bytes") for t in targets):
        raise SearchError("sparsity= and size= budget single weights: use --granularity "
                          "unstructured or nm (or channel+unstructured, both in one search)")
    if space not in CHANNEL_SPACES and any(t.metric == "latency_ms" for t in targets):
        raise SearchError(
            f"a latency budget cannot steer --granularity {space}: this CPU's dense kernels "
            "(eager torch, onnxruntime) run a weight tensor with scattered zeros exactly as fast "
            "as a dense one, and no current CPU runtime turns unstructured or N:M sparsity into "
            "speed. Budget flops=, params=, sparsity= or size= instead, or prune channels "
            "(--granularity channel) for latency")


def criterion_options(space: str, criterion: str | Criterion,
                      calibration: Sequence[tuple[Any, Any]] | None) -> dict[str, Any]:
    """``make_space``'s criterion options from a name (or a channel criterion already made):
    none for the channel default, l2; a weight space takes its criterion by name (the default,
    l2, meaning magnitude there), with its data. channel+unstructured takes a channel
    criterion (its weights are chosen by magnitude)."""
    if space not in CHANNEL_SPACES:
        name = "magnitude" if criterion == "l2" else criterion
        return {"criterion": name, **({"calibration": calibration} if calibration else {})}
    try:
        ranks = make_criterion(criterion, calibration=calibration) \
            if isinstance(criterion, str) else criterion
    except ValueError as err:
        raise SearchError(str(err)) from None
    return {} if ranks.name == "l2" else {"criterion": ranks}


def space_options(space: SpaceSettings, task: Task, *, seed: int = 0) -> dict[str, Any]:
    """``make_space``'s options for a run's space settings: the space's own (levels, N:M
    patterns, ends) and its criterion. A data-driven criterion ranks on
    ``space.criterion_batches`` seeded batches of the task's training split."""
    name = space.criterion
    needs = name in CRITERIA_NEEDING_DATA if space.space not in CHANNEL_SPACES \
        else name != "l2" and CRITERIA[name].needs_data
    data = task.calibration_batches(space.criterion_batches, seed=seed) if needs else None
    return {**space.options(), **criterion_options(space.space, name, data)}
