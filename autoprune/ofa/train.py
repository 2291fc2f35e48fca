"""Training an elastic-width supernet (``autoprune ofa train``), with checkpoints that resume.

Starting point: the cached trained baseline of a zoo model (``autoprune.zoo.train``), its channels
sorted by importance (``autoprune.ofa.sort_channels``). Every step follows the *sandwich rule*
(Yu & Huang, "Universally Slimmable Networks and Improved Training Techniques", ICCV 2019):
the largest network, the smallest and ``random_widths`` random ones are run on the same batch
and their gradients accumulated before one optimizer step — the largest and smallest bound
the performance of all others, so training both every step lifts the whole range. The largest
learns from the labels; every other width from the largest's soft predictions (*in-place
distillation*, the same paper; OFA's knowledge distillation from the full network), which
transfers the dense network's knowledge at no extra cost.

Checkpoints (``checkpoint.pt``: model and optimizer state dicts, loaded with
``weights_only=True``; progress in ``supernet.json``) are written every ``checkpoint_every``
steps. Every random draw of a step is seeded by ``(seed, step)``, so a resumed run continues
exactly as the uninterrupted one would. After training, ``samples`` random sub-networks are
extracted (by masking, which equals slicing), BN-recalibrated and scored on the validation
split: the training set of the accuracy predictor (``autoprune.ofa.search``), saved as JSON.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from autoprune.placement import cpu_state, model_device, resolve_device, trained_on
from autoprune.zoo.data import DataSplits
from autoprune.zoo.evaluate import adaptive_bn
from autoprune.ofa.elastic import (SUPERNET_FORMAT, ElasticNet, SupernetError, WidthMasks,
                                   check_masking, sample_config, sort_channels)
from autoprune.ofa.predictor import predictor_quality
from autoprune.search_spaces import ChannelSpace
from autoprune.zoo.data import is_data_path
from autoprune.zoo.tasks import load_task
from autoprune.zoo.train import evaluate_accuracy, random_shift

__all__ = ["SupernetSettings", "score_configs", "train_supernet"]


@dataclass(frozen=True, kw_only=True)
class SupernetSettings:
    """Everything ``autoprune ofa train`` takes. Fields up to ``samples`` define the supernet:
    a folder refuses to resume with different values for them."""

    # a zoo name, or a user's factory (path/to/file.py:fn or package.module:fn) with its
    # keyword arguments (name=value) and weights (a trained baseline is made when absent)
    model: str = "resnet20"
    data: str = "digits"  # digits, an .npz, or an image folder
    model_args: tuple[str, ...] = ()
    weights: str | None = None
    image_size: int = 32
    width_mult: float = 1.0
    round_to: int = 8
    min_ratio: float = 0.2
    epochs: int = 10
    batch_size: int = 64
    # The baseline recipe's rate and decay (autoprune.zoo.train). On the 16px ResNet-20 supernet
    # (10 epochs) they beat lr 0.02 / decay 5e-5: test accuracy of the largest 98.6% vs 97.8%,
    # the smallest 97.8% vs 97.5%, predictor Spearman 0.77 vs 0.67.
    lr: float = 0.05
    weight_decay: float = 5e-4
    random_widths: int = 2
    seed: int = 0
    calib_batches: int = 8
    samples: int = 100
    output: Path = Path("supernet")
    checkpoint_every: int = 25
    cache_dir: Path | None = None
    progress: bool = True
    # Where it trains and scores (cpu, cuda, cuda:N, auto); not part of what it is.
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.samples < 10:
            raise SupernetError(f"samples must be at least 10 (the predictor is fitted on them "
                                f"and checked on a held-out quarter), got {self.samples}")
        if self.epochs < 1 or self.random_widths < 0 or self.calib_batches < 1:
            raise SupernetError("epochs and calib_batches must be >= 1, random_widths >= 0")

    def identity(self) -> dict[str, Any]:
        """The fields that define the supernet; a user model's arguments and weights only when
        given (folders of zoo models written before they existed stay resumable), and a path
        of data made absolute."""
        d = asdict(self)
        keys = list(d)[: list(d).index("samples") + 1]
        out = {k: d[k] for k in keys if not (k == "model_args" and not d[k])
               and not (k == "weights" and d[k] is None)}
        if is_data_path(self.data):
            out["data"] = str(Path(self.data).expanduser().resolve())
        return out


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def _save_tensors(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _lr_factor(step: int, total: int) -> float:
    """Short linear warm-up then cosine decay: the network starts trained, but the first
    sandwich steps move it toward the thin widths and large steps there would undo it."""
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _batch(data: DataSplits, step: int, steps_per_epoch: int, batch_size: int, seed: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's batch: epoch order and augmentation seeded by (seed, epoch / step)."""
    epoch, k = divmod(step, steps_per_epoch)
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(
        seed * 100_003 + epoch))
    index = order[k * batch_size:(k + 1) * batch_size]
    if len(index) < 2:  # a one-sample batch gives BatchNorm no variance
        index = order[:batch_size]
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    shift = max(1, round(data.image_size / 16))
    return random_shift(data.train_x[index], shift, gen), data.train_y[index]


def _identity(settings: SupernetSettings, model: nn.Module | None,
              data: DataSplits | None) -> dict[str, Any]:
    """What a folder must match to be resumed: the settings, with a module or data passed to
    the API named by its class and its data's name (which holds a file's hash)."""
    want = json.loads(json.dumps(settings.identity(), default=str))
    if model is not None:
        want["model"] = getattr(model, "autoprune_spec", {}).get("factory") or (
            f"module:{type(model).__module__}.{type(model).__qualname__}")
    if data is not None:
        want["data"] = data.name
    return want


def _check_folder(out: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    path = out / "supernet.json"
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise SupernetError(f"{out} exists and is not a supernet folder; choose an empty or "
                                "new folder with -o")
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SupernetError(f"{path} is corrupt ({err}); remove {out} or choose another -o") from None
    saved = meta.get("settings", {})
    if saved != want:
        diff = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
        raise SupernetError(f"{out} holds a different supernet (saved vs now: {diff}); resume "
                            "it with the same options or choose another -o")
    return meta


def _start(settings: SupernetSettings, model: nn.Module | None, data: DataSplits | None
           ) -> tuple[nn.Module, DataSplits, dict[str, Any]]:
    """The trained dense network, its data and its baseline record: the API's own module and
    data as given, or a zoo model's / a user factory's, from the cache or trained now."""
    if data is None and model is None:
        task = load_task(settings.model, settings.data, image_size=settings.image_size,
                         width_mult=settings.width_mult, cache_dir=settings.cache_dir,
                         progress=settings.progress, model_args=settings.model_args,
                         weights=settings.weights)
        if task.metric != "accuracy":
            raise SupernetError(f"once-for-all trains image classifiers; {settings.model} on "
                                f"{settings.data} is a language model. Fix: autoprune search "
                                "prunes it")
        return task.model, task.data, task.baseline  # type: ignore[return-value]
    if data is None:
        from autoprune.zoo.data import load_data

        data = load_data(settings.data, image_size=settings.image_size)
    if model is None:
        raise SupernetError("Supernet.train(data=...) needs the trained model too (model=)")
    if not isinstance(data, DataSplits):
        raise SupernetError(f"data must be a DataSplits or a --data name, not {type(data).__name__}")
    return copy.deepcopy(model).eval(), data, {"cached": False, "given": True}


def train_supernet(settings: SupernetSettings, *, model: nn.Module | None = None,
                   data: DataSplits | None = None, until_step: int | None = None,
                   console: Console | None = None) -> dict[str, Any]:
    """Train (or resume) the supernet into ``settings.output``, then score the predictor's
    sample sub-networks; returns the summary also saved in ``supernet.json``.

    ``model`` (a trained ``nn.Module``, never modified) and ``data`` (``DataSplits``) replace
    ``settings.model`` and ``settings.data``; a folder trained from them is loaded again with
    ``ElasticNet.load(path, model=..., data=...)`` unless the module came from
    ``autoprune.user_model.build_user_model`` (its record rebuilds it). ``until_step`` stops
    training after that many steps (a checkpoint is written), to split a long training over
    several sessions; calling again resumes.
    """
    console = console or Console(stderr=True)
    out = Path(settings.output)
    want = _identity(settings, model, data)
    meta = _check_folder(out, want)
    place = resolve_device(settings.device)  # a missing GPU fails before any work
    data_from_api = data is not None
    model, data, baseline = _start(settings, model, data)
    out.mkdir(parents=True, exist_ok=True)
    example = data.example_inputs(1)
    space = ChannelSpace.from_model(model, example, round_to=settings.round_to,
                                    min_ratio=settings.min_ratio)
    steps_per_epoch = max(1, math.ceil(len(data.train_x) / settings.batch_size))
    total = settings.epochs * steps_per_epoch
    if meta is None:
        dense_val, _ = evaluate_accuracy(model, data.val_x, data.val_y)
        sort_channels(model, space)
        check_masking(model, space, seed=settings.seed)
        spec = getattr(model, "autoprune_spec", None)
        meta = {"format": SUPERNET_FORMAT, "settings": want,
                "model_spec": json.loads(json.dumps(dict(spec), default=str)) if spec else
                {"module": want["model"].removeprefix("module:")},
                "data": want["data"], "data_name": data.name, "data_from_api": data_from_api,
                "data_about": json.loads(json.dumps(data.about, default=str)),
                "image_size": data.image_size, "example_input_shape": list(example.shape),
                "round_to": settings.round_to, "min_ratio": settings.min_ratio,
                "calib_batches": settings.calib_batches, "seed": settings.seed,
                "units": space.describe(),
                "baseline": {"val_accuracy": dense_val, "cached": bool(baseline.get("cached")),
                             "test_accuracy": baseline.get("metrics", {}).get("test_accuracy")},
                "training": {"step": 0, "total_steps": total, "steps_per_epoch": steps_per_epoch,
                             "subnets_per_step": 2 + settings.random_widths, "seconds": 0.0,
                             "done": False, "losses": []}}
        _save_tensors(out / "checkpoint.pt", {"model": model.state_dict(), "optimizer": {},
                                              "step": torch.tensor(0)})
        _write_json(out / "supernet.json", meta)
    if not meta["training"]["done"]:
        with trained_on(model, place):
            _train(model, space, data, settings, meta, out, until_step, console)
        if not meta["training"]["done"]:
            return _summary(out, meta)
    supernet = ElasticNet.load(out, data=data, model=model, device=place)
    _sample(supernet, settings, meta, out, console)
    return _summary(out, meta)


def _train(model: nn.Module, space: ChannelSpace, data: DataSplits, settings: SupernetSettings,
           meta: dict[str, Any], out: Path, until_step: int | None, console: Console) -> None:
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True, map_location="cpu")
    model.load_state_dict(ckpt["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, nesterov=True,
                                weight_decay=settings.weight_decay)
    if ckpt["optimizer"]:
        optimizer.load_state_dict(ckpt["optimizer"])
    train = meta["training"]
    step, total = int(train["step"]), int(train["total_steps"])
    stop = total if until_step is None else min(total, max(step, until_step))
    masks = WidthMasks(model, space)
    where = model_device(model)
    smallest = space.min_config()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                   disable=not settings.progress)
    started, losses = time.perf_counter(), []
    model.train()
    try:
        with bar:
            task = bar.add_task("supernet (sandwich)", total=total, completed=step)
            while step < stop:
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr * _lr_factor(step, total)
                x, y = _batch(data, step, train["steps_per_epoch"], settings.batch_size,
                              settings.seed)
                x, y = x.to(where), y.to(where)
                rng = np.random.default_rng([settings.seed, step])
                optimizer.zero_grad(set_to_none=True)
                masks.set(None)
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                loss.backward()
                soft = F.softmax(logits.detach(), dim=1)
                widths = [smallest] + [sample_config(space, rng)
                                       for _ in range(settings.random_widths)]
                kd_total = 0.0
                for config in widths:
                    masks.set(config)
                    # In-place distillation: KL to the largest network's soft predictions.
                    kd = F.kl_div(F.log_softmax(model(x), dim=1), soft, reduction="batchmean")
                    kd.backward()
                    kd_total += float(kd.detach())
                optimizer.step()
                step += 1
                losses.append((float(loss.detach()), kd_total / len(widths)))
                if not all(math.isfinite(v) for v in losses[-1]):
                    raise SupernetError(f"supernet training diverged at step {step} (loss "
                                       f"{losses[-1]}); lower --lr (now {settings.lr})")
                bar.update(task, completed=step, description=(
                    f"supernet (sandwich) CE {losses[-1][0]:.3f} KD {losses[-1][1]:.3f}"))
                if step % settings.checkpoint_every == 0 or step == stop:
                    _checkpoint(model, optimizer, step, meta, out, losses,
                                time.perf_counter() - started)
                    started, losses = time.perf_counter(), []
    finally:
        masks.remove()
        model.eval()
    if step >= total:
        _save_tensors(out / "supernet.pt", cpu_state(model))
        meta["training"]["done"] = True
        _write_json(out / "supernet.json", meta)
        (out / "checkpoint.pt").unlink(missing_ok=True)


def _checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                meta: dict[str, Any], out: Path, losses: list[tuple[float, float]],
                seconds: float) -> None:
    # Weights first, progress last: supernet.json never points past the saved checkpoint.
    _save_tensors(out / "checkpoint.pt", {"model": cpu_state(model),
                                          "optimizer": optimizer.state_dict(),
                                          "step": torch.tensor(step)})
    train = meta["training"]
    train["step"] = step
    train["seconds"] = round(train["seconds"] + seconds, 2)
    if losses:
        ce, kd = np.mean(losses, axis=0)
        train["losses"].append({"step": step, "ce_largest": round(float(ce), 4),
                                "kd_others": round(float(kd), 4)})
    _write_json(out / "supernet.json", meta)


def score_configs(supernet: ElasticNet, configs: list[dict[str, int]], *,
                  split: str = "val") -> list[float]:
    """Accuracy of each configuration after BN recalibration, scored on the masked supernet
    (equal to the sliced network, without slicing each one)."""
    batches = supernet.calibration_batches()
    x, y = supernet.data.tensors(split)
    scores = []
    with supernet.masked() as (work, masks):
        for config in configs:
            masks.set(config)
            adaptive_bn(work, batches)
            scores.append(evaluate_accuracy(work, x, y)[0])
    return scores


def _sample(supernet: ElasticNet, settings: SupernetSettings, meta: dict[str, Any], out: Path,
            console: Console) -> None:
    """Score the predictor's training set: the largest, the smallest and random widths."""
    path = out / "samples.json"
    samples = json.loads(path.read_text())["samples"] if path.is_file() else []
    space = supernet.space
    rng = np.random.default_rng([settings.seed, 7])
    configs = [space.dense_config(), space.min_config()]
    configs += [sample_config(space, rng) for _ in range(max(0, settings.samples - 2))]
    todo = configs[len(samples):]
    if not todo and "predictor" in meta:
        return
    started = time.perf_counter()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                   disable=not settings.progress)
    with bar:
        task = bar.add_task("scoring sub-networks for the predictor", total=len(configs),
                            completed=len(samples))
        for i in range(0, len(todo), 10):
            chunk = todo[i:i + 10]
            for config, acc in zip(chunk, score_configs(supernet, chunk)):
                samples.append({"config": config, "val_accuracy": acc})
            _write_json(path, {"samples": samples})
            bar.update(task, completed=len(samples))
    meta["sampling_seconds"] = round(meta.get("sampling_seconds", 0.0)
                                     + time.perf_counter() - started, 2)
    accs = [s["val_accuracy"] for s in samples]
    meta["sampled"] = {"n": len(samples), "largest": accs[0], "smallest": accs[1],
                       "median": float(np.median(accs))}
    # Predictor quality on sub-networks it was not fitted on, reported with the supernet.
    meta["predictor"] = predictor_quality(space, samples, seed=settings.seed)
    supernet.samples = samples
    supernet.derived.pop("predictor", None)
    _write_json(out / "supernet.json", meta)


def _summary(out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    train = meta["training"]
    return {"path": str(out), "model": meta["model_spec"].get("name"), "data": meta["data"],
            "units": len(meta["units"]), "step": train["step"], "total_steps": train["total_steps"],
            "done": train["done"], "train_seconds": train["seconds"],
            "baseline_val_accuracy": meta["baseline"]["val_accuracy"],
            "sampled": meta.get("sampled"), "predictor": meta.get("predictor"), "losses": train["losses"][-1:]}
