"""Weight-sparse searches end to end: ``--granularity unstructured|nm`` on the command line, the
compressed file against what ``size=`` predicts, a reloaded network scoring what the search
reported, export and recovery keeping the zeros, and the refused combinations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import autoprune
from autoprune.zoo.tasks import load_task
from conftest import run_cli

SMALL = ["--model", "resnet20", "--image-size", "8", "--width-mult", "0.5"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    run_cli(["train", *SMALL, "--epochs", "2"], cache)
    return cache


def _search(cache: Path, run: Path, *extra: str) -> dict:
    out = run_cli(["search", *SMALL, "--trials", "3", "--run-dir", str(run), "--no-progress",
                   "--json", *extra], cache)
    return json.loads(out.stdout)


def _nonzero(model: torch.nn.Module, name: str) -> int:
    return int((model.get_submodule(name).weight != 0).sum())


def test_an_unstructured_search_meets_sparsity_and_its_file_is_the_predicted_size(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "unstructured"
    summary = _search(cache, run, "--granularity", "unstructured", "--target", "sparsity=80%",
                      "--target", "size=40%", "--storage-format", "csr")
    sparse = summary["sparse"]
    assert sparse["sparsity"] >= 0.8 - 1e-9 and sparse["storage_format"] == "csr"
    assert abs(sparse["bytes"] - sparse["predicted_bytes"]) <= 0.03 * sparse["predicted_bytes"]
    assert Path(sparse["file"]).stat().st_size == sparse["bytes"]
    assert sparse["macs_nonzero"] < sparse["dense_equivalent_macs"]
    best = json.loads((run / "best.json").read_text())
    assert best["space"] == "unstructured"
    model = autoprune.load_pruned(run)  # plain weights, the zeros in place
    for unit, kept in best["config"].items():
        assert _nonzero(model, unit) == kept
    # reloaded from disk, it scores what the search reported (the search's own evaluator)
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(cache))
    task = load_task("resnet20", "digits", image_size=8, width_mult=0.5, progress=False)
    val = task.evaluator(calib_batches=16, seed=0)(model)
    assert val["accuracy"] == pytest.approx(summary["best"]["metrics"]["accuracy"], abs=1e-9)
    # the compressed file loads (weights only) into the dense architecture
    from autoprune.sparse_io import load_sparse

    state = load_sparse(run / "pruned.sparse.pt")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    out = run_cli(["export", str(run), "-o", str(tmp_path / "m.onnx")], cache)
    assert (tmp_path / "m.onnx").exists(), out.stderr
    # recovery fine-tunes with the zeros masked: every unit keeps exactly its count
    run_cli(["recover", str(run), "--steps", "20", "--no-progress"], cache)
    recovered = autoprune.load_pruned(run)
    for unit, kept in best["config"].items():
        assert _nonzero(recovered, unit) <= kept
    assert not all(torch.equal(recovered.state_dict()[k], v)
                   for k, v in model.state_dict().items())


def test_an_nm_search_gives_every_group_its_pattern(cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "nm"
    _search(cache, run, "--granularity", "nm", "--nm", "2:4", "--target", "sparsity=40%",
            "--criterion", "wanda")
    best = json.loads((run / "best.json").read_text())
    assert best["criterion"] == "wanda"
    model = autoprune.load_pruned(run)
    for unit in best["config"]:
        w = model.get_submodule(unit).weight.detach()
        if int((w != 0).sum()) == w.numel():
            continue  # this layer stayed dense
        groups = w.permute(0, *range(2, w.dim()), 1).reshape(-1, 4)  # 4 along the inputs
        assert torch.all((groups != 0).sum(1) <= 2)


@pytest.mark.parametrize("args, message", [
    (["--granularity", "unstructured", "--target", "latency=5ms"], "no current CPU runtime"),
    (["--target", "sparsity=80%"], "--granularity unstructured or nm"),
    (["--granularity", "unstructured", "--criterion", "taylor"], "magnitude, wanda, sparsegpt"),
    (["--granularity", "blocks"], "choose one of"),
    (["--granularity", "nm", "--nm", "2:4,4:8"], "same share"),
])
def test_refused_combinations_are_one_clear_error(args: list[str], message: str, cache: Path,
                                                  tmp_path: Path) -> None:
    out = run_cli(["search", *SMALL, "--run-dir", str(tmp_path / "r"), "--no-progress", *args],
                  cache, check=False)
    assert out.returncode == 2 and out.stderr.count("error:") == 1, out.stderr[-2000:]
    assert message in " ".join(out.stderr.split()) and "Traceback" not in out.stderr
    assert "dense validation" not in out.stderr  # refused before any work
