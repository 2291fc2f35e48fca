"""NVIDIA ModelOpt's FastNAS on a league task: the optional peer row of ``benchmarks/agents.py``.

FastNAS (``mtp.prune(model, "fastnas", constraints={"flops": "50%"}, ...)``) sorts each width's
channels by the norm of their consumers' weights, measures a sensitivity curve for every
prunable width (each pruned alone at 20 ratios, 0.05 to 1), and bisects one degradation
threshold across the curves to meet the constraint. It runs here on the league's model, budget
and channel step (``channel_divisor`` / ``feature_divisor`` = the league's ``round_to``), with the
league's own evaluator as its ``score_func`` (each call on a copy: the evaluator recalibrates
BatchNorm), and the league's calibration batches as its ``data_loader``. Every call of the
score function counts as one evaluation.

ModelOpt is a peer we measure, never a dependency: ``bash scripts/setup-modelopt.sh`` makes
``.venv-modelopt`` (autoprune, ``nvidia-modelopt`` 0.47 and ``torchprofile`` 0.0.4 without its
torchvision dependency); run the league with that interpreter and ``--fastnas``.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from autoprune.search_spaces.reference import reference_macs

__all__ = ["available", "fastnas_constraints", "fastnas_row", "run_fastnas"]

#: ModelOpt's layer types and the name of their width step in FastNAS's rules.
_DIVISORS = {**{f"nn.{k}": "channel_divisor" for k in (
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "GroupNorm")}, **{f"nn.{k}": "feature_divisor" for k in (
    "Linear", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "LayerNorm")}}


def available() -> bool:
    """Whether ModelOpt can be imported here (``scripts/setup-modelopt.sh``)."""
    return importlib.util.find_spec("modelopt") is not None


def fastnas_constraints(target: str) -> dict[str, str] | None:
    """FastNAS's constraint for a league target (``flops=50%``, ``params=40%``); ``None`` for a
    budget it cannot take (latency)."""
    metric, _, value = target.partition("=")
    names = {"flops": "flops", "macs": "flops", "params": "params"}
    if metric.strip() not in names or not value.strip().endswith("%"):
        return None
    return {names[metric.strip()]: value.strip()}


def run_fastnas(model: nn.Module, example: torch.Tensor, *, target: str, round_to: int,
                score: Callable[[nn.Module], float],
                batches: Sequence[tuple[torch.Tensor, Any]]) -> Mapping[str, Any]:
    """FastNAS on a copy of ``model`` for ``target``; ``score`` (higher is better) is its score
    function. Returns the pruned network, the evaluations it spent and its wall time."""
    import modelopt.torch.prune as mtp  # noqa: PLC0415 - optional, only for this row

    constraints = fastnas_constraints(target)
    if constraints is None:
        raise ValueError(f"FastNAS takes flops= or params= budgets in percent, not {target!r}")
    calls = 0

    def score_func(net: nn.Module) -> float:
        nonlocal calls
        calls += 1
        return float(score(copy.deepcopy(net)))

    rules = {layer: {"*": {key: round_to}} for layer, key in _DIVISORS.items()}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned, _ = mtp.prune(
            copy.deepcopy(model), mode=[("fastnas", rules)], constraints=constraints,
            dummy_input=example,
            config={"data_loader": list(batches), "collect_func": lambda batch: batch[0],
                    "score_func": score_func, "checkpoint": str(Path(tmp) / "search.pth"),
                    "verbose": False})
    return {"model": pruned, "evaluations": calls, "wall_s": time.perf_counter() - start}


def fastnas_row(model: nn.Module, example: torch.Tensor, *, target: str, round_to: int,
                metric: str, evaluator: Any, batches: Sequence[tuple[torch.Tensor, Any]],
                network_scores: Callable[[Callable[[], nn.Module]], Mapping[str, float]],
                dense_macs: float, console: Console, name: str) -> dict[str, Any]:
    """FastNAS's run as a row of the league: scored by the league's ``evaluator`` and its
    ``network_scores`` (test split, the same fine-tune), with its evaluations and widths."""
    sign = -1.0 if metric == "loss" else 1.0
    out = run_fastnas(model, example, target=target, round_to=round_to,
                      score=lambda net: sign * evaluator(net)[metric], batches=batches)
    net = out["model"]
    val = evaluator(copy.deepcopy(net))[metric]
    scores = network_scores(lambda: copy.deepcopy(net))
    macs = reference_macs(net, (example,))
    console.print(f"  {name:14s}: best val {val:.4f}, fine-tuned {scores['ft_val']:.4f} "
                  f"({out['evaluations']} evaluations, {out['wall_s']:.0f}s)", highlight=False)
    return {"seed": 0, "trials": out["evaluations"], "best_val": val,
            "best_test": scores["test"], "ft_val": scores["ft_val"], "ft_test": scores["ft_test"],
            "ft_vals": scores.get("ft_vals"), "ft_tests": scores.get("ft_tests"),
            "best_costs": {"macs": float(macs)}, "best_macs_fraction": macs / dense_macs,
            "curve": [], "wall_s": out["wall_s"], "overhead_ms": 0.0, "best_config": {},
            "widths": {n: list(m.weight.shape) for n, m in net.named_modules()
                       if isinstance(m, (nn.Linear, nn.Conv2d))}}
