"""Recovery of the chosen network: fine-tuning, distillation, AGP, checkpoints, the run folder
and ``autoprune recover`` (a ResNet-20 at half width on digits at 16 px, trained 3 epochs)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import autoprune
import autoprune.recover as recover_mod
from autoprune.recover import CHECKPOINT, agp_schedule, recover
from autoprune.search_spaces import make_space
from autoprune.zoo.tasks import load_task
from conftest import run_cli

SMALL = ["--model", "resnet20", "--image-size", "16", "--width-mult", "0.5", "--round-to", "4"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def chosen(cache: Path) -> dict:
    """The baseline (cached for the CLI's searches too), its space, a uniform config at
    about 30% of the dense MACs, the pruned network and the run's kind of evaluator."""
    task = load_task("resnet20", "digits", image_size=16, width_mult=0.5, epochs=3,
                     cache_dir=cache, progress=False)
    space = make_space("channel", task.model, task.example_inputs(1), round_to=4, min_ratio=0.2)

    def macs(cfg: dict) -> int:
        return sum(r.macs for r in space.layer_table(cfg))

    dense = macs(space.dense_config())
    configs = [{u.name: min(u.choices, key=lambda c: abs(c - r * u.full)) for u in space.units}
               for r in (0.45, 0.5, 0.55, 0.6, 0.65)]
    config = min(configs, key=lambda c: abs(macs(c) / dense - 0.3))
    assert 0.25 <= macs(config) / dense <= 0.35
    return {"task": task, "space": space, "config": config,
            "pruned": space.apply(task.model, config),
            "evaluate": task.evaluator(calib_batches=8, seed=0)}


class _Killed(Exception):
    pass


def _kill_after(monkeypatch: pytest.MonkeyPatch, saves: int) -> list[Path]:
    """Make the ``saves``-th checkpoint the last: the recovery dies right after writing it."""
    real, done = recover_mod._save_checkpoint, []

    def save(path: Path, payload: dict) -> None:
        real(path, payload)
        done.append(path)
        if len(done) == saves:
            raise _Killed

    monkeypatch.setattr(recover_mod, "_save_checkpoint", save)
    return done


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_recovery_raises_validation_accuracy_at_30_percent_macs(chosen: dict) -> None:
    pruned = chosen["pruned"]
    untouched = {k: v.clone() for k, v in pruned.state_dict().items()}
    calls: list[int] = []

    def evaluate(model: torch.nn.Module) -> dict:  # validation only: test is never touched
        calls.append(1)
        return chosen["evaluate"](model)

    rec = recover(pruned, data=chosen["task"].data, steps=200, evaluate=evaluate)
    assert rec.after["accuracy"] > rec.before["accuracy"] + 0.2, (rec.before, rec.after)
    assert not rec.model.training
    assert rec.eval_unit == "epoch" and rec.eval_every == rec.epoch_steps
    assert [h["step"] for h in rec.history][-1] == 200 and len(calls) == len(rec.history) + 1
    assert all(h["step"] % rec.epoch_steps == 0 or h["step"] == 200 for h in rec.history)
    assert rec.history[-1]["metrics"] == rec.after
    assert all(torch.equal(v, untouched[k]) for k, v in pruned.state_dict().items())
    json.dumps(rec.as_dict())


def test_a_short_recovery_is_scored_every_few_steps(chosen: dict) -> None:
    rec = recover(chosen["pruned"], data=chosen["task"].data, steps=8,
                  evaluate=chosen["evaluate"])
    assert rec.eval_unit == "steps" and [h["step"] for h in rec.history] == [2, 4, 6, 8]


def test_a_killed_recovery_resumes_with_the_weights_of_an_uninterrupted_one(
        chosen: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = dict(data=chosen["task"].data, steps=45, evaluate=chosen["evaluate"], seed=3)
    whole = recover(chosen["pruned"], **args)
    ckpt = tmp_path / "r.ckpt"
    _kill_after(monkeypatch, 1)
    with pytest.raises(_Killed):
        recover(chosen["pruned"], checkpoint=ckpt, **args)
    monkeypatch.undo()
    assert ckpt.exists()
    with pytest.raises(ValueError, match="other options.*remove it"):
        recover(chosen["pruned"], checkpoint=ckpt, **{**args, "seed": 4})
    resumed = recover(chosen["pruned"], checkpoint=ckpt, **args)
    assert resumed.resumed_at == resumed.epoch_steps
    assert _same_weights(resumed.model, whole.model)
    assert resumed.history == whole.history and resumed.before == whole.before


@pytest.fixture(scope="module")
def gradual(chosen: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A gradual recovery with distillation run whole, and the same killed after its second
    stage and resumed."""
    task, space = chosen["task"], chosen["space"]
    args = dict(data=task.data, steps=60, evaluate=chosen["evaluate"], dense=task.model,
                gradual=True, distill=True, space=space, config=chosen["config"])
    whole = recover(chosen["pruned"], **args)
    ckpt = tmp_path_factory.mktemp("gradual") / "g.ckpt"
    with pytest.MonkeyPatch.context() as mp:
        saves = _kill_after(mp, 3)  # stage 1, the first epoch, stage 2
        with pytest.raises(_Killed):
            recover(chosen["pruned"], checkpoint=ckpt, **args)
    assert len(saves) == 3
    return {"whole": whole, "resumed": recover(chosen["pruned"], checkpoint=ckpt, **args)}


def test_gradual_reaches_exactly_the_chosen_widths(chosen: dict, gradual: dict) -> None:
    rec, space, config = gradual["whole"], chosen["space"], chosen["config"]
    want = space.apply(chosen["task"].model, config).state_dict()
    got = rec.model.state_dict()
    assert got.keys() == want.keys()
    assert all(got[k].shape == want[k].shape for k in want)
    stages = rec.stages
    assert [s["stage"] for s in stages] == [1, 2, 3, 4]
    assert all(s["step"] < 2 * rec.steps / 3 + 1 for s in stages)
    assert stages[-1]["widths"] == config
    full = space.dense_config()
    for u in config:
        widths = [full[u]] + [s["widths"][u] for s in stages]
        assert all(isinstance(w, int) for w in widths)
        assert all(a >= b for a, b in zip(widths, widths[1:])), (u, widths)
    assert rec.history[-1]["widths"] == config and rec.history[-1]["stage"] == 4
    assert math.isfinite(rec.after["accuracy"])


def test_agp_follows_the_cubic_schedule() -> None:
    out = agp_schedule({"a": 64, "b": 10}, {"a": 16, "b": 3}, steps=300)
    assert [s for s, _ in out] == [50, 100, 150, 200]
    # removed share 1 - (1 - k/4)^3: 0.578, 0.875, 0.984, 1
    assert [w["a"] for _, w in out] == [round(64 - 48 * 0.578125), 22, 17, 16]
    assert out[-1][1] == {"a": 16, "b": 3}
    assert [s for s, _ in agp_schedule({"a": 4}, {"a": 1}, steps=1)] == [0, 0, 0, 0]


def test_a_killed_gradual_recovery_resumes_exactly(gradual: dict) -> None:
    whole, resumed = gradual["whole"], gradual["resumed"]
    assert resumed.resumed_at == 20 and resumed.stages == whole.stages
    assert _same_weights(resumed.model, whole.model)


def test_distillation_runs_and_reports(chosen: dict, gradual: dict) -> None:
    rec = recover(chosen["pruned"], data=chosen["task"].data, steps=20,
                  evaluate=chosen["evaluate"], dense=chosen["task"].model, distill=True,
                  temperature=2.0, alpha=0.7)
    report = rec.as_dict()
    assert report["distill"] is True and report["temperature"] == 2.0 and report["alpha"] == 0.7
    assert all(math.isfinite(h["loss"]) for h in report["history"])
    assert rec.after["accuracy"] >= rec.before["accuracy"]
    assert gradual["whole"].as_dict()["distill"] is True


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps >= 1"),
    ({"distill": True}, "distill=True needs the teacher: pass dense="),
    ({"gradual": True}, "pass dense=, space="),
    ({"gradual": True, "dense": "dense"}, "space= .*config="),
    ({"data": None}, "recovery needs the training split"),
    ({"optimizer": "adam"}, "choose sgd or adamw"),
])
def test_bad_options_are_one_clear_error(chosen: dict, kwargs: dict, message: str) -> None:
    if kwargs.get("dense") == "dense":
        kwargs = {**kwargs, "dense": chosen["task"].model}
    args = {"data": chosen["task"].data, "steps": 5, "evaluate": chosen["evaluate"], **kwargs}
    with pytest.raises(ValueError, match=message):
        recover(chosen["pruned"], **args)


def test_the_cli_recovers_a_finished_run(chosen: dict, cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    search = ["search", *SMALL, "--target", "flops=30%", "--agent", "random", "--trials", "3",
              "--calib-batches", "8", "--run-dir", str(run), "--no-progress"]
    run_cli(search, cache)
    searched = json.loads((run / "best.json").read_text())
    before_weights = autoprune.load_pruned(run).state_dict()
    out = run_cli(["recover", str(run), "--steps", "40", "--no-progress"], cache)
    best = json.loads((run / "best.json").read_text())
    assert best["before_recovery"] == searched["metrics"]
    assert set(best["metrics"]) == set(searched["metrics"])  # val_ and test_, recovered
    assert best["metrics"] != searched["metrics"]
    block = best["recovery"]
    assert block["steps"] == 40 and block["distill"] is False and block["gradual"] is False
    assert block["history"][-1]["step"] == 40 and block["from"] == "search"
    assert best["config"] == searched["config"] and best["costs"] == searched["costs"]
    recovered = autoprune.load_pruned(run).state_dict()
    saved = torch.load(run / "pruned.pt", weights_only=True)
    assert all(torch.equal(recovered[k], saved[k]) for k in saved)
    assert not all(torch.equal(recovered[k], before_weights[k]) for k in saved)
    assert not (run / CHECKPOINT).exists() and (run / "pruned.pt2").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["metrics"]["test_accuracy"] == best["metrics"]["test_accuracy"]
    assert summary["best"]["before_recovery"]["accuracy"] == searched["metrics"]["val_accuracy"]
    assert summary["recovery"]["steps"] == 40 and summary["recovery"]["rounds"] == 1
    assert "before" in out.stderr and "after" in out.stderr and "best.json" in out.stderr

    # Twice: recovered further, the search's figures kept, the first round under previous.
    out = run_cli(["recover", str(run), "--steps", "10", "--no-progress", "--json"], cache)
    again = json.loads((run / "best.json").read_text())
    assert json.loads(out.stdout)["again"] is True and "recovered before" in out.stderr
    assert again["before_recovery"] == searched["metrics"]
    assert again["recovery"]["from"] == "recovered"
    assert [r["steps"] for r in again["recovery"]["previous"]] == [40]

    # search --recover: the finished search is reported again, then recovered at once.
    run_cli([*search, "--recover", "10", "--distill"], cache)
    fresh = json.loads((run / "best.json").read_text())
    assert fresh["recovery"]["distill"] is True and "previous" not in fresh["recovery"]
    assert fresh["before_recovery"] == searched["metrics"]

    # Training-free: the least-squares refit of the layers that read pruned channels alone.
    out = run_cli(["recover", str(run), "--steps", "0", "--reconstruct", "--no-progress"], cache)
    refit = json.loads((run / "best.json").read_text())["recovery"]
    assert refit["steps"] == 0 and refit["history"] == []
    layers = refit["reconstruction"]["layers"]
    assert any(r["refitted"] for r in layers)
    assert all(r["error_after"] <= r["error_before"] for r in layers if r["refitted"])
    assert "least-squares refit" in out.stderr


def test_cli_errors_are_one_line(cache: Path, tmp_path: Path) -> None:
    out = run_cli(["recover", str(tmp_path / "nowhere"), "--steps", "5"], cache, check=False)
    assert out.returncode == 2 and out.stderr.count("error:") == 1
    assert "not an autoprune run folder" in out.stderr
    out = run_cli(["recover", str(tmp_path / "nowhere"), "--steps", "0"], cache, check=False)
    assert out.returncode == 2 and out.stderr.count("error:") == 1
    assert "--reconstruct" in out.stderr
    out = run_cli(["search", *SMALL, "--distill", "--run-dir", str(tmp_path / "x")], cache,
                  check=False)
    assert out.returncode == 2 and "add --recover STEPS" in out.stderr
    assert not (tmp_path / "x").exists()


def test_a_language_model_recovers_gradually_with_a_data_criterion() -> None:
    """The character-level decoder (heads and MLP widths) under taylor: AGP's stages re-trace
    attention too, distillation runs on next-character logits, the loss falls."""
    from autoprune.search_spaces import make_criterion
    from autoprune.zoo.language import LanguageModelEvaluator
    from autoprune.zoo.models import build_model
    from autoprune.zoo.text import load_stdlib_corpus

    corpus = load_stdlib_corpus(block=32, max_chars=120_000)
    torch.manual_seed(0)
    dense = build_model("chargpt", num_classes=corpus.vocab_size, width_mult=0.25,
                        input_size=32).eval()
    gen = torch.Generator().manual_seed(0)
    calibration = [corpus.batch("train", batch_size=8, generator=gen) for _ in range(2)]
    space = make_space("channel", dense, corpus.example_inputs(1), round_to=4,
                       criterion=make_criterion("taylor", calibration=calibration))
    config = space.decode(np.full(space.dim, 0.3))
    evaluator = LanguageModelEvaluator(corpus, windows=32)
    rec = recover(space.apply(dense, config), data=corpus, steps=12, evaluate=evaluator,
                  dense=dense, distill=True, gradual=True, space=space, config=config,
                  optimizer="adamw", batch_size=8)
    want = {k: v.shape for k, v in space.apply(dense, config).state_dict().items()}
    assert {k: v.shape for k, v in rec.model.state_dict().items()} == want
    assert rec.after["loss"] < evaluator(space.apply(dense, config))["loss"]
