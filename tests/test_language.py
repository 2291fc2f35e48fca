"""The language task: the python-stdlib corpus, a char-level GPT trained to convergence, and
its evaluator; the decoder's heads and MLPs prune like any transformer's."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from autoprune.search_spaces import ChannelSpace, reference_macs
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
    assert {u.kind for u in space.units} == {"channels", "heads"}
    pruned = space.apply(model, space.min_config())
    assert pruned(x).shape == model(x).shape
    assert sum(r.macs for r in space.layer_table(space.min_config())) == reference_macs(pruned, (x,))
