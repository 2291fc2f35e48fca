"""Once-for-all over the channel space: an elastic-width supernet whose sub-networks keep the
leading channels of every unit (issue 7).

How width becomes elastic (Cai et al., "Once-for-All", ICLR 2020; Yu & Huang, "Universally
Slimmable Networks", ICCV 2019):

1. The channels of every unit (a Torch-Pruning dependency group, ``ChannelSpace``) are sorted
   once by the same group L2 magnitude pruning uses (``ChannelSpace.channel_scores``) and the
   dense network is *physically reordered*: every coupled tensor (the convs' outputs, their
   BatchNorms, the next layers' inputs, every branch of a residual add) is permuted with the
   same order, so the reordered network computes exactly what the original did (checked).
   OFA sorts by importance too ("channel sorting" of its elastic-width stage).
2. A sub-network keeps the first ``k_u`` channels of each unit. During training a width is
   forwarded by *masking*: forward hooks zero the channels past ``k_u`` at the output of every
   layer the unit owns. Zeroed channels contribute nothing downstream and receive no gradient,
   so the kept channels see exactly what the sliced network would, BatchNorm included (it is
   per-channel). No per-width BN statistics are kept: every sub-network's statistics are
   re-estimated after extraction (US-Nets' post-hoc BN calibration), so the running statistics
   gathered while training do not matter. The equivalence of mask and slice is checked on the
   model at load time, so a model whose couplings masking cannot express is refused.
3. Extraction slices the leading channels off with Torch-Pruning (pruning the tail of every
   group), giving a standalone, physically smaller ``nn.Module`` of the same form
   ``ChannelSpace.apply`` produces, so ``autoprune.load_pruned`` rebuilds it.

Training (sandwich rule, in-place distillation) lives in ``autoprune.ofa.train``; the
accuracy predictor, evolution, latency check and front in ``autoprune.ofa.search``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.placement import model_device, placed, resolve_device
from autoprune.search_spaces import ChannelSpace

if TYPE_CHECKING:
    from autoprune.zoo.data import DataSplits

__all__ = ["SUPERNET_FORMAT", "ElasticNet", "SupernetError", "WidthMasks", "check_masking",
           "full_config", "sample_config", "slice_config", "sort_channels"]

SUPERNET_FORMAT = 1
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SupernetError(ValueError):
    """A supernet folder, model or request that cannot be used; the message names the fix."""


# ---------------------------------------------------------------------- channel sorting
def _graph(model: nn.Module, space: ChannelSpace) -> tp.DependencyGraph:
    with torch.enable_grad():  # Torch-Pruning traces through autograd
        return tp.DependencyGraph().build_dependency(model, example_inputs=space.example_inputs,
                                                     verbose=False)


def _traceable(model: nn.Module) -> nn.Module:
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(True)
    return work


def _permute(module: nn.Module, names: Sequence[str], dim: int, slots: Sequence[int],
             new: Sequence[int]) -> None:
    """Refill positions ``sorted(slots)`` of dimension ``dim`` with the old positions ``new``."""
    for name in names:
        t = getattr(module, name, None)
        if isinstance(t, torch.Tensor):
            index = torch.arange(t.shape[dim])
            index[sorted(slots)] = torch.as_tensor(list(new))
            t.data = t.data.index_select(dim, index.to(t.device))


def _permute_item(module: nn.Module, out: bool, slots: Sequence[int], new: Sequence[int],
                  unit: str) -> None:
    """Reorder one coupled tensor dimension of ``module`` (``out``: its outputs)."""
    if isinstance(module, _CONVS):
        depthwise = module.groups == module.in_channels == module.out_channels
        if module.groups > 1 and not depthwise:
            raise SupernetError(f"unit {unit!r} couples a grouped convolution (groups="
                                f"{module.groups}); elastic width supports plain and depthwise "
                                "convolutions only. Fix: exclude it (ignored_layers).")
        if out:
            _permute(module, ("weight", "bias"), 0, slots, new)
        elif not depthwise:  # a depthwise conv's input channels are its output channels
            _permute(module, ("weight",), 1, slots, new)
    elif isinstance(module, nn.Linear):
        _permute(module, ("weight", "bias") if out else ("weight",), 0 if out else 1, slots, new)
    elif isinstance(module, _BNS):
        _permute(module, ("weight", "bias", "running_mean", "running_var"), 0, slots, new)
    elif any(True for _ in module.parameters(recurse=False)):
        raise SupernetError(f"unit {unit!r} couples a {type(module).__name__}; elastic width "
                            "supports convolutions, linear layers and BatchNorm (masking needs "
                            "per-channel normalisation). Fix: use such a model, or exclude the "
                            "layer (ignored_layers).")


def sort_channels(model: nn.Module, space: ChannelSpace) -> list[np.ndarray]:
    """Reorder ``model`` in place so that every unit's channels are in decreasing importance
    (group L2 magnitude, as pruning ranks them); returns each unit's order (new position ->
    old channel). The model's function is unchanged."""
    other = [u.name for u in space.units if u.kind in ("heads", "head_dim")]
    if other:
        raise SupernetError(
            f"elastic width covers channel groups only, and this model has {len(other)} units "
            f"of attention heads ({', '.join(other[:2])}{', ...' if len(other) > 2 else ''}). "
            "Fix: search it with `autoprune search` / autoprune.allocate instead.")
    scores = space.channel_scores(model)
    orders = [np.argsort(-s, kind="stable") for s in scores]
    work = _traceable(model)
    graph = _graph(work, space)
    modules = dict(work.named_modules())
    with torch.no_grad():
        for unit, order in zip(space.units, orders):
            root = modules[unit.name]
            prune_fn = graph.get_pruner_of_module(root).prune_out_channels
            group = graph.get_pruning_group(root, prune_fn, list(range(unit.full)))
            rank = np.empty(unit.full, dtype=np.int64)
            rank[order] = np.arange(unit.full)
            done: set[tuple[int, bool]] = set()
            for item in group.items:
                module = item.dep.target.module
                if not isinstance(module, nn.Module):
                    continue
                out = "out_channels" in item.dep.handler.__name__
                key = (id(module), out or isinstance(module, _BNS))
                if key in done:
                    continue
                done.add(key)
                idxs, roots = list(item.idxs), list(item.root_idxs)
                # The unit's slots of this layer, refilled in the new order; a flattened
                # channel (conv -> linear) spans several slots, kept in their order.
                new = [i for _, i in sorted(zip((int(rank[r]) for r in roots), idxs))]
                _permute_item(module, out, idxs, new, unit.name)
    model.load_state_dict(work.state_dict())
    return orders


# ---------------------------------------------------------------------- masking and slicing
class WidthMasks:
    """Forward hooks that zero, at the output of every layer a unit owns, the channels past the
    unit's active width: the masked dense model computes what the sliced sub-network would."""

    def __init__(self, model: nn.Module, space: ChannelSpace) -> None:
        self.space = space
        where = model_device(model)  # the masks live where the activations they scale do
        self.masks = {u.name: torch.ones(u.full, device=where) for u in space.units}
        self.dense = True
        modules = dict(model.named_modules())
        self._hooks = []
        for u in space.units:
            for name in u.members:
                m = modules[name]
                dim = -1 if isinstance(m, nn.Linear) else 1
                self._hooks.append(m.register_forward_hook(self._hook(u.name, dim)))

    def _hook(self, unit: str, dim: int) -> Any:
        def hook(module: nn.Module, args: tuple, out: Any) -> Any:
            if self.dense or not isinstance(out, torch.Tensor):
                return out
            mask = self.masks[unit]
            shape = [1] * out.dim()
            shape[dim] = mask.numel()
            return out * mask.view(shape).to(out.dtype)
        return hook

    def set(self, config: Mapping[str, int] | None) -> None:
        """Activate ``config`` (``None``: the dense network)."""
        self.dense = config is None
        if config is None:
            return
        full = full_config(self.space, config)
        for u in self.space.units:
            self.masks[u.name].zero_()[: full[u.name]] = 1.0
        self.dense = all(full[u.name] == u.full for u in self.space.units)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def full_config(space: ChannelSpace, config: Mapping[str, int]) -> dict[str, int]:
    """``config`` with every unit present (missing = dense) and every count checked."""
    try:
        return space.complete_config(config)
    except ValueError as err:  # the space's message, as the supernet's error type
        raise SupernetError(str(err)) from None


def slice_config(model: nn.Module, space: ChannelSpace, config: Mapping[str, int]) -> nn.Module:
    """A standalone, physically smaller copy of the sorted ``model`` keeping the first
    ``config[u]`` channels of each unit (Torch-Pruning removes the tail of every group)."""
    full = full_config(space, config)
    flags = [p.requires_grad for p in model.parameters()]
    work = _traceable(model)
    graph = _graph(work, space)
    modules = dict(work.named_modules())
    for u in space.units:
        if full[u.name] >= u.full:
            continue
        root = modules[u.name]
        prune_fn = graph.get_pruner_of_module(root).prune_out_channels
        graph.get_pruning_group(root, prune_fn, list(range(full[u.name], u.full))).prune()
    for p, flag in zip(work.parameters(), flags):
        p.requires_grad_(flag)
    return work.eval()


def sample_config(space: ChannelSpace, rng: np.random.Generator) -> dict[str, int]:
    """A random width: half the time every unit drawn uniformly (OFA, US-Nets), half the time a
    global level with per-unit jitter, so thin and wide networks (not just the ~60% average of
    independent draws) are trained and sampled for the predictor."""
    if rng.random() < 0.5:
        x = rng.random(space.dim)
    else:
        x = np.clip(rng.random() + rng.normal(0.0, 0.15, space.dim), 0.0, 1.0)
    return space.decode(x)


def check_masking(model: nn.Module, space: ChannelSpace, *, seed: int = 0,
                  tolerance: float = 1e-4) -> float:
    """Largest relative difference between the masked model and the sliced sub-network for a
    random configuration (eval mode); refuse the model if they differ."""
    rng = np.random.default_rng(seed)
    config = space.decode(rng.random(space.dim) * 0.7)
    work = copy.deepcopy(model).eval()
    masks = WidthMasks(work, space)
    masks.set(config)
    gen = torch.Generator().manual_seed(seed)
    x = tuple(torch.randn(x.shape, generator=gen) for x in space.example_inputs)
    with torch.no_grad():
        a = work(*x)
        b = slice_config(model, space, config)(*x)
    diff = float((a - b).abs().max() / (b.abs().max() + 1e-12))
    if not diff <= tolerance:
        raise SupernetError(f"masking a width does not reproduce the sliced sub-network on "
                            f"{type(model).__name__} (relative difference {diff:.2e}): some op "
                            "mixes channels between a unit's layers (e.g. a norm over channels). "
                            "Fix: use a model with BatchNorm after its convs/linear layers.")
    return diff


# ---------------------------------------------------------------------- the supernet
@dataclass(kw_only=True, eq=False)
class ElasticNet:
    """A trained elastic-width network: the sorted model, its channel space and its folder.

    ``load(path)`` reads a folder written by ``autoprune.ofa.train``; ``subnetwork(config)``
    slices one width off, BN recalibrated. The search (``autoprune.ofa.search``) and the
    training (``autoprune.ofa.train``) work on this; ``autoprune.ofa.Supernet`` adds the
    user-facing ``train``, ``extract``, ``specialise`` and ``front`` on top of both.
    """

    model: nn.Module
    space: ChannelSpace
    meta: dict[str, Any]
    path: Path | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    data_splits: DataSplits | None = field(default=None, repr=False)
    # Objects derived from the above and rebuilt after loading (calibration batches, the
    # fitted predictor, fast cost forms); never saved.
    derived: dict[str, Any] = field(default_factory=dict, repr=False)
    # Where sub-networks are scored (None: the CPU). The supernet itself stays on the CPU,
    # where its channel graph is traced and sliced; each sub-network is placed here.
    device: torch.device | None = None

    @classmethod
    def load(cls, path: str | Path, *, data: DataSplits | None = None,
             model: nn.Module | None = None,
             device: str | torch.device | None = None) -> ElasticNet:
        """Read a supernet folder (weights with ``weights_only=True``, metadata from JSON).
        ``model`` (any instance of the architecture) and ``data`` are needed only for a
        supernet trained from a module and data passed to the API: a zoo model or a user's
        factory is rebuilt from its record, and a file or folder of data read again.
        ``device`` (cpu, cuda, cuda:N, auto) is where sub-networks are scored."""
        place = None if device is None else resolve_device(device)
        from autoprune.zoo.models import build_model_from_spec

        path = Path(path)
        meta_path, weights = path / "supernet.json", path / "supernet.pt"
        if not meta_path.is_file():
            raise SupernetError(f"{path} is not a supernet folder (no supernet.json). Fix: train "
                                f"one with `autoprune ofa train --model resnet20 -o {path}`.")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SupernetError(f"{meta_path} is corrupt ({err}). Fix: train the supernet again "
                                "into an empty folder.") from None
        if meta.get("format") != SUPERNET_FORMAT:
            raise SupernetError(f"{meta_path} has format {meta.get('format')!r}; this autoprune "
                                f"reads {SUPERNET_FORMAT}. Fix: train it again.")
        if not weights.is_file():
            step = meta.get("training", {}).get("step", 0)
            raise SupernetError(f"the supernet in {path} has not finished training (step {step} "
                                f"of {meta.get('training', {}).get('total_steps', '?')}). Fix: "
                                f"resume it with `autoprune ofa train -o {path}` and the same "
                                "options.")
        spec = meta["model_spec"]
        if model is not None:
            model = copy.deepcopy(model)
        elif "module" in spec:
            raise SupernetError(f"the supernet in {path} was trained from a module of class "
                                f"{spec['module']} passed to the API. Fix: Supernet.load({str(path)!r}, "
                                "model=<an instance of it>)")
        else:
            model = build_model_from_spec(spec)
        try:
            model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
        except RuntimeError as err:
            first = str(err).strip().splitlines()[:2]
            raise SupernetError(f"the model does not fit the supernet in {path}: "
                                f"{' '.join(first)}") from None
        if data is not None and meta.get("data_name", data.name) != data.name:
            raise SupernetError(f"the supernet in {path} was trained on {meta['data_name']}, "
                                f"not {data.name}. Fix: pass its own data")
        space = ChannelSpace.from_model(model.eval(), torch.zeros(meta["example_input_shape"]),
                                        round_to=meta["round_to"], min_ratio=meta["min_ratio"])
        samples_path = path / "samples.json"
        samples = json.loads(samples_path.read_text())["samples"] if samples_path.is_file() else []
        return cls(model=model.eval(), space=space, meta=meta, path=path, samples=samples,
                   data_splits=data, device=place)

    # ------------------------------------------------------------------ data and scoring
    @property
    def data(self) -> DataSplits:
        """The data the supernet was trained on (BN calibration and validation)."""
        if self.data_splits is None:
            from autoprune.zoo.data import load_data

            if self.meta.get("data_from_api"):
                raise SupernetError(f"the supernet in {self.path} was trained on data passed to "
                                    "the API. Fix: Supernet.load(path, data=<the same "
                                    "DataSplits>)")
            splits = load_data(self.meta["data"], image_size=int(self.meta["image_size"]))
            if splits.name != self.meta.get("data_name", splits.name):
                raise SupernetError(f"{self.meta['data']} has changed since the supernet in "
                                    f"{self.path} was trained on it ({self.meta['data_name']}, "
                                    f"now {splits.name}). Fix: restore it, or train again")
            self.data_splits = splits
        return self.data_splits

    def calibration_batches(self, n: int | None = None) -> list[torch.Tensor]:
        """The training batches BN statistics are re-estimated on (OFA uses ~2,000 images)."""
        n = int(self.meta.get("calib_batches", 8)) if n is None else n
        cached = self.derived.get("calibration")
        if cached is not None and len(cached) == n:
            return cached
        loader = self.data.loader("train", batch_size=64, shuffle=True,
                                  seed=int(self.meta.get("seed", 0)))
        out: list[torch.Tensor] = []
        while len(out) < n:
            out.extend(x for x, _ in loader)
        self.derived["calibration"] = out[:n]
        return out[:n]

    def subnetwork(self, config: Mapping[str, int], *, recalibrate: bool = True) -> nn.Module:
        """The standalone sub-network of ``config`` (leading channels), BN recalibrated."""
        from autoprune.zoo.evaluate import adaptive_bn

        sub = slice_config(self.model, self.space, config)
        if self.device is not None:
            sub = placed(sub, device=self.device)
        return adaptive_bn(sub, self.calibration_batches()) if recalibrate else sub

    @contextmanager
    def masked(self) -> Iterator[tuple[nn.Module, WidthMasks]]:
        """A throw-away copy of the supernet with width masks (for scoring many widths)."""
        work = copy.deepcopy(self.model) if self.device in (None, torch.device("cpu")) \
            else placed(self.model, device=self.device)
        masks = WidthMasks(work, self.space)
        try:
            yield work, masks
        finally:
            masks.remove()
