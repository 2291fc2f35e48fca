"""The command line end to end, on a small model so the test stays quick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import autoprune
from conftest import run_cli

SMALL = ["--model", "resnet20", "--image-size", "8", "--width-mult", "0.5", "--round-to", "4"]


_cli = run_cli


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def finished_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("runs") / "r20"
    # A short baseline, cached first: the search then loads it instead of training its own.
    _cli(["train", *SMALL[:6], "--epochs", "3"], cache)
    out = _cli(["search", *SMALL, "--target", "flops=50%", "--agent", "random", "--trials", "6",
                "--run-dir", str(run_dir), "--json", "--no-progress"], cache)
    return run_dir, json.loads(out.stdout)


def test_json_summary_follows_the_contract(finished_run: tuple[Path, dict]) -> None:
    run_dir, summary = finished_run
    assert set(summary) >= {"target", "dense", "best", "trials", "run_dir"}
    assert summary["trials"] == 6
    assert Path(summary["run_dir"]) == run_dir
    dense, best = summary["dense"], summary["best"]
    assert set(dense["costs"]) >= {"macs", "params"}
    assert 0.0 <= dense["metrics"]["accuracy"] <= 1.0
    assert best["costs"]["macs"] <= 0.5 * dense["costs"]["macs"]
    assert summary["target"]["flops=50%"]["metric"] == "macs"
    assert {"accuracy", "test_accuracy"} <= set(best["metrics"])
    assert all(isinstance(v, int) and v > 0 for v in best["units"].values())


def test_run_folder_holds_study_choice_model_and_plot(finished_run: tuple[Path, dict]) -> None:
    run_dir, summary = finished_run
    for name in ("study.db", "best.json", "pruned.pt", "pareto.png", "summary.json", "run.json"):
        assert (run_dir / name).exists(), name
    assert (run_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    choice = json.loads((run_dir / "best.json").read_text())
    assert choice["config"] == summary["best"]["units"]
    model = autoprune.load_pruned(run_dir)
    out = model(torch.zeros(3, 1, 8, 8))
    assert out.shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == summary["best"]["costs"]["params"]


def test_the_chosen_network_loads_as_an_exported_program_without_autoprune(
        finished_run: tuple[Path, dict]) -> None:
    run_dir, summary = finished_run
    assert summary["files"]["program"] == str(run_dir / "pruned.pt2")
    # a fresh interpreter with torch alone: no autoprune, no model code
    script = ("import sys, torch; sys.modules['autoprune'] = None; "
              f"m = torch.export.load({str(run_dir / 'pruned.pt2')!r}).module(); "
              "print(tuple(m(torch.zeros(4, 1, 8, 8)).shape))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=run_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(4, 10)"  # any batch, not only the traced one
    expected = autoprune.load_pruned(run_dir)(torch.zeros(4, 1, 8, 8))
    program = torch.export.load(str(run_dir / "pruned.pt2")).module()
    assert torch.allclose(program(torch.zeros(4, 1, 8, 8)), expected, atol=1e-5)


@pytest.mark.parametrize(("fmt", "name"), [("onnx", "m.onnx"), ("torchscript", "m.ts"),
                                           ("exported-program", "m.pt2"), ("state_dict", "m.pt")])
def test_export_writes_a_checked_file_in_each_format(finished_run: tuple[Path, dict], cache: Path,
                                                     tmp_path: Path, fmt: str, name: str) -> None:
    run_dir, _ = finished_run
    out = _cli(["export", str(run_dir), "-o", str(tmp_path / name), "--json"], cache)
    done = json.loads(out.stdout)
    assert done["format"] == fmt and done["bytes"] == (tmp_path / name).stat().st_size > 0
    if fmt == "state_dict":
        assert done["max_abs_diff"] is None
        state = torch.load(tmp_path / name, weights_only=True)
        assert state.keys() == autoprune.load_pruned(run_dir).state_dict().keys()
    else:
        assert 0.0 <= done["max_abs_diff"] <= 1e-4 + 1e-3  # within the stated tolerance
        assert "largest difference from torch" in " ".join(out.stderr.split())


def test_export_refuses_what_it_cannot_write(finished_run: tuple[Path, dict], cache: Path,
                                             tmp_path: Path) -> None:
    run_dir, _ = finished_run
    bad = _cli(["export", str(run_dir), "-o", str(tmp_path / "m.bin"), "--format", "tflite"],
               cache, check=False)
    assert bad.returncode == 2 and "choose one of onnx, torchscript" in " ".join(bad.stderr.split())
    missing = _cli(["export", str(tmp_path), "-o", str(tmp_path / "m.onnx")], cache, check=False)
    assert missing.returncode == 2 and "best.json" in missing.stderr


def test_every_trial_in_the_study_meets_the_budget(finished_run: tuple[Path, dict]) -> None:
    import optuna

    run_dir, summary = finished_run
    study = optuna.load_study(study_name="autoprune", storage=f"sqlite:///{run_dir / 'study.db'}")
    limit = summary["target"]["flops=50%"]["limit"]
    assert len(study.trials) == 6
    for t in study.trials:
        assert t.user_attrs["costs"]["macs"] <= limit
        assert set(t.params) == set(summary["best"]["units"])  # per-unit ratios as params


def test_rerun_resumes_and_extends(finished_run: tuple[Path, dict], cache: Path) -> None:
    run_dir, _ = finished_run
    out = _cli(["search", *SMALL, "--target", "flops=50%", "--agent", "random", "--trials", "8",
                "--run-dir", str(run_dir), "--json", "--no-progress"], cache)
    assert json.loads(out.stdout)["trials"] == 8


def test_a_different_search_in_the_same_folder_is_refused(finished_run: tuple[Path, dict],
                                                          cache: Path) -> None:
    run_dir, _ = finished_run
    out = _cli(["search", *SMALL, "--target", "flops=30%", "--run-dir", str(run_dir),
                "--no-progress"], cache, check=False)
    assert out.returncode == 2
    assert "different search" in out.stderr


@pytest.mark.parametrize("args, hint", [
    (["--target", "flops=abc"], "positive number"),
    (["--target", "latency=fast"], "cannot read the latency"),
    (["--model", "resnet1000"], "available models"),
    (["--agent", "nope"], "available"),
    (["--target", "flops=0.1%"], "cannot be met"),
])
def test_bad_input_gets_one_clear_error(args: list[str], hint: str, cache: Path,
                                        tmp_path: Path) -> None:
    out = _cli(["search", *SMALL, *args, "--run-dir", str(tmp_path / "r"), "--no-progress"],
               cache, check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error:" in out.stderr and hint in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr


def test_a_run_folder_whose_study_is_not_a_database_gets_one_clear_error(
        cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "study.db").write_text("these are not the trials you are looking for\n")
    out = _cli(["search", *SMALL, "--run-dir", str(run_dir), "--no-progress"], cache,
               check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    said = " ".join(out.stderr.split())
    assert "cannot open the study" in said and "not a database" in said and "--run-dir" in said
    assert "Traceback" not in out.stderr


def test_help_explains_flops_are_macs() -> None:
    out = subprocess.run([sys.executable, "-m", "autoprune.cli", "search", "--help"],
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    text = "".join(out.stdout.split())
    assert "multiply-accumulates" in text and "macs" in text


def test_lists_models_and_agents() -> None:
    models = subprocess.run([sys.executable, "-m", "autoprune.cli", "models"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert {"resnet20", "resnet56", "vgg16", "mobilenetv1", "mobilenetv2"} <= set(models)
    agents = subprocess.run([sys.executable, "-m", "autoprune.cli", "agents"], capture_output=True,
                            text=True, check=True).stdout
    assert "random" in agents and "uniform" in agents


def test_a_dense_network_within_every_budget_is_said_so_and_not_searched(
        finished_run: tuple[Path, dict], cache: Path, tmp_path: Path) -> None:
    # A budget the dense network meets, predicted and measured (seconds, on any host).
    out = _cli(["search", *SMALL, "--target", "latency=10s", "--target", "flops=100%",
                "--trials", "5", "--run-dir", str(tmp_path / "r"), "--json", "--no-progress"],
               cache)
    summary = json.loads(out.stdout)
    assert summary["dense_meets_budgets"] is True and summary["trials"] == 0
    assert summary["dense"]["measured"]["latency_ms"] < 10_000
    assert "already meets every budget" in " ".join(out.stderr.split())
    assert not (tmp_path / "r" / "best.json").exists()  # nothing was chosen: nothing to prune


def test_optuna_dashboard_serves_a_run_s_study(finished_run: tuple[Path, dict]) -> None:
    # headless, on the loopback address, bounded in time: what README tells users to run
    import shutil
    import socket
    import time
    import urllib.request

    run_dir, summary = finished_run
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert exe, "optuna-dashboard is in the dev extra"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([exe, f"sqlite:///{run_dir / 'study.db'}", "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.monotonic() + 120, None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                assert server.poll() is None, "the dashboard exited"
                time.sleep(0.5)
        assert body is not None, "the dashboard did not answer within 120 s"
        (study,) = body["study_summaries"]
        assert study["study_name"] == "autoprune" and study["directions"] == ["maximize"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}"
                                    "?after=0", timeout=10) as r:
            trials = json.loads(r.read())["trials"]
        from autoprune.study import StudyStore  # other tests may have resumed this run

        assert len(trials) == len(StudyStore.in_folder(run_dir).records()) >= summary["trials"]
    finally:
        server.terminate()
        server.wait(timeout=30)
