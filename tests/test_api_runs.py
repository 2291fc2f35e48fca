"""The Python API's result is a run: ``allocate(run_dir=)`` and ``Allocation.save`` write what
``autoprune search`` writes, ``load_pruned`` gives the network back, a resume must be the same
search, and a bad ``evaluate`` is one clear error before the first trial."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import autoprune
from autoprune import SearchError, SpaceSettings
from conftest import ResidualDepthwiseNet

X = torch.randn(1, 1, 16, 16)


def _width(model: nn.Module) -> dict[str, float]:
    n = sum(p.numel() for p in model.parameters())
    return {"accuracy": n / (n + 5000.0), "loss": 5000.0 / (n + 5000.0)}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return ResidualDepthwiseNet().eval()


def test_an_api_run_round_trips_through_load_pruned(tmp_path: Path) -> None:
    model, run = _model(), tmp_path / "run"
    alloc = autoprune.allocate(model, example_inputs=X, target="flops=50%", evaluate=_width,
                               trials=6, round_to=4, run_dir=run)
    for name in ("run.json", "study.db", "best.json", "pruned.pt", "summary.json"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["units"] == {k: int(v) for k, v in alloc.config.items()}
    assert summary["budgets_met"] and summary["trials"] == 6
    x = torch.randn(3, 1, 16, 16)
    loaded = autoprune.load_pruned(run, model=model)
    with torch.no_grad():
        assert torch.equal(loaded(x), alloc.apply(model).eval()(x))
    assert not model.training  # the dense model is left as it was
    # A model of one's own is not in the folder: asking without it names the fix.
    with pytest.raises(SearchError, match="model=dense"):
        autoprune.load_pruned(run)
    # The same call resumes; another search in that folder is refused, naming the folder.
    again = autoprune.allocate(model, example_inputs=X, target="flops=50%", evaluate=_width,
                               trials=8, round_to=4, run_dir=run)
    assert len(again.trials) == 8
    with pytest.raises(SearchError, match="different search"):
        autoprune.allocate(model, example_inputs=X, target="flops=30%", evaluate=_width,
                           trials=8, round_to=4, run_dir=run)


def test_an_in_memory_allocation_saves_as_a_run(tmp_path: Path) -> None:
    model = _model()
    alloc = autoprune.allocate(model, example_inputs=X, target="params=60%", evaluate=_width,
                               trials=4, space=SpaceSettings(round_to=4))
    alloc.save(tmp_path / "saved")
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(autoprune.load_pruned(tmp_path / "saved", model=model)(x),
                           alloc.apply(model).eval()(x))
    best = json.loads((tmp_path / "saved" / "best.json").read_text())
    assert best["model_spec"] is None and best["config"] == dict(alloc.config)


def test_a_zoo_model_run_reloads_without_the_model(tmp_path: Path) -> None:
    model = autoprune.build_model("resnet20", num_classes=10, in_channels=1, width_mult=0.5)
    alloc = autoprune.allocate(model.eval(), example_inputs=torch.randn(1, 1, 8, 8),
                               target="flops=60%", evaluate=_width, trials=3, run_dir=tmp_path)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(autoprune.load_pruned(tmp_path)(x), alloc.apply(model).eval()(x))


def test_a_refused_allocate_leaves_nothing_that_blocks_the_retry(tmp_path: Path) -> None:
    run, model = tmp_path / "run", _model()
    with pytest.raises(Exception, match="flops"):
        autoprune.allocate(model, example_inputs=X, target="flops=0.1%", evaluate=_width,
                           trials=3, round_to=4, run_dir=run)
    assert not (run / "run.json").exists()
    alloc = autoprune.allocate(model, example_inputs=X, target="flops=50%", evaluate=_width,
                               trials=3, round_to=4, run_dir=run)
    assert len(alloc.trials) == 3


@pytest.mark.parametrize(("returns", "message"), [
    (0.9, "float 0.9.*Fix: return {'accuracy': value}"),
    ({"acc": 0.9}, "keys 'acc' but neither 'accuracy' nor 'loss'"),
    ({"accuracy": "high"}, "'accuracy': 'high', not a number"),
    ({"loss": float("nan")}, "finite 'accuracy' or 'loss'"),
])
def test_a_bad_evaluate_is_refused_before_the_first_trial(returns: object, message: str) -> None:
    calls = []

    def evaluate(model: nn.Module) -> object:
        calls.append(1)
        return returns

    with pytest.raises(SearchError, match=message):
        autoprune.allocate(_model(), example_inputs=X, target="flops=50%", evaluate=evaluate,
                           trials=20, round_to=4)
    assert len(calls) <= 2  # the thinnest network, then the dense one: no trial ran


def test_space_options_are_one_value() -> None:
    model = _model()
    with pytest.raises(SearchError, match="given twice"):
        autoprune.allocate(model, example_inputs=X, target="flops=50%", evaluate=_width,
                           space=SpaceSettings(round_to=4), round_to=8)
    alloc = autoprune.allocate(model, example_inputs=X, target="sparsity=50%", evaluate=_width,
                               trials=3, space=SpaceSettings(space="unstructured"))
    assert alloc.space.name == "unstructured"
    assert math.isfinite(alloc.metrics["accuracy"])


def test_a_whole_unstructured_search_runs_on_its_defaults(tmp_path: Path) -> None:
    settings = autoprune.SearchSettings(
        source=autoprune.ModelSource(model="resnet20", image_size=8, width_mult=0.5),
        space=SpaceSettings(space="unstructured"), targets=("sparsity=50%",), trials=2,
        run_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    summary = autoprune.search(settings)
    assert summary["sparse"]["sparsity"] >= 0.5 - 1e-9
    assert summary["criterion"] == "magnitude"


def test_the_settings_know_every_registered_space() -> None:
    from autoprune.search_spaces import SPACES
    from autoprune.settings import SPACE_KINDS

    assert set(SPACE_KINDS) == set(SPACES)
    assert SpaceSettings(space="nm").prunes_weights and not SpaceSettings().prunes_weights


def test_objective_means_what_the_cli_means_and_metric_picks_the_entry() -> None:
    model = _model()
    with pytest.raises(SearchError, match="metric='loss'"):
        autoprune.allocate(model, example_inputs=X, target="flops=50%", evaluate=_width,
                           objective="loss")
    alloc = autoprune.allocate(model, example_inputs=X, target="flops=50%", evaluate=_width,
                               trials=3, round_to=4, metric="loss")
    assert alloc.chosen is not None and alloc.chosen.objective == -alloc.metrics["loss"]
    front = autoprune.allocate(model, example_inputs=X, target="flops=50%", evaluate=_width,
                               trials=4, round_to=4, objective="pareto")
    assert front.pareto is not None


@pytest.mark.parametrize(("values", "message"), [
    ({"model": lambda t: t}, "must be a torch.nn.Module"),
    ({"trials": 0}, "at least 1"),
    ({"run_dir": "FILE"}, "is a file; pass a folder"),
    ({"executor": "nosuch"}, "unknown executor 'nosuch'"),
    ({"latency_table": "lut.json", "target": "latency=5ms"}, "LatencyTable.load"),
    ({"space_options": {"levles": [0.5]}}, "unknown space_options levles"),
    ({"space": 3}, "space= takes a space's name"),
])
def test_bad_api_values_are_refused_before_any_work(values: dict, message: str,
                                                    tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    args = {"model": _model(), "example_inputs": X, "target": "flops=50%",
            "evaluate": _width, "trials": 2, **values}
    if args.get("run_dir") == "FILE":
        args["run_dir"] = tmp_path / "f"
    with pytest.raises(SearchError, match=message):
        autoprune.allocate(args.pop("model"), **args)


@pytest.mark.parametrize(("content", "message"), [
    (b"not weights at all\n", "is not a PyTorch state dict"),
    (None, "holds a list, not a state dict"),
])
def test_a_run_whose_weights_file_is_not_a_state_dict_is_one_error(
        tmp_path: Path, content: bytes | None, message: str) -> None:
    from conftest import run_cli

    model = autoprune.build_model("resnet20", num_classes=10, in_channels=1, width_mult=0.5)
    autoprune.allocate(model.eval(), example_inputs=torch.randn(1, 1, 8, 8), target="flops=60%",
                       evaluate=_width, trials=2, run_dir=tmp_path / "run")
    weights = tmp_path / "run" / "pruned.pt"
    if content is None:
        torch.save([1, 2], weights)
    else:
        weights.write_bytes(content)
    with pytest.raises(SearchError, match=message):
        autoprune.load_pruned(tmp_path / "run")
    out = run_cli(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.onnx")],
                  tmp_path / "cache", check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr and message in out.stderr
