"""A user's own images and model everywhere: an image folder (read lazily) and an npz through
search, profile, latency, pick, export and once-for-all; the Python API's Supernet on a module
and data of the user's; a user's files through Ray; every bad folder is one error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import autoprune
from autoprune.ofa.elastic import SupernetError
from autoprune.ofa.train import SupernetSettings
from autoprune.zoo.data import load_data
from autoprune.zoo.images import LazyImages
from conftest import run_cli
from test_user_model import METRICS

NET = '''
from torch import nn


def make(width=16, classes=10):
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))
'''



def _write_digits(root: Path, rows: range | None = None, size: int = 8) -> Path:
    """sklearn's digits as grey PNG files, one sub-folder per class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in rows or range(len(digits.target)):
        path = root / f"digit{digits.target[i]}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((digits.images[i] * 15.9).astype(np.uint8))
        (image if size == 8 else image.resize((size, size))).save(path)
    return root


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own")
    (root / "mynet.py").write_text(NET)
    (root / "metric.py").write_text(METRICS)
    _write_digits(root / "images")
    from autoprune.user_model import build_user_model

    torch.manual_seed(0)
    torch.save({"model": build_user_model(f"{root / 'mynet.py'}:make").state_dict()},
               root / "w.pt")
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(root / "own.npz", x=(digits.images * 15.9).astype(np.uint8), y=digits.target)
    return {"root": root, "file": root / "mynet.py", "images": root / "images",
            "weights": root / "w.pt", "npz": root / "own.npz", "cache": root / "cache",
            "metric": root / "metric.py"}


def _cli(args: list[str], own: dict[str, Path], check: bool = True):  # noqa: ANN202
    return run_cli(args, own["cache"], check, env={"OMP_NUM_THREADS": "1"})


def test_an_image_folder_is_split_seeded_and_decoded_a_batch_at_a_time(own) -> None:  # noqa: ANN001
    from PIL import Image

    data = load_data(str(own["images"]), image_size=16)
    assert isinstance(data.val_x, LazyImages) and data.val_x.shape == (len(data.val_y), 1, 16, 16)
    assert data.about["split"] == {"train": 1222, "val": 216, "test": 359}  # as digits split
    assert data.about["classes"] == [f"digit{i}" for i in range(10)]
    assert data.about["native_size"] == [8, 8] and data.about["channels"] == "grey"
    assert not data.train_x._cache and not data.test_x._cache  # nothing decoded yet
    x, y = next(iter(data.loader("train", batch_size=32, shuffle=True, seed=1)))
    assert x.shape == (32, 1, 16, 16) and len(data.train_x._cache) == 32  # only that batch
    # a pixel is the file's, resized and normalised by the stated statistics
    i = int(torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(1))[0])
    with Image.open(data.train_x.files[i]) as img:
        pixels = np.asarray(img.convert("L").resize((16, 16), Image.Resampling.BILINEAR)) / 255
    mean, std = float(data.train_x.mean), float(data.train_x.std)
    assert torch.allclose(x[0, 0], (torch.tensor(pixels, dtype=torch.float32) - mean) / std,
                          atol=1e-5)
    assert int(y[0]) == int(data.train_y[i])
    # with no room for a cache, a folder larger than memory is read and forgotten batch by batch
    lean = LazyImages(data.val_x.files, channels=1, size=16, cache_mb=0)
    assert lean[0:64].shape == (64, 1, 16, 16) and not lean._cache
    assert 0.95 < float(data.train_x[torch.arange(500)].std()) < 1.05  # training statistics


def test_an_image_folder_with_its_own_splits_keeps_them(own, tmp_path) -> None:  # noqa: ANN001
    _write_digits(tmp_path / "d" / "train", range(0, 1200))
    _write_digits(tmp_path / "d" / "test", range(1200, 1797))
    data = load_data(str(tmp_path / "d"), image_size=8)
    split, origin = data.about["split"], data.about["split_from"]
    assert split["test"] == 597 and split["train"] + split["val"] == 1200
    assert origin["test"] == "test/" and origin["val"].startswith("15% of train/")
    _write_digits(tmp_path / "d" / "val", range(1100, 1200))
    data = load_data(str(tmp_path / "d"), image_size=8)
    assert data.about["split"] == {"train": 1200, "val": 100, "test": 597}


def _bad(tmp_path: Path, case: str) -> Path:
    root = tmp_path / case
    if case == "one-class":
        _write_digits(root, range(0, 200))
        for sub in root.iterdir():
            if sub.name != "digit0":
                shutil.rmtree(sub)
    elif case == "unreadable":
        _write_digits(root, range(0, 60))
        (root / "digit3" / "broken.png").write_text("not an image")
    elif case == "mixed-sizes":
        _write_digits(root, range(0, 40))
        _write_digits(root, range(40, 60), size=12)
    elif case == "val-without-train":
        _write_digits(root / "val", range(0, 60))
    return root


@pytest.mark.parametrize(("case", "message"), [
    ("one-class", "needs two or more class sub-folders holding .png/.jpg/.jpeg files (found: "
                  "digit0)"),
    ("unreadable", "broken.png as an image"),
    ("mixed-sizes", "images of different sizes"),
    ("val-without-train", "has val/ but no train/"),
    ("missing", "no such folder or .npz file"),
])
def test_a_bad_image_folder_is_one_error(own, tmp_path, case, message) -> None:  # noqa: ANN001
    folder = _bad(tmp_path, case)
    with pytest.raises(ValueError) as caught:
        load_data(str(folder) + ("/" if case == "missing" else ""), image_size=8)
    assert message in str(caught.value)
    if case == "unreadable":  # and from the command line, before any work
        run_dir = tmp_path / "r"
        out = _cli(["search", "--model", f"{own['file']}:make", "--data", str(folder),
                    "--image-size", "8", "--trials", "2", "--run-dir", str(run_dir),
                    "--no-progress"], own, check=False)
        assert out.returncode == 2 and message in " ".join(out.stderr.split()), out.stderr[-999:]
        assert not (run_dir / "run.json").exists()


def test_a_user_model_with_weights_on_an_image_folder_goes_everywhere(own, tmp_path) -> None:  # noqa: ANN001
    model = ["--model", f"{own['file']}:make", "--weights", str(own["weights"])]
    run_dir = tmp_path / "run"
    out = _cli(["search", *model, "--data", str(own["images"]), "--image-size", "16",
                "--trials", "4", "--target", "flops=50%", "--run-dir", str(run_dir), "--json",
                "--no-progress"], own)
    summary = json.loads(out.stdout)
    assert summary["data"]["path"] == str(own["images"].resolve())
    assert summary["data"]["read"] == "lazily, a batch at a time"
    assert summary["best"]["costs"]["macs"] <= 0.5 * summary["dense"]["costs"]["macs"]
    picked = _cli(["pick", "--run", str(run_dir), "--target", "flops=70%", "--json"], own)
    assert json.loads(picked.stdout)["costs"]["macs"] <= 0.7 * summary["dense"]["costs"]["macs"]
    done = _cli(["export", str(run_dir), "-o", str(tmp_path / "m.onnx"), "--json"], own)
    assert json.loads(done.stdout)["max_abs_diff"] <= 1e-3
    timed = _cli(["latency", *model, "--data", str(own["images"]), "--image-size", "16",
                  "--repeats", "5", "--json"], own)
    assert json.loads(timed.stdout)["device"]["input_shape"] == [1, 1, 16, 16]
    table = _cli(["profile", *model, "--data", str(own["images"]), "--image-size", "16",
                  "--grid", "2", "--calibration", "3", "-o", str(tmp_path / "lut.json"),
                  "--json"], own)
    assert json.loads(table.stdout)["layers"] >= 3


def test_once_for_all_on_a_user_model_and_an_npz(own, tmp_path) -> None:  # noqa: ANN001
    folder = tmp_path / "sn"
    _cli(["ofa", "train", "--model", f"{own['file']}:make", "--model-arg", "width=24",
          "--data", str(own["npz"]), "--image-size", "8", "--epochs", "1", "--samples", "12",
          "--round-to", "4", "-o", str(folder), "--no-progress"], own)
    meta = json.loads((folder / "supernet.json").read_text())
    assert meta["model_spec"]["factory"] == f"{own['file']}:make"
    assert meta["model_spec"]["args"] == {"width": 24}
    assert meta["data"] == str(own["npz"].resolve()) and meta["data_name"].startswith("npz-own-")
    out = _cli(["ofa", "extract", str(folder), "--target", "flops=50%", "--json"], own)
    extracted = json.loads(out.stdout)[0]
    assert extracted["met"] and Path(extracted["path"]).with_suffix(".pt2").is_file()
    done = _cli(["export", str(Path(extracted["path"]).with_suffix(".json")), "-o",
                 str(tmp_path / "sub.onnx"), "--json"], own)
    assert json.loads(done.stdout)["max_abs_diff"] <= 1e-3
    sub = autoprune.load_pruned(folder / "subnets", choice="flops-50")
    assert sub(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_the_api_trains_a_supernet_on_a_module_and_data_of_the_user_s(own, tmp_path) -> None:  # noqa: ANN001
    from torch import nn

    data = load_data(str(own["images"]), image_size=8)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    dense = {k: v.clone() for k, v in net.state_dict().items()}
    settings = SupernetSettings(epochs=1, samples=12, round_to=4, progress=False,
                                output=tmp_path / "sn", cache_dir=own["cache"])
    supernet = autoprune.Supernet.train(settings, model=net, data=data)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in dense.items())  # untouched
    sub = supernet.extract(config={u.name: 8 for u in supernet.space.units})
    assert sub(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in net.parameters())
    with pytest.raises(SupernetError, match="trained from a module of class .*model=<an instance"):
        autoprune.Supernet.load(tmp_path / "sn")
    again = autoprune.Supernet.load(tmp_path / "sn", model=net, data=data)
    assert again.meta["data_name"] == data.name
    with pytest.raises(SupernetError, match="was trained on data passed to the API"):
        autoprune.Supernet.load(tmp_path / "sn", model=net).data  # noqa: B018


def test_a_user_s_model_and_evaluator_files_reach_ray_workers(own, tmp_path) -> None:  # noqa: ANN001
    run_dir = tmp_path / "r"
    out = _cli(["search", "--model", f"{own['file']}:make", "--weights", str(own["weights"]),
                "--data", str(own["images"]), "--image-size", "8", "--evaluator",
                f"{own['metric']}:top1", "--executor", "ray", "--workers", "2", "--trials", "4",
                "--target", "flops=50%", "--run-dir", str(run_dir), "--json", "--no-progress"],
               own)
    from autoprune.study import StudyStore

    records = StudyStore.in_folder(run_dir).records()
    # (two units: the asked trials may hold repeats, which the search does not run twice)
    assert len(records) >= 2 and not any(r.failed for r in records), [r.reason for r in records]
    assert 0.0 <= json.loads(out.stdout)["best"]["metrics"]["accuracy"] <= 1.0


def test_readme_s_own_model_example_runs_as_written(tmp_path) -> None:  # noqa: ANN001
    """The fenced block of README's "Your own model and data", in an empty folder, with the
    virtual environment active (its bin first on PATH), as the README says."""
    import os
    import re
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Your own model and data"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README's own-model section has no ```bash example"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "AUTOPRUNE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "COLUMNS": "120"}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block.group(1)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("torch.Size([1, 10])")
    best = json.loads((tmp_path / "runs" / "mynet" / "best.json").read_text())
    assert best["model_spec"]["factory"] == f"{(tmp_path / 'mynet.py').resolve()}:make"
    assert (tmp_path / "mynet.onnx").stat().st_size > 0
