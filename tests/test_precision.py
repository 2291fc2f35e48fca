"""A search in half precision: the dense weights and every trial in bfloat16, inputs cast,
size= budgets in its bytes, the user's model untouched; and where a search's time went."""

from __future__ import annotations

import pytest
import torch

import autoprune
from autoprune.errors import SearchError
from autoprune.placement import placed
from autoprune.precision import model_dtype
from autoprune.testing.memory import peak_allocated
from autoprune.zoo.models import build_model


def _resnet() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=10).eval(), torch.randn(4, 3, 16, 16)


def test_allocate_searches_in_bfloat16_and_leaves_the_model_alone() -> None:
    model, x = _resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def evaluate(pruned: torch.nn.Module) -> dict[str, float]:
        with torch.no_grad():
            out = pruned(x)  # float32 data, as a user's loader gives it: cast by the model
        seen.append((model_dtype(pruned), out.dtype))
        return {"accuracy": float(out.float().softmax(1)[:, 0].mean())}

    alloc = autoprune.allocate(model, example_inputs=x[:1], target="flops=50%",
                               evaluate=evaluate, trials=3, dtype="bfloat16")
    assert seen and all(s == (torch.bfloat16, torch.bfloat16) for s in seen)
    assert alloc.dtype == "bfloat16" and model_dtype(alloc.apply(model)) == torch.bfloat16
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(alloc.resources) >= {"build_s", "prune_s", "evaluate_s", "peak_rss_gb"}
    assert alloc.resources["trials_here"] == len(alloc.trials)


def test_size_budgets_count_the_bytes_of_the_dtype() -> None:
    model, x = _resnet()

    def evaluate(pruned: torch.nn.Module) -> dict[str, float]:
        return {"accuracy": 0.5}

    sizes = {}
    for dtype in ("float32", "bfloat16"):
        alloc = autoprune.allocate(model, example_inputs=x[:1], target="size=60%",
                                   evaluate=evaluate, trials=2, dtype=dtype,
                                   space="unstructured")
        sizes[dtype] = alloc.dense_costs["size_bytes"]
    params = sum(p.numel() for p in model.parameters())
    assert sizes["float32"] >= 4 * params and 2 * params <= sizes["bfloat16"] < 2.1 * params


def test_in_dtype_converts_without_a_float32_copy_and_keeps_ties() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(1000, 256), torch.nn.Linear(256, 1000))
    model[1].weight = model[0].weight  # tied, as a language model's head
    dense = sum(p.numel() * 4 for p in model.parameters())
    half, peak = peak_allocated(lambda: placed(model, dtype="bfloat16"))
    assert peak <= 0.55 * dense  # the bfloat16 weights alone
    assert half[1].weight is half[0].weight and half[0].weight.dtype == torch.bfloat16
    assert model[0].weight.dtype == torch.float32 and placed(model, dtype="float32") is model


def test_a_bad_dtype_is_one_error() -> None:
    model, x = _resnet()
    with pytest.raises(SearchError, match="bfloat16"):
        autoprune.allocate(model, example_inputs=x[:1], target="flops=50%",
                           evaluate=lambda m: {"accuracy": 1.0}, trials=1, dtype="float8")
