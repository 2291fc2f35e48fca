"""A criterion through a whole run: chosen on the command line and in the API, ranked on the
training split, recorded in the run folder, and a resume with another one refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import autoprune
from autoprune.errors import SearchError
from autoprune.zoo.tasks import load_task
from conftest import run_cli

SMALL = ["--model", "resnet20", "--image-size", "8", "--width-mult", "0.5", "--round-to", "4"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    run_cli(["train", *SMALL[:6], "--epochs", "2"], cache)
    return cache


def test_a_search_records_its_criterion_and_refuses_to_resume_with_another(
        cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "taylor"
    args = ["search", *SMALL, "--target", "flops=50%", "--trials", "3", "--run-dir", str(run),
            "--no-progress", "--json"]
    summary = json.loads(run_cli([*args, "--criterion", "taylor"], cache).stdout)
    assert json.loads((run / "run.json").read_text())["settings"]["criterion"] == "taylor"
    best = json.loads((run / "best.json").read_text())
    assert best["criterion"] == "taylor" and summary["criterion"] == "taylor"
    # the saved network is the one taylor chose, and it scores what the search reported
    model = autoprune.load_pruned(run)
    assert sum(p.numel() for p in model.parameters()) == summary["best"]["costs"]["params"]
    out = run_cli([*args, "--criterion", "l1"], cache, check=False)
    assert out.returncode == 2
    assert "criterion" in out.stderr and "taylor" in out.stderr and "Traceback" not in out.stderr


def test_an_unknown_criterion_is_one_error_naming_them_before_any_work(tmp_path: Path) -> None:
    out = run_cli(["search", *SMALL, "--criterion", "magic", "--run-dir", str(tmp_path / "r"),
                   "--no-progress"], tmp_path / "empty-cache", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "magic" in out.stderr and "taylor" in out.stderr and "fpgm" in out.stderr
    assert not (tmp_path / "empty-cache" / "baselines").exists()  # nothing was trained


def test_calibration_batches_come_from_the_training_split(cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(cache))
    task = load_task("resnet20", "digits", image_size=8, width_mult=0.5, progress=False)
    batches = task.calibration_batches(3, batch_size=16, seed=1)
    assert len(batches) == 3 and all(len(x) == 16 == len(y) for x, y in batches)
    train = {tuple(r.flatten().tolist()) for r in task.data.tensors("train")[0]}
    assert all(tuple(r.flatten().tolist()) in train for x, _ in batches for r in x)
    assert torch.equal(batches[0][0], task.calibration_batches(3, batch_size=16, seed=1)[0][0])


def test_allocate_takes_a_criterion_and_needs_calibration_for_a_data_driven_one(
        user_model: torch.nn.Module) -> None:
    x = torch.randn(8, 1, 16, 16)
    y = torch.randint(0, 10, (8,))

    def score(model: torch.nn.Module) -> dict[str, float]:
        n = sum(p.numel() for p in model.parameters())
        return {"accuracy": n / (n + 5000.0)}

    alloc = autoprune.allocate(user_model, example_inputs=x[:1], target="flops=50%",
                               evaluate=score, trials=2, round_to=4, criterion="taylor",
                               calibration=[(x, y)])
    assert alloc.space.criterion.name == "taylor"
    with pytest.raises(SearchError, match="calibration"):
        autoprune.allocate(user_model, example_inputs=x[:1], target="flops=50%",
                           evaluate=score, trials=2, round_to=4, criterion="taylor")
