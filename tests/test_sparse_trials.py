"""A weight-sparse trial's network: what the evaluator does to it stays in it, and it is freed
as soon as it is dropped."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.search_spaces import make_space, mask_of, release, watch


def _gpt2() -> tuple[nn.Module, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50,
                                     n_positions=16)
    return transformers.GPT2LMHeadModel(config).eval(), torch.randint(0, 50, (2, 8))


def _convnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 36, 10))
    return model.eval(), torch.randn(2, 3, 6, 6)


CASES = [("gpt2", "unstructured", "magnitude"), ("gpt2", "unstructured", "wanda"),
         ("gpt2", "unstructured", "sparsegpt"), ("gpt2", "nm", "magnitude"),
         ("convnet", "unstructured", "wanda"), ("convnet", "nm", "magnitude")]


def _space(name: str, kind: str, criterion: str):
    model, x = {"gpt2": _gpt2, "convnet": _convnet}[name]()
    extra = {"calibration": [(x, None)]} if criterion != "magnitude" else {}
    options = {"output": "logits"} if name == "gpt2" else {}
    return model, x, make_space(kind, model, x, criterion=criterion, **options, **extra)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


@pytest.mark.parametrize("name,kind,criterion", CASES)
def test_an_evaluator_changing_its_network_in_place_leaves_the_dense_model_alone(
        name: str, kind: str, criterion: str) -> None:
    model, x, space = _space(name, kind, criterion)
    dense = _state(model)
    config = space.decode(np.random.default_rng(0).random(space.dim))
    first = _state(space.apply(model, config))
    for _ in range(2):  # an evaluator that fine-tunes, recalibrates and edits what it gets
        net = space.apply(model, config).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        for _ in range(2):
            opt.zero_grad()
            _logits(net, x).float().pow(2).mean().backward()
            opt.step()
        with torch.no_grad():
            for p in net.parameters():
                p.data.add_(1.0)  # around autograd's version counters too
            for b in net.buffers():
                if b.is_floating_point():
                    b.mul_(3.0)
        del net, opt
    for k, v in model.state_dict().items():
        assert torch.equal(v, dense[k]), k
    again = _state(space.apply(model, config))  # nothing of the edited networks carried over
    assert again.keys() == first.keys()
    for k in first:
        assert torch.equal(again[k], first[k]), k


@pytest.mark.parametrize("name,kind,criterion", CASES[:2] + CASES[3:4])
def test_a_dropped_trial_network_is_freed_without_the_garbage_collector(
        name: str, kind: str, criterion: str) -> None:
    model, x, space = _space(name, kind, criterion)
    config = space.min_config()
    enabled = gc.isenabled()
    gc.disable()
    try:
        net = space.apply(model, config)
        masked = [m for m in net.modules() if mask_of(m) is not None]
        assert masked
        with torch.no_grad():
            _logits(net, x)
        gone = watch(net)
        parts = [weakref.ref(m) for m in masked]
        del net, masked
        assert all(ref() is None for ref in gone)  # the network and every tensor of it
        assert all(ref() is None for ref in parts)
        release(gone)
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_applying_to_a_masked_network_leaves_it_masked_and_working(criterion: str) -> None:
    model, x, space = _space("gpt2", "unstructured", criterion)
    rng = np.random.default_rng(1)
    net = space.apply(model, space.decode(rng.random(space.dim)))
    masks = {n: mask_of(m) for n, m in net.named_modules() if mask_of(m) is not None}
    with torch.no_grad():
        before = _logits(net, x)
    again = space.apply(net, space.decode(rng.random(space.dim)))  # ranked by its masked weights
    with torch.no_grad():
        assert torch.equal(_logits(net, x), before)
        _logits(again, x)
    for n, mask in masks.items():
        assert torch.equal(mask_of(net.get_submodule(n)), mask)
