"""Where the work runs (``--device`` / ``device=``): one value, resolved once with one clear
error, the dense model placed there once, and trial networks, batches and statistics made
there. The CPU runs every path through the same code with the device given explicitly; the
meta device (shapes without data) stands in for a second device where a test must see tensors
move, and a machine with CUDA runs the same tests on ``cuda`` too."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import autoprune
import autoprune.session as session_module
from autoprune.cli import app
from autoprune.errors import SearchError
from autoprune.evaluator import BatchesEvaluator
from autoprune.latency.device import Device
from autoprune.placement import (_moved_inputs, cpu_state, model_device, on_cpu, placed, resolve_device,
                                 to_device, trained_on)
from autoprune.session import PruneAndEvaluate
from autoprune.zoo.evaluate import ClassificationEvaluator
from autoprune.zoo.data import load_data

META = torch.device("meta")
#: The devices every placement test runs on here: the CPU always, a GPU where torch sees one.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def _constant(model: nn.Module) -> dict[str, float]:
    return {"accuracy": 1.0}


# ---------------------------------------------------------------- one value, one clear error
def test_cpu_and_auto_resolve_here_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "gpu"])
def test_cuda_without_a_gpu_is_one_error_naming_the_fix(monkeypatch: pytest.MonkeyPatch,
                                                        spec: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SearchError, match=r"Fix: use --device cpu \(or auto\)"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "cuda:-1", ""])
def test_an_unknown_device_names_the_choices(spec: str) -> None:
    with pytest.raises(SearchError, match="use cpu, cuda, cuda:N or auto"):
        resolve_device(spec)


def test_a_gpu_index_past_the_machines_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(SearchError, match=r"has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_the_api_refuses_a_latency_device_as_where_to_work() -> None:
    with pytest.raises(SearchError, match="latency_device="):
        autoprune.allocate(_net(), example_inputs=torch.randn(1, 1, 8, 8), target="flops=50%",
                           evaluate=lambda m: {"accuracy": 1.0}, device=Device())


def test_the_cli_says_a_missing_gpu_in_one_line_before_any_work(tmp_path: Path) -> None:
    runner = CliRunner()
    cases = {"cuda:7": "Fix: use" if torch.cuda.is_available() else "Fix: use --device cpu",
             "tpu": "Fix: use cpu, cuda, cuda:N or auto"}
    for device, fix in cases.items():
        for command in (["search", "--run-dir", str(tmp_path / "r")], ["train"],
                        ["recover", str(tmp_path / "r"), "--steps", "1"]):
            out = runner.invoke(app, [*command, "--device", device],
                                env={"AUTOPRUNE_CACHE": str(tmp_path / "cache")})
            assert out.exit_code != 0 and out.exception is None or \
                isinstance(out.exception, SystemExit), out.output
            assert fix in " ".join(out.output.split()), (command, out.output)
    assert not (tmp_path / "r").exists() and not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- the dense model placed once
def test_placing_copies_the_model_there_and_moves_its_inputs() -> None:
    net = _net()
    tied = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    tied[1].weight = tied[0].weight
    work = placed(net, device=META)
    assert work is not net and model_device(work) == META
    assert all(p.device == META for p in work.parameters())
    assert all(b.device == META for b in work.buffers())
    assert all(p.device.type == "cpu" for p in net.parameters())  # the user's model stays
    out = work(torch.randn(2, 1, 8, 8))  # a CPU batch: moved by the placed model's forward
    assert out.device == META and out.shape == (2, 10)
    moved = placed(tied, device=META)
    assert moved[0].weight is moved[1].weight  # tied weights stay tied
    assert placed(net, device=torch.device("cpu")) is net  # already there: no copy


def test_a_placed_models_copy_moves_its_inputs_to_the_new_place_only() -> None:
    net = _net()
    net.register_forward_pre_hook(functools.partial(_moved_inputs, torch.device("cpu")),
                                  with_kwargs=True)  # as a network placed on the CPU has
    again = placed(net, device=META)
    assert len(again._forward_pre_hooks) == 1  # the old move dropped, the new one kept
    assert again(torch.randn(1, 1, 8, 8)).device == META
    assert on_cpu(net) is net


@pytest.mark.parametrize("device", DEVICES)
def test_saved_weights_are_on_the_cpu_with_ties_kept(device: str) -> None:
    net = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    net[1].weight = net[0].weight
    state = cpu_state(placed(net, device=resolve_device(device)))
    assert state["0.weight"].data_ptr() == state["1.weight"].data_ptr()
    assert all(t.device.type == "cpu" for t in state.values())
    assert torch.equal(state["0.weight"], net[0].weight.detach())


def test_batches_in_any_structure_move() -> None:
    batch = {"x": torch.ones(2), "pair": (torch.zeros(1), [torch.ones(3)]), "n": 3}
    moved = to_device(batch, META)
    assert moved["x"].device == META and moved["pair"][0].device == META
    assert moved["pair"][1][0].device == META and moved["n"] == 3
    assert to_device(batch, None) is batch


@pytest.mark.parametrize("device", DEVICES)
def test_a_baseline_trains_there_and_comes_back_to_the_cpu(device: str) -> None:
    net, place = _net(), resolve_device(device)
    with trained_on(net, place):
        assert model_device(net) == place
    assert model_device(net).type == "cpu"


# ---------------------------------------------------------------- batches and statistics there
def test_a_users_metric_gets_its_batches_on_the_networks_device() -> None:
    data = load_data("digits", image_size=8)
    base = ClassificationEvaluator(data, calib_batches=2, batch_size=16)
    seen: list[torch.device] = []

    def metric(model: nn.Module, batches) -> dict[str, float]:
        for x, y in batches:
            seen.extend([x.device, y.device])
        seen.extend(p.device for p in model.parameters())
        return {"accuracy": 0.5}

    val = [(data.val_x[:16], data.val_y[:16])]
    evaluator = BatchesEvaluator(metric, base, val, val, "metric")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    assert evaluator(placed(mlp, device=META)) == {"accuracy": 0.5}
    assert seen and set(seen) == {META}
    assert evaluator._placed and base._placed  # noqa: SLF001 - moved once, kept per device
    # To a Ray worker, nothing placed travels: the worker places its own.
    assert evaluator.__getstate__()["_placed"] == {} == base.__getstate__()["_placed"]


@pytest.mark.parametrize("device", DEVICES)
def test_a_search_on_a_given_device_builds_and_scores_every_trial_there(device: str) -> None:
    """An evaluator that asserts where every parameter and input is: the search's own
    statistics, trials and the user's model all follow ``device=``."""
    place = resolve_device(device)
    data = load_data("digits", image_size=8)
    base = ClassificationEvaluator(data, calib_batches=2, batch_size=32)
    checked = []

    def evaluate(model: nn.Module) -> dict[str, float]:
        assert all(p.device == place for p in model.parameters())
        assert all(b.device == place for b in model.buffers())
        seen = []
        hook = model.register_forward_pre_hook(lambda m, a: seen.extend(t.device for t in a))
        score = base(model)
        hook.remove()
        assert seen and set(seen) == {place}
        checked.append(score["accuracy"])
        return score

    net = _net()
    alloc = autoprune.allocate(net, example_inputs=torch.randn(1, 1, 8, 8), target="flops=60%",
                               evaluate=evaluate, agent="random", trials=4, round_to=2,
                               criterion="taylor", calibration=[(data.train_x[:16],
                                                                 data.train_y[:16])],
                               device=device)
    assert len(checked) >= 4 and alloc.config
    assert all(p.device.type == "cpu" for p in net.parameters())  # the user's model stays


def test_trial_work_travels_to_a_worker_as_cpu_weights_and_is_placed_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What Ray ships: a dense model on a GPU goes as a CPU copy, and the worker places it on
    its own device ("auto": its GPU share, or its CPU)."""
    space = autoprune.search_spaces.make_space("channel", _net(), torch.randn(1, 1, 8, 8),
                                               round_to=2)
    problem = autoprune.problem.build_problem(space, autoprune.targets.parse_targets(
        "flops=60%"))
    work = PruneAndEvaluate(problem, _net(), _constant)
    assert "place" not in pickle.loads(pickle.dumps(work)).__dict__  # on the CPU: as it is
    monkeypatch.setattr(session_module, "model_device", lambda m: torch.device("cuda", 0))
    shipped = work.__getstate__()
    assert shipped["place"] == "auto"
    assert all(p.device.type == "cpu" for p in shipped["model"].parameters())
    arrived = PruneAndEvaluate.__new__(PruneAndEvaluate)
    arrived.__setstate__(dict(shipped))
    assert model_device(arrived.model) == resolve_device("auto")
    assert arrived(space.dense_config()) == {"accuracy": 1.0}
