"""Recovery of a chosen network: fine-tuning after pruning, on the training split only.

- :func:`recover` fine-tunes a pruned network for a number of optimizer steps (SGD with
  momentum, or AdamW for transformers; cosine decay), scores it with the run's own validation
  evaluator per epoch and at the end, and checkpoints so a killed recovery resumes exactly.
  ``distill=True`` adds knowledge distillation from the dense network (Hinton et al. 2015,
  "Distilling the Knowledge in a Neural Network"); ``gradual=True`` starts from the dense
  network and prunes it to the chosen widths on AGP's cubic schedule (Zhu & Gupta 2017, "To
  prune, or not to prune").
- :func:`recover_run` recovers a finished run folder's chosen network and rewrites best.json,
  pruned.pt, pruned.pt2 and summary.json (``autoprune recover``). A run recovered before is
  recovered further from its recovered weights (``--gradual`` starts from the dense
  baseline again); ``before_recovery`` always keeps the search's own figures.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from autoprune.export import save_program
from autoprune.reconstruct import reconstruct as reconstruct_layers
from autoprune.run import Run
from autoprune.run_folder import record_recovery, write_sparse
from autoprune.search_spaces import SearchSpace, make_space
from autoprune.zoo.data import DataSplits
from autoprune.zoo.evaluate import _FINETUNE_LR
from autoprune.zoo.text import TextSplits

__all__ = ["CHECKPOINT", "Recovery", "agp_schedule", "recover", "recover_run",
           "recovery_table"]

#: The checkpoint's file name in a run folder (removed once recovery finishes).
CHECKPOINT = "recover.ckpt"
_FORMAT = 1
#: AGP: how many pruning stages, over which share of the steps (then fine-tuning).
_STAGES = 4
_PRUNE_SHARE = 2 / 3
#: Evaluations spread over a recovery shorter than one epoch.
_EVALS_BELOW_EPOCH = 4
#: Re-tracing a partly pruned network: every width from 1 up must be a choice.
_RETRACE_MIN_RATIO = 1e-6


@dataclass(frozen=True, kw_only=True)
class Recovery:
    """A recovered network, its validation metrics before and after, and how it was made.

    ``history`` holds one entry per evaluation (``step``, ``epoch``: passes over the training
    split so far, ``metrics``, ``loss``: the mean training loss since the entry before,
    ``lr``, and with ``gradual`` the AGP ``stage`` reached and the ``widths`` then); evaluations fall every
    ``eval_every`` steps: each epoch (``eval_unit="epoch"``) or, when the recovery is
    shorter than one epoch, ``eval_unit="steps"``. ``stages``: AGP's pruning stages."""

    model: nn.Module = field(repr=False)
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, Any]]
    steps: int
    optimizer: str
    lr: float
    batch_size: int
    seed: int
    distill: bool
    gradual: bool
    temperature: float
    alpha: float
    eval_every: int
    eval_unit: str
    epoch_steps: int
    stages: list[dict[str, Any]] = field(default_factory=list)
    resumed_at: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Everything but the model, as JSON holds it."""
        return json.loads(json.dumps({f.name: getattr(self, f.name) for f in fields(self)
                                      if f.name != "model"}))


def agp_schedule(full: Mapping[str, int], final: Mapping[str, int], *, steps: int,
                 stages: int = _STAGES) -> list[tuple[int, dict[str, int]]]:
    """AGP's stages, ``[(step, widths), ...]``: unit ``u`` removes ``(full - final)`` channels
    times ``1 - (1 - k/stages)**3`` at stage ``k`` (the cubic schedule from dense), the stages
    evenly over the first two thirds of ``steps``; widths are integers, non-increasing, and
    the last stage's are exactly ``final``."""
    prune_until = math.ceil(_PRUNE_SHARE * steps)
    out = []
    for k in range(1, stages + 1):
        share = 1.0 - (1.0 - k / stages) ** 3
        widths = {u: int(round(full[u] - (full[u] - final[u]) * share)) for u in final}
        out.append((min(steps - 1, round(k * prune_until / stages)),
                    dict(final) if k == stages else widths))
    return out


class _Batches:
    """The training split's batches, a function of the step (images: a seeded permutation
    per epoch, the last short batch left out) or of a stored generator (text)."""

    def __init__(self, data: DataSplits | TextSplits, batch_size: int, seed: int) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.text = isinstance(data, TextSplits)
        if self.text:
            windows = (len(data.ids("train")) - 1) // data.block
            if windows < 1:
                raise ValueError("recovery needs the training split: this corpus's training "
                                 "split is shorter than one context window")
            self.epoch = max(1, windows // batch_size)
            self.generator = torch.Generator().manual_seed(seed)
        else:
            self.x, self.y = data.tensors("train")
            if len(self.x) == 0:
                raise ValueError("recovery needs the training split: the data's training "
                                 "split is empty")
            self.epoch = max(1, len(self.x) // batch_size)
            self._perm: tuple[int, torch.Tensor] | None = None

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text:
            return self.data.batch("train", batch_size=self.batch_size, generator=self.generator)
        epoch, b = divmod(step, self.epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = (epoch, torch.randperm(len(self.x), generator=g))
        idx = self._perm[1][b * self.batch_size:(b + 1) * self.batch_size]
        return self.x[idx], self.y[idx]

    def state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()} if self.text else {}

    def load(self, state: Mapping[str, Any]) -> None:
        if self.text:
            self.generator.set_state(state["generator"])


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def _loss(out: Any, y: torch.Tensor, teacher: Any, temperature: float,
          alpha: float) -> torch.Tensor:
    """Cross-entropy (next character for text); with a teacher, alpha T^2 KL(teacher ||
    student) at temperature T plus (1 - alpha) of it."""
    logits = _logits(out)
    if logits.dim() == 3:  # (batch, positions, vocabulary): every position predicts
        logits, y = logits.flatten(0, 1), y.flatten()
    ce = F.cross_entropy(logits, y)
    if teacher is None:
        return ce
    t = _logits(teacher)
    t = t.flatten(0, 1) if t.dim() == 3 else t
    kd = F.kl_div(F.log_softmax(logits / temperature, dim=-1),
                  F.log_softmax(t / temperature, dim=-1), log_target=True,
                  reduction="batchmean") * temperature ** 2
    return alpha * kd + (1.0 - alpha) * ce


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _optimizer(model: nn.Module, name: str, lr: float, *, start: int, steps: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer = (
        torch.optim.AdamW(params, lr=lr, weight_decay=0.0) if name == "adamw"
        else torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4))
    cosine = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * (start + i) / steps)))
    return opt, cosine


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _fingerprint(shapes: Mapping[str, list[int]]) -> str:
    return hashlib.sha256(json.dumps(sorted(shapes.items())).encode()).hexdigest()[:16]


def _prune_stage(model: nn.Module, space: SearchSpace, before: Mapping[str, int],
                 widths: Mapping[str, int]) -> nn.Module:
    """``model`` (at widths ``before``) pruned to ``widths``: re-traced as it is now, each
    unit keeping the channels the space's criterion ranks first (magnitude by default) in
    the current weights."""
    was_training = model.training
    traced = make_space(space.name, model.eval(), space.example_inputs, round_to=1,
                        min_ratio=_RETRACE_MIN_RATIO, output=getattr(space, "output", None),
                        criterion=getattr(space, "criterion", None))
    now = {u.name: u.full for u in traced.units}
    lost = [u for u in widths if u not in now and widths[u] != before[u]]
    moved = [u for u in widths if u in now and now[u] != before[u]]
    if lost or moved:
        raise RuntimeError(f"re-tracing the partly pruned network does not find the units "
                           f"of the search as they are (missing: {lost}, other widths: "
                           f"{moved}); recover without gradual")
    return traced.apply(model, {u: widths[u] for u in widths if u in now}).train(was_training)


def _save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    """Atomically: a kill never leaves half a checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(dict(payload), tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, options: Mapping[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        saved = torch.load(path, weights_only=True, map_location="cpu")
        saved_options = saved["options"]
    except Exception as err:  # noqa: BLE001 - any unreadable file is one error
        raise ValueError(f"{path} is not a readable recovery checkpoint ({type(err).__name__}: "
                         f"{err}); remove it to start over") from None
    if saved.get("format") != _FORMAT or saved_options != dict(options):
        diff = {k: (saved_options.get(k), v) for k, v in options.items()
                if saved_options.get(k) != v}
        raise ValueError(f"{path} holds a recovery with other options (saved vs now: {diff}); "
                         "remove it to start over, or recover with the options it was made "
                         "with")
    return saved


def recover(pruned: nn.Module, *, data: DataSplits | TextSplits | None, steps: int,
            evaluate: Callable[[nn.Module], Mapping[str, float]],
            dense: nn.Module | None = None, distill: bool = False, gradual: bool = False,
            space: SearchSpace | None = None, config: Mapping[str, int] | None = None,
            optimizer: str = "sgd", lr: float | None = None, batch_size: int = 64,
            seed: int = 0, checkpoint: str | Path | None = None, progress: bool = False,
            console: Console | None = None, temperature: float = 4.0,
            alpha: float = 0.5) -> Recovery:
    """Fine-tune ``pruned`` for ``steps`` optimizer steps on the training split of ``data``
    and return the recovered network (``pruned`` itself is left as it is).

    ``evaluate(model)`` is the run's validation scorer, called on a copy before, once per
    epoch (every ``steps // 4`` steps when ``steps`` is under an epoch) and at the end.
    ``optimizer``: ``sgd`` (momentum 0.9, lr 0.01) or ``adamw`` (lr 5e-4, what transformers
    were trained with); the rate decays on a cosine. ``distill``: the loss is
    ``alpha T^2 KL(softmax(dense/T) || softmax(student/T)) + (1 - alpha) CE`` with ``dense`` as
    the teacher (Hinton et al. 2015). ``gradual``: AGP (Zhu & Gupta 2017): start from
    ``dense`` and reach ``config`` of ``space`` (the search's channel space) in 4 stages on
    the cubic schedule over the first two thirds of the steps, then fine-tune. With
    ``checkpoint`` (a path) the state is saved at every evaluation and stage; a recovery
    with the same options resumes from it, one of other options is refused."""
    if steps < 1:
        raise ValueError(f"recovery needs steps >= 1, got {steps}")
    if data is None or not isinstance(data, (DataSplits, TextSplits)):
        raise ValueError("recovery needs the training split: pass data= the task's DataSplits "
                         "(images) or TextSplits (text), e.g. load_task(...).data")
    if distill and dense is None:
        raise ValueError("distill=True needs the teacher: pass dense= the dense (unpruned) "
                         "network")
    if gradual and (dense is None or space is None or config is None):
        raise ValueError("gradual=True starts from the dense network and prunes it to the "
                         "chosen widths: pass dense=, space= (the channel space the search "
                         "used) and config= (the chosen per-unit widths)")
    if optimizer not in _FINETUNE_LR:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose sgd or adamw")
    if batch_size < 1 or temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError("batch_size >= 1, temperature > 0 and 0 <= alpha <= 1, please")
    lr = _FINETUNE_LR[optimizer] if lr is None else float(lr)
    batches = _Batches(data, batch_size, seed)
    epoch = batches.epoch
    eval_every = epoch if steps >= epoch else max(1, steps // _EVALS_BELOW_EPOCH)
    schedule: list[tuple[int, dict[str, int]]] = []
    if gradual:
        assert space is not None and config is not None and dense is not None
        config = {**space.dense_config(), **config}
        target = _shapes(space.apply(dense, config))
        if _shapes(pruned) != target:
            raise ValueError("pruned does not have the shapes space.apply(dense, config) "
                             "gives: pass the chosen network with its config")
        schedule = agp_schedule(space.dense_config(), config, steps=steps)
    else:
        target = _shapes(pruned)
    options = {"steps": steps, "optimizer": optimizer, "lr": lr, "batch_size": batch_size,
               "seed": seed, "distill": distill, "gradual": gradual,
               "temperature": float(temperature), "alpha": float(alpha),
               "config": {k: int(v) for k, v in config.items()} if gradual and config else None,
               "architecture": _fingerprint(target)}
    path = Path(checkpoint) if checkpoint is not None else None
    saved = _load_checkpoint(path, options) if path is not None else None
    teacher = None
    if distill:
        assert dense is not None
        teacher = copy.deepcopy(dense).eval().requires_grad_(False)
    if saved is None:
        step, stage, stage_start, history, stages = 0, 0, 0, [], []
        before = dict(evaluate(copy.deepcopy(pruned)))
        widths = dict(space.dense_config()) if gradual else None
        model = copy.deepcopy(dense if gradual else pruned)
        opt, cosine = _optimizer(model, optimizer, lr, start=0, steps=steps)
        resumed_at = None
    else:
        step, stage, stage_start = saved["step"], saved["stage"], saved["stage_start"]
        history, stages, before = saved["history"], saved["stages"], saved["before"]
        widths = saved["widths"]
        model = (space.apply(dense, widths) if gradual else copy.deepcopy(pruned))
        model.load_state_dict(saved["state"])
        opt, cosine = _optimizer(model, optimizer, lr, start=stage_start, steps=steps)
        opt.load_state_dict(saved["optimizer"])
        cosine.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"]["torch"])
        batches.load(saved["rng"]["batches"])
        resumed_at = step

    def save() -> None:
        if path is not None:
            _save_checkpoint(path, {
                "format": _FORMAT, "options": options, "step": step, "stage": stage,
                "stage_start": stage_start, "widths": widths, "state": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": cosine.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "batches": batches.state()},
                "history": history, "stages": stages, "before": before})

    device = _device(model)
    bar = Progress(TextColumn("[bold]recover"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                   console=console or Console(stderr=True), disable=not progress)
    last = history[-1]["metrics"] if history else before
    task = bar.add_task("recover", total=steps, completed=step,
                        info=f"validation {_describe(last)}")
    losses: list[float] = []
    model.train()
    with bar:
        while step < steps:
            while stage < len(schedule) and schedule[stage][0] <= step:
                assert space is not None and widths is not None
                new = schedule[stage][1]
                model = _prune_stage(model, space, widths, new)
                widths, stage, stage_start = dict(new), stage + 1, step
                opt, cosine = _optimizer(model, optimizer, lr, start=step, steps=steps)
                stages.append({"step": step, "stage": stage, "widths": dict(widths)})
                save()
            x, y = batches.get(step)
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                soft = teacher(x) if teacher is not None else None
            loss = _loss(model(x), y, soft, temperature, alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if batches.text:
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            cosine.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % eval_every == 0 or step == steps:
                metrics = dict(evaluate(copy.deepcopy(model).eval()))
                model.train()
                entry: dict[str, Any] = {
                    "step": step, "epoch": round(step / epoch, 3), "metrics": metrics,
                    "loss": sum(losses) / len(losses), "lr": opt.param_groups[0]["lr"]}
                if gradual:
                    entry.update(stage=stage, widths=dict(widths or {}))
                history.append(entry)
                losses = []
                save()
            bar.update(task, completed=step,
                       info=f"loss {losses[-1] if losses else history[-1]['loss']:.3f}  "
                            f"validation {_describe(history[-1]['metrics'] if history else before)}")
    if _shapes(model) != target:
        raise RuntimeError("the recovered network does not have the chosen shapes; report this")
    return Recovery(model=model.eval(), before=before, after=history[-1]["metrics"],
                    history=history, steps=steps, optimizer=optimizer, lr=lr,
                    batch_size=batch_size, seed=seed, distill=distill, gradual=gradual,
                    temperature=float(temperature), alpha=float(alpha), eval_every=eval_every,
                    eval_unit="epoch" if eval_every == epoch else "steps", epoch_steps=epoch,
                    stages=stages, resumed_at=resumed_at)


def _describe(metrics: Mapping[str, float]) -> str:
    if "accuracy" in metrics:
        return f"accuracy {metrics['accuracy']:.4f}"
    return f"loss {metrics['loss']:.4f}" if "loss" in metrics else "-"


def recover_run(run_dir: str | Path, *, steps: int, distill: bool = False,
                gradual: bool = False, lr: float | None = None, seed: int = 0,
                reconstruct: bool = False, cache_dir: Path | None = None,
                progress: bool = True, console: Console | None = None,
                device: str | torch.device | None = None) -> dict[str, Any]:
    """Recover a finished run's chosen network (its best.json) and write it back: best.json
    with the recovered validation and test metrics, ``before_recovery`` and a ``recovery``
    block (steps, lr, distill, gradual, history); pruned.pt, pruned.pt2 and summary.json.

    Scored by the run's own evaluator (adaptive BN, validation split); test once, at the
    end. The teacher and AGP's start are the run's trained baseline. A killed recovery resumes
    from ``recover.ckpt`` in the run folder. A run recovered before is recovered further from
    its recovered weights (``gradual`` starts from the dense baseline again). ``reconstruct``
    first refits the layers that read pruned channels by least squares on 8 training-split
    batches (``autoprune.reconstruct``, no training); with ``steps=0`` that is all. ``device``
    (cpu, cuda, cuda:N, auto; default the CPU) is where it trains; the folder gets CPU
    weights."""
    if steps < 0 or (steps == 0 and not reconstruct):
        raise ValueError(f"--steps must be >= 1 (got {steps}); --steps 0 only with "
                         "--reconstruct, the training-free refit")
    if reconstruct and gradual:
        raise ValueError("--reconstruct refits the chosen network, while --gradual starts from "
                         "the dense one: use one of them")
    console = console or Console(stderr=True)
    run = Run.open(run_dir, cache_dir=cache_dir, device=device)
    run_dir, settings = run.folder, run.settings
    choice = run.choice()
    task = run.task  # refused if its baseline changed since the search
    evaluator = run.evaluator(finetune_steps=0)
    dense = run.model  # the search's precision
    example = run.example
    weights = settings.space.prunes_weights  # a weight-sparse run
    if weights and (gradual or reconstruct):
        raise ValueError(f"--{'gradual' if gradual else 'reconstruct'} works on channels; a "
                         "weight-sparse run recovers by fine-tuning with its zeros masked "
                         "(plain, or --distill)")
    space = run.space if gradual or weights else None
    pruned = run.network()
    if space is not None:  # weight-sparse: its zeros stay zero while it trains
        pruned = space.trainable(pruned)
    text = isinstance(task.data, TextSplits)
    optimizer = "adamw" if text else str((task.baseline.get("recipe") or {}).get("optimizer",
                                                                                  "sgd"))
    again = "recovery" in choice
    if again:
        console.print(
            f"[yellow]note:[/] {run_dir / 'best.json'} holds a network recovered before "
            f"({choice['recovery'].get('steps')} steps): "
            + ("gradual recovery starts from the dense baseline again; the earlier one is kept "
               "under recovery.previous" if gradual else
               "recovering it further, from its recovered weights"), highlight=False)
    ckpt = run_dir / CHECKPOINT
    refit = None
    if reconstruct and not ckpt.exists():  # a resumed recovery refitted before it trained
        batches = [x for x, _ in task.calibration_batches(8, seed=settings.seed)]
        refit = reconstruct_layers(pruned, dense, batches)
        console.print(
            f"least-squares refit (no training) of {len(refit.refitted)} layers that read pruned "
            f"channels: output error against the dense network on the calibration batches "
            f"{refit.output_error_before:.3f} -> {refit.output_error_after:.3f}", highlight=False)
    if ckpt.exists():
        console.print(f"resuming the recovery in {ckpt}", highlight=False)
    if steps:
        rec = recover(pruned, data=task.data, steps=steps, evaluate=evaluator, dense=dense,
                      distill=distill, gradual=gradual, space=space,
                      config=choice["config"] if gradual else None, optimizer=optimizer, lr=lr,
                      batch_size=32 if text else 64, seed=seed, checkpoint=ckpt,
                      progress=progress, console=console)
        model, block = rec.model, rec.as_dict()
        if space is not None:  # the masks baked in again, as the search saved it
            model = space.deployable(model)
            if weights:
                write_sparse(run_dir, model, space.layer_table(choice["config"]),
                             storage_format=settings.space.storage_format)
    else:
        model, block = pruned, {"steps": 0, "history": [], "eval_every": 0, "eval_unit": "none",
                                "lr": 0.0, "distill": False, "gradual": False}
    val = dict(evaluator(model))  # adaptive BN in place, as the search's choice was saved
    test = dict(evaluator.test(model))
    program = save_program(model, example, run_dir / "pruned.pt2", console)
    block = {**block, "from": "search" if gradual or not again else "recovered",
             **({"reconstruction": refit.as_dict()} if refit is not None else {})}
    written = record_recovery(run_dir, val=val, test=test, recovery=block, weights=model,
                              files={"program": program})
    ckpt.unlink(missing_ok=True)
    files = [str(run_dir / n) for n in ("best.json", written.get("weights", "pruned.pt"))]
    files += [program] if program else []
    files += [str(run_dir / "summary.json")] if (run_dir / "summary.json").exists() else []
    result = {"run_dir": str(run_dir), "again": again, "before": written["before_recovery"],
              "after": written["metrics"], "recovery": written["recovery"], "files": files}
    console.print(recovery_table(result))
    metric = "accuracy" if "accuracy" in val else "loss"
    b, a = written["before_recovery"], written["metrics"]
    how = (f"{steps} steps ({'gradual (AGP) from dense, ' if gradual else ''}"
           f"{'distilled, ' if distill else ''}{optimizer} lr {block['lr']:g}, validation every "
           f"{block['eval_every']} steps{' (an epoch)' if block['eval_unit'] == 'epoch' else ''}"
           f"{', after a least-squares refit' if refit else ''})" if steps
           else "by the least-squares refit alone, no training")
    console.print(
        f"recovered {how}: "
        f"validation {metric} {b.get('val_' + metric, float('nan')):.4f} -> "
        f"{a['val_' + metric]:.4f}, test {metric} {b.get('test_' + metric, float('nan')):.4f} "
        f"-> {a['test_' + metric]:.4f} (test scored once, at the end)\n"
        f"wrote {', '.join(files)}", highlight=False)
    return result


def recovery_table(result: Mapping[str, Any]) -> Table:
    """Before -> after: validation per evaluation, and test at the end (``recover_run``'s
    result)."""
    before, after, block = result["before"], result["after"], result["recovery"]
    names = [k.removeprefix("val_") for k in after if k.startswith("val_")]
    table = Table(title=f"recovery: {block['steps']} steps, validation every "
                        f"{block['eval_every']} steps ({block['eval_unit']})")
    for col in ("", "step", "epoch", "train loss", *(f"val {n}" for n in names),
                *(f"test {n}" for n in names)):
        table.add_column(col, justify="left" if not col else "right")

    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, (int, float)) else "-"

    table.add_row("before", "0", "0", "-", *(fmt(before.get(f"val_{n}")) for n in names),
                  *(fmt(before.get(f"test_{n}")) for n in names))
    for e in block["history"]:
        table.add_row(f"stage {e['stage']}" if "stage" in e else "", str(e["step"]), f"{e['epoch']:g}",
                      fmt(e["loss"]), *(fmt(e["metrics"].get(n)) for n in names),
                      *("" for _ in names))
    table.add_row("after", str(block["steps"]), "", "", *(fmt(after.get(f"val_{n}")) for n in names),
                  *(fmt(after.get(f"test_{n}")) for n in names))
    return table
