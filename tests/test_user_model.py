"""A user's own model from the command line: --model file.py:factory, --model-arg, --weights,
--input-shape, and the run folder that rebuilds it from its record alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import autoprune
from autoprune.user_model import UserModelError, build_user_model, parse_model_args
from conftest import run_cli

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=16, classes=10, channels=1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width),
            nn.ReLU())
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def make(width=16, channels=1):
    return Net(width, channels=channels)


def broken(width=16):
    raise RuntimeError("no GPU here")
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user")
    (root / "mynet.py").write_text(NET)
    torch.manual_seed(0)
    model = build_user_model(f"{root / 'mynet.py'}:make", {"width": 24})
    torch.save({"state_dict": model.state_dict()}, root / "w.pt")
    return {"root": root, "file": root / "mynet.py", "weights": root / "w.pt",
            "cache": root / "cache"}


def _cli(args: list[str], user: dict[str, Path], check: bool = True):  # noqa: ANN202
    return run_cli(args, user["cache"], check, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def user_run(user: dict[str, Path]) -> tuple[Path, dict]:
    run_dir = user["root"] / "run"
    out = _cli(["search", "--model", f"{user['file']}:make", "--model-arg", "width=24",
                "--weights", str(user["weights"]), "--image-size", "8", "--trials", "3",
                "--run-dir", str(run_dir), "--json", "--no-progress"], user)
    return run_dir, json.loads(out.stdout)


def test_a_search_on_a_user_model_rebuilds_from_its_run_folder(user_run, user) -> None:  # noqa: ANN001
    run_dir, summary = user_run
    assert summary["best"]["costs"]["macs"] <= 0.5 * summary["dense"]["costs"]["macs"]
    choice = json.loads((run_dir / "best.json").read_text())
    spec = choice["model_spec"]
    assert spec["factory"] == f"{user['file']}:make" and spec["args"] == {"width": 24}
    assert spec["weights"] == str(user["weights"]) and len(spec["weights_sha256"]) == 64
    model = autoprune.load_pruned(run_dir)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == summary["best"]["costs"]["params"]
    # the dense weights were the user's: the search scored them, it trained nothing
    assert summary["baseline"]["cached"] is False


def test_a_changed_factory_is_one_error_naming_the_way_out(user_run, user, tmp_path) -> None:  # noqa: ANN001
    run_dir, _ = user_run
    import shutil

    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved)
    original = user["file"].read_text()
    try:
        user["file"].write_text(original + "\n# edited\n")
        with pytest.raises(UserModelError, match="has changed since the run was made.*pruned.pt2"):
            autoprune.load_pruned(moved)
    finally:
        user["file"].write_text(original)
    program = torch.export.load(str(moved / "pruned.pt2")).module()  # no model code needed
    assert program(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_train_then_search_a_user_model_without_weights(user, tmp_path) -> None:  # noqa: ANN001
    base = ["--model", f"{user['file']}:make", "--model-arg", "width=16", "--image-size", "8"]
    trained = _cli(["train", *base, "--epochs", "1", "--json"], user)
    assert json.loads(trained.stdout)["epochs"] == 1
    out = _cli(["search", *base, "--trials", "2", "--run-dir", str(tmp_path / "r"), "--json",
                "--no-progress"], user)
    assert json.loads(out.stdout)["baseline"]["cached"] is True  # what train cached


def test_profile_and_latency_take_a_user_model_and_an_input_shape(user, tmp_path) -> None:  # noqa: ANN001
    base = ["--model", f"{user['file']}:make", "--model-arg", "channels=3", "--input-shape",
            "3x16x16"]
    out = _cli(["latency", *base, "--repeats", "5", "--json"], user)
    assert json.loads(out.stdout)["device"]["input_shape"] == [1, 3, 16, 16]
    out = _cli(["profile", *base, "--grid", "2", "--calibration", "3", "-o",
                str(tmp_path / "lut.json"), "--json"], user)
    assert json.loads(out.stdout)["layers"] >= 3


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "{file}:nope"], "has no callable 'nope' (its callables: Net, broken, make)"),
    (["--model", "{file}:broken"], "raised RuntimeError: no GPU here"),
    (["--model", "{root}/missing.py:make"], "does not exist"),
    (["--model", "{file}:make", "--weights", "{weights}"],
     "does not fit the model: 'body.0.weight' is (24, 1, 3, 3) in the file, (16, 1, 3, 3)"),
    (["--model", "{file}:make", "--model-arg", "channels=3"], "cannot take inputs of shape (1, 8, 8)"),
    (["--model", "{file}:make", "--model-arg", "oops"], "is not name=value"),
    (["--model", "{file}:make", "--data", "python-stdlib"], "reads images here"),
])
def test_a_bad_user_model_is_one_error_before_any_work(user, tmp_path, args, message) -> None:  # noqa: ANN001
    args = [a.format(file=user["file"], root=user["root"], weights=user["weights"]) for a in args]
    run_dir = tmp_path / "r"
    out = _cli(["search", *args, "--image-size", "8", "--trials", "2", "--run-dir", str(run_dir),
                "--no-progress"], user, check=False)
    assert out.returncode == 2 and message in " ".join(out.stderr.split()), out.stderr[-1500:]
    assert not (run_dir / "run.json").exists()  # the corrected command may use the folder


def test_model_args_are_python_literals_or_strings() -> None:
    assert parse_model_args(["width=32", "ratio=0.5", "deep=True", "name=wide", "k=(1, 2)"]) == {
        "width": 32, "ratio": 0.5, "deep": True, "name": "wide", "k": (1, 2)}


@pytest.fixture(scope="module")
def npz_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits written as npz files, as a user's own data would come."""
    import numpy as np
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("npz")
    digits = load_digits()
    x, y = (digits.images * 16).clip(0, 255).astype(np.uint8), digits.target
    np.savez(root / "own.npz", x=x[:1500], y=y[:1500], x_test=x[1500:], y_test=y[1500:])
    np.savez(root / "nolabels.npz", images=x)
    np.savez(root / "oneclass.npz", x=x[:50], y=np.zeros(50, dtype=np.int64))
    np.savez(root / "rgb_last.npz", x=np.repeat(x[..., None], 3, axis=-1), y=y)
    return root


def test_a_search_on_an_npz_of_the_user_s_states_its_data(user, npz_files, tmp_path) -> None:  # noqa: ANN001
    run_dir = tmp_path / "r"
    out = _cli(["search", "--model", f"{user['file']}:make", "--data", str(npz_files / "own.npz"),
                "--image-size", "8", "--trials", "2", "--run-dir", str(run_dir), "--json",
                "--no-progress"], user)
    data = json.loads(out.stdout)["data"]
    assert data["split"] == {"train": 1275, "val": 225, "test": 297, "test_from": "x_test"}
    assert data["scaled"] == "uint8 / 255" and data["layout"].startswith("N x H x W")
    assert len(data["sha256"]) == 64 and data["path"] == str(npz_files / "own.npz")
    assert autoprune.load_pruned(run_dir)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_an_npz_is_read_channels_last_and_split_when_it_has_no_test_arrays(npz_files) -> None:  # noqa: ANN001
    from autoprune.zoo.data import load_npz_splits

    data = load_npz_splits(npz_files / "rgb_last.npz", image_size=16)
    assert data.in_channels == 3 and data.train_x.shape[1:] == (3, 16, 16)
    assert data.about["split"]["test_from"] == "x (20%, seeded)"
    assert len(data.train_y) + len(data.val_y) + len(data.test_y) == 1797
    mean = data.train_x.mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-4)  # normalised on the training split


@pytest.mark.parametrize(("name", "message"), [
    ("nolabels.npz", "needs x (images) and y (integer labels)"),
    ("oneclass.npz", "a single class"),
    ("missing.npz", "no such file"),
])
def test_a_bad_npz_is_one_error(user, npz_files, tmp_path, name, message) -> None:  # noqa: ANN001
    out = _cli(["search", "--model", "resnet20", "--data", str(npz_files / name), "--image-size",
                "8", "--trials", "2", "--run-dir", str(tmp_path / "r"), "--no-progress"], user,
               check=False)
    assert out.returncode == 2 and message in " ".join(out.stderr.split()), out.stderr[-1500:]


METRICS = '''
import torch
import torch.nn.functional as F


def top1(model, batches):
    right = seen = 0
    with torch.no_grad():
        for x, y in batches:
            right += int((model(x).argmax(1) == y).sum())
            seen += len(y)
    return {"accuracy": right / seen, "seen": seen}


def nll(model, batches):
    with torch.no_grad():
        losses = [F.cross_entropy(model(x), y, reduction="sum") for x, y in batches]
    return {"loss": float(sum(losses))}


def nothing(model, batches):
    return {"score": 1.0}
'''


@pytest.mark.parametrize("fn", ["top1", "nll"])
def test_a_user_s_evaluator_scores_the_search(user, tmp_path, fn) -> None:  # noqa: ANN001
    (tmp_path / "metrics.py").write_text(METRICS)
    run_dir = tmp_path / "r"
    out = _cli(["search", "--model", f"{user['file']}:make", "--weights", str(user["weights"]),
                "--model-arg", "width=24", "--image-size", "8", "--trials", "3", "--evaluator",
                f"{tmp_path / 'metrics.py'}:{fn}", "--run-dir", str(run_dir), "--json",
                "--no-progress"], user)
    best = json.loads(out.stdout)["best"]["metrics"]
    settings = json.loads((run_dir / "run.json").read_text())["settings"]
    assert settings["evaluator"] == f"{tmp_path / 'metrics.py'}:{fn}"
    if fn == "top1":  # the whole validation split, batch by batch
        from autoprune.zoo.data import load_data

        assert best["seen"] == len(load_data("digits", image_size=8).val_y)
        assert 0.0 <= best["accuracy"] <= 1.0
    else:  # a loss: the best trial is the lowest
        from autoprune.study import StudyStore

        losses = [r.metrics["loss"] for r in StudyStore.in_folder(run_dir).records() if not r.failed]
        assert best["loss"] == pytest.approx(min(losses)) and "accuracy" not in best


def test_an_evaluator_without_accuracy_or_loss_is_one_error(user, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "metrics.py").write_text(METRICS)
    out = _cli(["search", "--model", "resnet20", "--image-size", "8", "--width-mult", "0.5",
                "--trials", "2", "--evaluator", f"{tmp_path / 'metrics.py'}:nothing",
                "--run-dir", str(tmp_path / "r"), "--no-progress"], user, check=False)
    text = " ".join(out.stderr.split())
    assert out.returncode == 2 and "must return a dict such as {'accuracy'" in text, text[-1500:]
    assert not (tmp_path / "r" / "run.json").exists()


def test_a_baseline_trained_again_is_kept_and_its_runs_refuse_to_go_on(user) -> None:  # noqa: ANN001
    model = ["--model", f"{user['file']}:make", "--model-arg", "width=8", "--image-size", "8"]
    run_dir = user["root"] / "retrained"
    _cli(["train", *model, "--epochs", "1"], user)
    first = sorted(user["cache"].glob("user_*_8px.pt"))
    _cli(["search", *model, "--trials", "2", "--round-to", "2", "--run-dir", str(run_dir),
          "--no-progress"], user)
    recorded = json.loads((run_dir / "run.json").read_text())["baseline"]["sha256"]
    # Training again with other epochs never overwrites the baseline the run searched.
    _cli(["train", *model, "--epochs", "2"], user)
    kept = [p for p in user["cache"].glob("user_*.pt") if recorded[:12] in p.name]
    assert len(kept) == 1 and kept[0].with_suffix(".json").is_file() and first
    for args in (["search", *model, "--trials", "3", "--round-to", "2", "--run-dir", str(run_dir),
                  "--no-progress"],
                 ["pick", "--run", str(run_dir), "--target", "flops=60%"],
                 ["recover", str(run_dir), "--steps", "2", "--no-progress"]):
        out = _cli(args, user, check=False)
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert "changed since it searched" in out.stderr and str(kept[0]) in out.stderr
