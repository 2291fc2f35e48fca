from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from torch import nn

from conftest import kill_after_trials

import autoprune
from autoprune.search_spaces import ChannelSpace
from autoprune.problem import PruningProblem
from autoprune.targets import parse_targets


def width_score(model: nn.Module) -> dict[str, float]:
    """A cheap evaluator: more parameters score higher, in [0, 1]."""
    n = sum(p.numel() for p in model.parameters())
    return {"accuracy": n / (n + 5000.0)}


def test_repair_lands_every_point_inside_the_budget_and_close_to_it(user_model: nn.Module) -> None:
    space = ChannelSpace.from_model(user_model, torch.randn(1, 1, 16, 16), round_to=4)
    problem = PruningProblem(space, parse_targets(["flops=50%", "params=70%"]))
    rng = np.random.default_rng(0)
    used = []
    for _ in range(30):
        x = problem.repair(rng.random(space.dim))
        costs = problem.costs(space.decode(x))
        assert problem.feasible(costs)
        used.append(costs["macs"] / problem.budgets[0].limit)
    assert np.median(used) > 0.8  # repair grows points too: little budget is wasted


def test_allocate_meets_the_budget_and_applies(user_model: nn.Module) -> None:
    x = torch.randn(2, 1, 16, 16)
    alloc = autoprune.allocate(user_model, example_inputs=x, target="flops=50%",
                               evaluate=width_score, agent="random", trials=12, round_to=4)
    # Two units at steps of 4 channels: the budget leaves only ~10 distinct candidates, and a
    # configuration proposed again costs no trial, so the search ends when they are all scored.
    configs = [tuple(sorted(r.config.items())) for r in alloc.trials]
    assert 8 <= len(configs) <= 12 and len(set(configs)) == len(configs)
    for r in alloc.trials:
        assert r.costs["macs"] <= 0.5 * alloc.dense_costs["macs"] + 1e-6
    assert set(alloc.units) == {"stem", "expand"}
    assert all(0 < u["ratio"] <= 1 for u in alloc.units.values())
    pruned = alloc.apply(user_model)
    assert pruned(x).shape == (2, 10)
    assert sum(p.numel() for p in pruned.parameters()) == alloc.costs["params"]
    best = max(r.objective for r in alloc.trials)
    assert alloc.metrics["accuracy"] == best


def test_uniform_agent_gives_one_uniform_allocation(user_model: nn.Module) -> None:
    alloc = autoprune.allocate(user_model, example_inputs=torch.randn(1, 1, 16, 16),
                               target="flops=50%", evaluate=width_score, agent="uniform",
                               trials=5, round_to=4)
    assert len(alloc.trials) == 1  # the uniform method is one point
    ratios = [u["ratio"] for u in alloc.units.values()]
    assert max(ratios) - min(ratios) <= 0.25


def test_failed_and_nan_trials_are_recorded_not_fatal(user_model: nn.Module) -> None:
    calls = {"n": 0}

    def flaky(model: nn.Module) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        if calls["n"] == 3:
            return {"accuracy": float("nan")}
        return width_score(model)

    alloc = autoprune.allocate(user_model, example_inputs=torch.randn(1, 1, 16, 16),
                               target="flops=60%", evaluate=flaky, trials=6, round_to=4)
    failed = [r for r in alloc.trials if r.failed]
    assert len(failed) == 2
    assert any("boom" in r.reason for r in failed)
    assert any("finite" in r.reason for r in failed)


_KILLED_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import ResidualDepthwiseNet, slow_width_score
    import autoprune
    torch.manual_seed(0)
    model = ResidualDepthwiseNet()
    alloc = autoprune.allocate(model, example_inputs=torch.randn(1, 1, 16, 16),
                               target="flops=50%", evaluate=slow_width_score({sleep}),
                               trials={trials}, round_to=2, run_dir={run_dir!r}, seed=7)
    print(len(alloc.trials))
""")


def _script(tmp_path: Path, sleep: float, trials: int) -> Path:
    path = tmp_path / f"run_{sleep}.py"
    path.write_text(_KILLED_SCRIPT.format(tests=str(Path(__file__).parent), sleep=sleep,
                                          trials=trials, run_dir=str(tmp_path / "run")))
    return path


def test_resume_after_kill_keeps_every_finished_trial(tmp_path: Path) -> None:
    import optuna

    proc = subprocess.Popen([sys.executable, str(_script(tmp_path, 0.4, 40))])
    db = tmp_path / "run" / "study.db"
    done = kill_after_trials(proc, db)
    assert done >= 4, "the search did not get going"
    before = optuna.load_study(study_name="autoprune", storage=f"sqlite:///{db}").trials
    kept = [(t.params, t.value) for t in before]

    out = subprocess.run([sys.executable, str(_script(tmp_path, 0.0, 10))], check=True,
                         capture_output=True, text=True)
    assert out.stdout.strip() == "10"
    after = optuna.load_study(study_name="autoprune", storage=f"sqlite:///{db}").trials
    assert len(after) == 10
    assert [(t.params, t.value) for t in after[:len(kept)]] == kept


def test_processes_opening_a_new_run_folder_at_once_all_get_the_study(tmp_path: Path) -> None:
    # A search starting while another process (optuna-dashboard, a second search, a test
    # polling the folder) opens the same new study.db: both create its tables at once.
    # A barrier of files, not of time: each process says it is ready (its imports done), and
    # all open the folder once all six are, however slow the host is to start them.
    gate = tmp_path / "gate"
    gate.mkdir()
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from autoprune.study import StudyStore
        gate = Path({str(gate)!r})
        (gate / sys.argv[1]).touch()
        while len(list(gate.iterdir())) < 6:
            time.sleep(0.01)
        store = StudyStore.in_folder(Path({str(tmp_path / "run")!r}))
        print(len(store.records()))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(6)]
    outs = [p.communicate(timeout=600) for p in procs]  # a hang guard only
    assert all(p.returncode == 0 for p in procs), [err[-600:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["0"] * 6


def test_a_budget_close_to_the_thinnest_network_gets_a_note(user_model: nn.Module) -> None:
    from autoprune.pipeline import tightness as _tightness
    from autoprune.targets import parse_targets

    space = ChannelSpace.from_model(user_model, torch.randn(1, 1, 16, 16), round_to=8)
    dense = PruningProblem(space, [])
    low, high = dense.min_costs["macs"], dense.dense_costs["macs"]
    near = PruningProblem(space, parse_targets(f"macs={low + 0.05 * (high - low):.0f}"))
    note = _tightness(near, near.budgets[0])
    assert note is not None and "--finetune-steps" in note and f"{low:,.0f} macs" in note
    roomy = PruningProblem(space, parse_targets("flops=60%"))
    assert 0.6 * high > low + 0.1 * (high - low) and _tightness(roomy, roomy.budgets[0]) is None
