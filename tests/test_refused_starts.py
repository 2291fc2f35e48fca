"""A refused or failed start of ``autoprune search`` leaves nothing behind that would block the
corrected command: no run.json, no empty study, no empty folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli

SMALL = ["--model", "resnet20", "--image-size", "8", "--width-mult", "0.5", "--no-progress"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    run_cli(["train", "--model", "resnet20", "--image-size", "8", "--width-mult", "0.5",
             "--epochs", "1"], cache)
    return cache


@pytest.mark.parametrize("refused", [["--target", "flops=1%"], ["--round-to", "1000"],
                                     ["--model", "nosuchnet"], ["--agent", "nosuch"]])
def test_a_refused_search_leaves_no_folder_and_the_retry_runs(cache: Path, tmp_path: Path,
                                                               refused: list[str]) -> None:
    run = tmp_path / "runs" / "r"
    args = ["search", *SMALL, "--trials", "2", "--run-dir", str(run)]
    out = run_cli([*args, "--target", "flops=50%", *refused], cache, check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert not run.exists(), sorted(p.name for p in run.iterdir())
    out = run_cli([*args, "--target", "flops=50%", "--json"], cache)
    assert json.loads(out.stdout)["trials"] == 2
