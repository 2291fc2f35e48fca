"""Every bad input on the command line is one clear error that names the fix, before any work,
and names only options the failing command has (or quotes them with the command that has
them: ``autoprune search --round-to ...``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import typer.main
from typer.testing import CliRunner

from autoprune.cli import app
from autoprune.cli.hints import foreign_options, misquoted_options

ROOT = typer.main.get_command(app)
SMALL = ["--model", "resnet20", "--image-size", "8", "--width-mult", "0.5"]
FACTORIES = '''
from torch import nn


def make(width=16, in_ch=1):
    return nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def rgb():
    return make(in_ch=3)
'''


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A factory file, a text file, a pickled whole model and a plain file to trip over."""
    where = tmp_path_factory.mktemp("files")
    (where / "mynet.py").write_text(FACTORIES)
    (where / "notes.txt").write_text('{"not": "weights"}\n')
    torch.save(torch.nn.Linear(2, 2), where / "whole.pt")
    (where / "some_file.py").write_text("# a file, not a folder\n")
    return where


@pytest.fixture(scope="module")
def run_dir(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-trial search on a one-epoch baseline."""
    run = tmp_path_factory.mktemp("runs") / "r"
    for args in (["train", *SMALL, "--epochs", "1"],
                 ["search", *SMALL, "--round-to", "4", "--target", "flops=50%", "--agent",
                  "random", "--trials", "2", "--run-dir", str(run), "--no-progress"]):
        out = _invoke(args, cache)
        assert out.exit_code == 0, out.output[-2000:]
    return run


def _invoke(args: list[str], cache: Path):  # noqa: ANN202 - typer's Result
    return CliRunner().invoke(app, args, env={"AUTOPRUNE_CACHE": str(cache), "COLUMNS": "200"})


def _refused(args: list[str], cache: Path, *phrases: str, absent: tuple[str, ...] = ()) -> str:
    """``autoprune ARGS`` exits 2 with one error holding ``phrases``, before any work, naming
    no option the command lacks; returns the error, its whitespace joined."""
    out = _invoke(args, cache)
    said = " ".join(out.output.split())
    assert out.exit_code == 2, said[-2000:]
    assert len(re.findall(r"(?<![A-Za-z])[Ee]rror:", said)) == 1, said[-2000:]
    assert "Traceback" not in said
    for phrase in phrases:
        assert phrase in said, said
    for phrase in absent:
        assert phrase not in said, said
    assert "dense validation" not in said  # nothing was scored, let alone searched
    path = " ".join(args[:2] if args[0] == "ofa" else args[:1])
    assert foreign_options(said, ROOT, path) == [], said
    assert misquoted_options(said, ROOT) == [], said
    return said


# --- export's output path and format -------------------------------------------------------

def test_export_output_under_a_file_or_a_folder_is_one_error(run_dir: Path, files: Path,
                                                            cache: Path, tmp_path: Path) -> None:
    _refused(["export", str(run_dir), "-o", str(files / "some_file.py" / "model.onnx")], cache,
             "some_file.py is a file, not a folder")
    _refused(["export", str(run_dir), "-o", str(tmp_path)], cache, "is a folder",
             str(tmp_path / "model.onnx"))
    _refused(["export", str(run_dir), "-o", str(files / "some_file.py")], cache,
             "names no export format", ".onnx")
    assert (files / "some_file.py").read_text() == "# a file, not a folder\n"  # not overwritten
    _refused(["export", str(run_dir), "-o", str(tmp_path / "m.onnx"), "--format", "torchscript"],
             cache, "make them agree")


def test_export_api_refuses_a_folder_before_rebuilding(run_dir: Path, tmp_path: Path) -> None:
    from autoprune.export import ExportError, export_choice

    with pytest.raises(ExportError, match="is a folder"):
        export_choice(run_dir, tmp_path)


# --- hints name the command's own options --------------------------------------------------

def test_a_model_that_does_not_fit_the_data_names_search_s_own_options(
        files: Path, cache: Path, tmp_path: Path) -> None:
    factory = f"{files / 'mynet.py'}:rgb"
    for command in ("search", "train"):
        extra = ["--run-dir", str(tmp_path / "r")] if command == "search" else []
        _refused([command, "--model", factory, "--image-size", "8", *extra], cache,
                 "cannot take inputs of shape (1, 8, 8)", "--image-size", "--data",
                 absent=("--input-shape",))
    # latency has --input-shape, and is told of it
    _refused(["latency", "--model", factory, "--image-size", "8"], cache, "--input-shape")


def test_a_factory_argument_that_builds_an_empty_layer_is_named(files: Path, cache: Path,
                                                                tmp_path: Path) -> None:
    said = _refused(["search", "--model", f"{files / 'mynet.py'}:make", "--model-arg",
                     "width=0", "--image-size", "8", "--run-dir", str(tmp_path / "r")], cache,
                    "empty layer", "width=0", "--model-arg", absent=("--input-shape",))
    assert "UserWarning" not in said


@pytest.mark.parametrize("args, phrases", [
    (["--target", "sparsity=50%"], ("channel space", "autoprune search --granularity")),
    (["--target", "flops=1%"], ("cannot be met", "autoprune search --min-ratio --round-to")),
])
def test_pick_s_hints_quote_the_search_that_has_the_option(
        args: list[str], phrases: tuple[str, ...], run_dir: Path, cache: Path) -> None:
    _refused(["pick", str(run_dir), *args], cache, *phrases)


def test_ofa_extract_refuses_a_weight_budget_in_its_own_terms(cache: Path,
                                                              tmp_path: Path) -> None:
    _refused(["ofa", "extract", str(tmp_path / "supernet"), "--target", "sparsity=50%"], cache,
             "channel widths only", "latency=, flops= or params=")


# --- units, names and files the user gives -------------------------------------------------

@pytest.mark.parametrize("levels, phrase", [
    ("0,50,150", "got 150"), ("0,50,abc", "percents separated by commas"),
    (",", "got none"), ("0,50,50", "repeats a level"),
])
def test_levels_are_answered_in_percent(levels: str, phrase: str, cache: Path,
                                        tmp_path: Path) -> None:
    _refused(["search", *SMALL, "--granularity", "unstructured", "--target", "sparsity=50%",
              "--levels", levels, "--run-dir", str(tmp_path / "r")], cache, "--levels", phrase,
             absent=("(0.0, 0.5, 0.9)", "[0, 1)"))


def test_a_model_file_without_its_factory_names_the_file_factory_form(
        files: Path, cache: Path, tmp_path: Path) -> None:
    _refused(["search", "--model", str(files / "mynet.py"), "--run-dir", str(tmp_path / "r")],
             cache, "names a file", "mynet.py:make", "make, rgb")
    _refused(["train", "--model", "mynet"], cache, "unknown model", "path/to/file.py:factory")


@pytest.mark.parametrize("name, phrase", [
    ("notes.txt", "is not a PyTorch state dict (torch.save(model.state_dict(), path)"),
    ("whole.pt", "holds a pickled torch.nn.modules.linear.Linear, not a state dict"),
])
def test_weights_that_are_no_state_dict_are_one_line(name: str, phrase: str, files: Path,
                                                     cache: Path, tmp_path: Path) -> None:
    said = _refused(["search", "--model", f"{files / 'mynet.py'}:make", "--weights",
                     str(files / name), "--image-size", "8", "--run-dir", str(tmp_path / "r")],
                    cache, phrase, absent=("weights_only", "file an issue", "trusted source"))
    assert len(said) < 400


# --- pick takes RUN as recover and export do -----------------------------------------------

def test_pick_takes_the_run_as_an_argument_or_as_run(run_dir: Path, cache: Path) -> None:
    for args in (["pick", str(run_dir)], ["pick", "--run", str(run_dir)]):
        out = _invoke([*args, "--target", "flops=60%", "--json"], cache)
        assert out.exit_code == 0, out.output[-2000:]
        assert (run_dir / "pick-flops-60.json").exists()
    _refused(["pick", "--target", "flops=60%"], cache, "autoprune pick RUN --target")
    _refused(["pick", str(run_dir), "--run", str(run_dir.parent), "--target", "flops=60%"],
             cache, "two run folders")
    _refused(["pick", str(run_dir)], cache, "add --target")


# --- options the rest of the command line would ignore, and paths that cannot be written ---

@pytest.mark.parametrize("args, phrases", [
    (["search", *SMALL, "--model-arg", "depth=3"], ("--model-arg is for a model of your own",)),
    (["train", *SMALL, "--weights", "w.pt"], ("--weights is for a model of your own",)),
    (["latency", *SMALL, "--input-shape", "1x8x8"], ("--input-shape is for a model of your own",)),
    (["search", *SMALL, "--levels", "0,50"], ("--levels is for --granularity unstructured",)),
    (["search", *SMALL, "--granularity", "unstructured", "--target", "sparsity=50%", "--nm",
      "2:4"], ("--nm is for --granularity nm",)),
    (["search", *SMALL, "--include-ends"], ("--include-ends is for --granularity",)),
    (["search", *SMALL, "--granularity", "unstructured", "--target", "sparsity=50%",
      "--storage-format", "zip"], ("unknown --storage-format 'zip'", "bitmap")),
    (["search", *SMALL, "--lut", "lut.json"], ("no --target here is one",)),
    (["search", *SMALL, "--cpus-per-trial", "2"], ("add --executor ray",)),
    (["train", "--model", "chargpt", "--data", "python-stdlib", "--image-size", "16"],
     ("--image-size is for images",)),
])
def test_an_option_that_would_be_ignored_is_refused(args: list[str], phrases: tuple[str, ...],
                                                    cache: Path, tmp_path: Path) -> None:
    extra = ["--run-dir", str(tmp_path / "r")] if args[0] == "search" else []
    _refused([*args, *extra], cache, *phrases)
    assert not (tmp_path / "r").exists()


def test_options_that_the_model_kind_ignores_are_refused(files: Path, run_dir: Path,
                                                         cache: Path, tmp_path: Path) -> None:
    _refused(["search", "--model", f"{files / 'mynet.py'}:make", "--width-mult", "0.5",
              "--run-dir", str(tmp_path / "r")], cache, "--width-mult scales a zoo model",
             "--model-arg width=")
    _refused(["latency", "--config", str(run_dir), "--model", "vgg16"], cache,
             "--model would be ignored")


def test_training_options_that_would_be_ignored_are_refused(files: Path, run_dir: Path,
                                                           cache: Path) -> None:
    factory = ["--model", f"{files / 'mynet.py'}:make", "--image-size", "8"]
    _refused(["train", *factory, "--max-steps", "3"], cache, "--max-steps is for text")
    _refused(["train", *factory, "--retrain"], cache, "--retrain is for zoo models")
    _refused(["train", *factory, "--weights", str(files / "whole.pt"), "--epochs", "3"], cache,
             "nothing is trained", "--epochs would be ignored")
    _refused(["recover", str(run_dir), "--steps", "0", "--reconstruct", "--distill"], cache,
             "--steps 0 trains nothing", "--distill would be ignored")
    _refused(["pick", str(run_dir), "--target", "latency=1ms"], cache,
             "needs the device's table: --lut", "autoprune search --target latency=")


def test_a_folder_where_a_file_is_read_is_one_error(cache: Path, tmp_path: Path) -> None:
    supernet = tmp_path / "supernet"
    supernet.mkdir()
    (supernet / "supernet.json").write_text("{}")
    _refused(["export", str(supernet), "-o", str(tmp_path / "m.onnx")], cache,
             "is a supernet folder", f"autoprune ofa extract {supernet} --target")
    _refused(["latency", "--config", str(supernet)], cache, "is a supernet folder")
    _refused(["search", *SMALL, "--target", "latency=5ms", "--lut", str(tmp_path), "--run-dir",
              str(tmp_path / "r")], cache, "--lut", "is a folder", "autoprune profile -o")
    _refused(["latency", *SMALL, "--lut", str(tmp_path)], cache, "is a folder")


def test_paths_that_cannot_be_written_are_one_error(files: Path, cache: Path) -> None:
    file = files / "some_file.py"
    _refused(["search", *SMALL, "--run-dir", str(file)], cache, "--run-dir", "is a file")
    _refused(["search", *SMALL, "--run-dir", str(file / "r")], cache, "is a file, not a folder")
    _refused(["train", *SMALL, "--cache-dir", str(file)], cache, "--cache-dir", "is a file")
    _refused(["profile", *SMALL, "-o", str(file / "lut.json")], cache, "is a file, not a folder")
    _refused(["ofa", "train", *SMALL, "-o", str(file)], cache, "-o", "is a file")
    _refused(["ofa", "extract", str(files), "--target", "flops=50%", "-o", str(files / "s.json")],
             cache, "name the .pt to write")
    assert file.read_text() == "# a file, not a folder\n"


def test_output_on_a_model_of_one_tensor_is_refused(run_dir: Path, cache: Path,
                                                    tmp_path: Path) -> None:
    out = _invoke(["search", *SMALL, "--round-to", "4", "--output", "logits", "--trials", "1",
                   "--run-dir", str(tmp_path / "r"), "--no-progress"], cache)
    said = " ".join(out.output.split())
    assert out.exit_code == 2 and said.count("error:") == 1, said[-2000:]
    assert "returns one tensor" in said and "leave out" in said, said
