"""The language task: the python-stdlib corpus, a char-level GPT trained to convergence, and
its evaluator; the decoder's heads and MLPs prune like any transformer's."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

import autoprune
from conftest import run_cli
from autoprune.search_spaces import ChannelSpace, reference_macs
from autoprune.study import StudyStore
from autoprune.zoo.attention_models import CharGPT
from autoprune.zoo.language import LanguageModelEvaluator, LanguageRecipe, train_language_model
from autoprune.zoo.text import MODULES, VOCAB, decode, encode, load_stdlib_corpus


@pytest.fixture(scope="module")
def corpus():  # noqa: ANN201
    return load_stdlib_corpus(block=32, max_chars=120_000)


def test_the_corpus_is_split_by_file_and_hashed(corpus) -> None:  # noqa: ANN001
    files = corpus.files
    assert set(files["train"]).isdisjoint(files["val"]) and set(files["val"]).isdisjoint(files["test"])
    assert set(files["train"]) | set(files["val"]) | set(files["test"]) <= set(MODULES)
    assert len(corpus.sha256) == 64 and corpus.info()["sha256"] == corpus.sha256
    assert corpus.vocab_size == len(VOCAB) + 1
    assert decode(encode("def f(x):\n\treturn x")) == "def f(x):\n\treturn x"
    x, y = corpus.batch("train", batch_size=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])


def test_a_missing_standard_library_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Fix:"):
        load_stdlib_corpus(root=tmp_path)


def test_training_improves_and_records_its_curve(corpus) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = CharGPT(vocab_size=corpus.vocab_size, block=32, dim=32, depth=1)
    evaluator = LanguageModelEvaluator(corpus, windows=32)
    before = evaluator(copy.deepcopy(model))["loss"]
    out = train_language_model(model, corpus, progress=False, recipe=LanguageRecipe(
        max_steps=200, eval_every=50, eval_windows=32))
    steps = [s for s, _, _ in out["curve"]]
    assert steps == [50, 100, 150, 200]
    after = evaluator(copy.deepcopy(model))
    assert after["loss"] < before and after["perplexity"] == pytest.approx(math.exp(after["loss"]))
    assert after["loss"] == pytest.approx(min(v for _, _, v in out["curve"]), rel=0.05)


def test_the_decoder_prunes_heads_and_mlp_with_exact_costs(corpus) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = CharGPT(vocab_size=corpus.vocab_size, block=32, dim=32, depth=2).eval()
    x = corpus.example_inputs(2)
    space = ChannelSpace.from_model(model, x)
    # The residual width, each block's MLP neurons and its heads, each with its own floor.
    assert {u.kind for u in space.units} == {"residual", "neurons", "heads"}
    floors = {u.kind: u.minimum / u.full for u in space.units}
    assert floors["neurons"] < 0.1 < floors["residual"] == 0.5
    pruned = space.apply(model, space.min_config())
    assert pruned(x).shape == model(x).shape
    assert sum(r.macs for r in space.layer_table(space.min_config())) == reference_macs(pruned, (x,))


# The language task from the command line, on the zoo decoder at a quarter of its width with
# a short training: what a user runs, at a size a test can afford.
TINY = ["--model", "chargpt", "--data", "python-stdlib", "--width-mult", "0.25"]


def _cli(args: list[str], cache: Path, check: bool = True):  # noqa: ANN202
    return run_cli(args, cache, check, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def language_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, str]:
    cache = tmp_path_factory.mktemp("cache")
    trained = _cli(["train", *TINY, "--max-steps", "120"], cache)
    run_dir = tmp_path_factory.mktemp("runs") / "lm"
    out = _cli(["search", *TINY, "--target", "flops=50%", "--trials", "3", "--run-dir",
                str(run_dir), "--json", "--no-progress"], cache)
    return cache, run_dir, json.loads(out.stdout), trained.stderr


def test_the_decoder_trains_from_the_command_line_with_its_curve(language_run) -> None:  # noqa: ANN001
    cache, _, _, stderr = language_run
    assert "training curve" in stderr and "kept" in stderr
    (sidecar,) = cache.glob("chargpt_python-stdlib_*.json")
    record = json.loads(sidecar.read_text())
    corpus = load_stdlib_corpus()
    assert record["data"]["sha256"] == corpus.sha256 and corpus.sha256[:12] in sidecar.name
    assert [s for s, _, _ in record["curve"]] == [120] and record["steps"] == 120
    assert record["metrics"]["val_loss"] < math.log(corpus.vocab_size)  # it learned something


def test_a_search_on_python_stdlib_is_scored_by_loss_and_records_the_corpus(language_run) -> None:  # noqa: ANN001
    _, run_dir, summary, _ = language_run
    best, dense = summary["best"], summary["dense"]
    assert {"loss", "perplexity", "test_loss", "test_perplexity"} <= set(best["metrics"])
    assert best["metrics"]["perplexity"] == pytest.approx(math.exp(best["metrics"]["loss"]))
    assert "accuracy" not in best["metrics"] and "loss" in dense["metrics"]
    assert best["costs"]["macs"] <= 0.5 * dense["costs"]["macs"]
    assert summary["data"]["sha256"] == load_stdlib_corpus().sha256
    assert summary["baseline"]["cached"] is True  # the search loaded what train had cached
    choice = json.loads((run_dir / "best.json").read_text())
    assert choice["example_input_dtype"] == "int64" and choice["metrics"]["val_loss"] == best["metrics"]["loss"]
    model = autoprune.load_pruned(run_dir)
    ids = torch.randint(0, 98, (2, 64))
    assert model(ids).shape == (2, 64, 98)


def test_the_best_trial_is_the_lowest_loss(language_run) -> None:  # noqa: ANN001
    _, run_dir, summary, _ = language_run
    study = StudyStore.in_folder(run_dir).records()
    losses = [r.metrics["loss"] for r in study if not r.failed]
    assert summary["best"]["metrics"]["loss"] == pytest.approx(min(losses), rel=1e-6)


@pytest.mark.parametrize(("args", "message"), [
    (["search", "--model", "vgg11", "--data", "python-stdlib"], "use --model chargpt"),
    (["search", "--model", "chargpt", "--data", "digits"], "use --data python-stdlib"),
    (["train", *TINY, "--epochs", "2"], "--epochs is for images"),
    (["search", "--model", "chargpt", "--data", "shakespeare"], "available: digits, python-stdlib"),
])
def test_a_model_and_data_that_do_not_fit_are_one_clear_error(tmp_path: Path, args: list[str],
                                                               message: str) -> None:
    if args[0] == "search":  # a folder of the test's own, never the checkout's runs/
        args = [*args, "--no-progress", "--run-dir", str(tmp_path / "r")]
    out = _cli(args, tmp_path, check=False)
    assert out.returncode == 2 and message in " ".join(out.stderr.split()), out.stderr[-2000:]
