"""``autoprune space`` and ``autoprune.coverage.space_coverage``: the units a space found, the
share of MACs and parameters it can remove, and every layer kept dense with its reason; the
same report as ``space.json`` in a search's run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from typer.testing import CliRunner

from autoprune.cli import app
from autoprune.coverage import UNREACHED, space_coverage
from autoprune.search_spaces import ChannelSpace, reference_macs, reference_params
from autoprune.zoo.tasks import zoo_architecture

SMALL = ["--model", "resnet20", "--image-size", "8", "--width-mult", "0.5"]


def _invoke(args: list[str], cache: Path):  # noqa: ANN202 - typer's Result
    return CliRunner().invoke(app, args, env={"AUTOPRUNE_CACHE": str(cache), "COLUMNS": "200"})


def test_space_json_lists_units_removable_share_and_dense_layers(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    out = _invoke(["space", *SMALL, "--json"], cache)
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["space"] == "channel" and report["round_to"] == 8
    units = report["units"]
    assert units and {"name", "kind", "width", "floor", "layers"} <= set(units[0])
    assert all(1 <= u["floor"] < u["width"] for u in units)
    # exact: the layer table's dense totals are the direct counts of the untrained model
    model, example = zoo_architecture("resnet20", "digits", image_size=8, width_mult=0.5)
    assert report["dense"] == {"macs": reference_macs(model, (example,)),
                               "params": reference_params(model)}
    assert report["reference"] == report["dense"]
    assert 0 < report["thinnest"]["macs"] < report["dense"]["macs"]
    assert report["removable"]["macs"] == pytest.approx(
        1 - report["thinnest"]["macs"] / report["dense"]["macs"], abs=1e-4)
    # layer1's 8 channels are no more than --round-to 8: kept dense, and said why
    dense = {d["layer"]: d for d in report["dense_layers"]}
    assert "layer1.0.conv1" in dense and "round_to 8" in dense["layer1.0.conv1"]["reason"]
    assert not any(d["layer"] in u["layers"] for u in units for d in report["dense_layers"])
    # the architecture is all it needs: no baseline was trained or cached
    assert not cache.exists() or not any(cache.rglob("*.pt"))


def test_space_prints_tables_for_people_and_round_to_changes_the_units(tmp_path: Path) -> None:
    out = _invoke(["space", *SMALL], tmp_path)
    assert out.exit_code == 0, out.output
    for words in ("units of the channel space", "removable", "layers kept dense",
                  "layer2.0.conv1", "round_to 8"):
        assert words in out.stdout, words
    finer = json.loads(_invoke(["space", *SMALL, "--round-to", "4", "--min-ratio", "0.5",
                                "--json"], tmp_path).stdout)
    coarse = json.loads(_invoke(["space", *SMALL, "--json"], tmp_path).stdout)
    assert len(finer["units"]) > len(coarse["units"])
    assert all(u["floor"] >= u["width"] // 2 for u in finer["units"])


def test_space_with_a_weight_granularity(tmp_path: Path) -> None:
    out = _invoke(["space", *SMALL, "--granularity", "unstructured", "--levels", "0,50,90",
                   "--json"], tmp_path)
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["space"] == "unstructured"
    assert report["units"] and all(u["kind"] == "weights" for u in report["units"])
    assert 0 < report["removable"]["params"] < 1
    assert any("first and last layers" in n for n in report["notes"])


@pytest.mark.parametrize(("args", "words"), [
    (["--granularity", "bogus"], "unknown granularity"),
    (["--levels", "0,50"], "--levels is for --granularity"),
    (["--weights", "w.pt"], "--weights is for a model of your own"),
    (["--data", "python-stdlib"], "use --model chargpt"),
    (["--model", "no-such-model"], "no-such-model"),
])
def test_bad_space_options_are_one_clear_error(tmp_path: Path, args: list[str],
                                                words: str) -> None:
    out = _invoke(["space", *SMALL, *args], tmp_path)
    assert out.exit_code == 2, out.output
    assert "error:" in out.output and words in out.output, out.output
    assert "Traceback" not in out.output


def test_coverage_names_a_weight_normed_layer_with_its_note() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), weight_norm(nn.Conv2d(16, 16, 3, padding=1)),
        nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 4)).eval()
    x = torch.randn(2, 3, 8, 8)
    space = ChannelSpace.from_model(model, x, round_to=4)
    report = space_coverage(space, model, x)
    assert [u["name"] for u in report["units"]] == ["4"]
    reasons = {d["layer"]: d["reason"] for d in report["dense_layers"]}
    assert "parametrised" in reasons["2"] and reasons["2"].startswith("2 is kept dense")
    assert reasons["0"] == UNREACHED  # its group runs into the weight-normed conv
    assert report["reference"]["macs"] == report["dense"]["macs"]
    assert report["notes"] == list(space.notes)
    json.dumps(report)  # plain JSON


def test_a_search_writes_space_json_into_its_run_folder(tmp_path: Path) -> None:
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    out = _invoke(["train", *SMALL, "--epochs", "1"], cache)
    assert out.exit_code == 0, out.output
    out = _invoke(["search", *SMALL, "--target", "flops=80%", "--agent", "random", "--trials",
                   "2", "--run-dir", str(run_dir), "--json", "--no-progress"], cache)
    assert out.exit_code == 0, out.output
    written = json.loads((run_dir / "space.json").read_text())
    shown = json.loads(_invoke(["space", *SMALL, "--json"], cache).stdout)
    for key in ("units", "dense", "thinnest", "removable", "dense_layers", "notes"):
        assert written[key] == shown[key], key
