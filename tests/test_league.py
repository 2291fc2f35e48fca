"""The agents league (benchmarks/agents.py) runs end to end on a tiny task and reports what its
table claims: every run within the budget, references first, chains included."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def league():
    spec = importlib.util.spec_from_file_location("league", ROOT / "benchmarks" / "agents.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["league"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_a_small_league_reports_every_agent_within_the_budget(league, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    settings = league.LeagueSettings(
        image_size=8, trials=6, seeds=(0, 1), calib_batches=2, finetune_steps=2,
        baseline_epochs=1, agents=("erk+evolution", "uniform", "random", "erk"))
    console = Console(file=(tmp_path / "log.txt").open("w"), width=200)
    result = league.run_league(settings, console=console)
    rows = result["agents"]
    assert list(rows) == ["random", "uniform", "erk+evolution", "erk"]  # references first
    assert rows["random"]["seeds"] == 2 and rows["erk"]["seeds"] == 1  # deterministic: once
    assert rows["erk+evolution"]["seeds"] == 2  # a chain with a stochastic stage: per seed
    limit = result["budget"]["limit"]
    for name, row in rows.items():
        for run in row["runs"]:
            assert run["best_costs"]["macs"] <= limit + 1e-6, name
            assert 0.0 <= run["ft_test"] <= 1.0 and len(run["curve"]) == run["trials"]
    assert rows["random"]["trials"] == 6 and rows["uniform"]["trials"] == 1
    assert result["random_final_val"] == pytest.approx(
        sum(r["best_val"] for r in rows["random"]["runs"]) / 2)
    console.print(league.league_table(result))
    json.dumps(result, default=league._jsonable)  # what main() saves


def test_a_language_league_minimises_the_loss_and_measures_the_fine_tunes_noise(league, tmp_path,
                                                                               monkeypatch):
    from autoprune.zoo.language import load_or_train_language_baseline

    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    load_or_train_language_baseline(width_mult=0.25, max_steps=60, progress=False)  # cached first
    settings = league.LeagueSettings(
        model="chargpt", data="python-stdlib", width_mult=0.25, trials=4, seeds=(0,),
        finetune_steps=3, noise_seeds=2, agents=("uniform", "random"))
    console = Console(file=(tmp_path / "log.txt").open("w"), width=200)
    result = league.run_league(settings, console=console)
    assert result["metric"] == "loss" and len(result["data"]["sha256"]) == 64
    run = result["agents"]["random"]["runs"][0]
    assert run["best_val"] == pytest.approx(min(run["curve"]))  # the lowest loss is the best
    assert result["random_final_val"] == pytest.approx(run["best_val"])
    noise = result["noise"]
    assert noise["network"] == "uniform" and len(noise["ft_val"]) == 2
    assert noise["range"] == pytest.approx(max(noise["ft_val"]) - min(noise["ft_val"]))
    console.print(league.league_table(result))
    json.dumps(result, default=league._jsonable)
