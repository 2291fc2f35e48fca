"""The shipped conformance suites (autoprune.testing) over every registered part."""

from __future__ import annotations

import pytest
import torch

from autoprune.agents import AGENTS, make_agent
from autoprune.costs import get_cost_model
from autoprune.executors import LocalExecutor
from autoprune.search_spaces import SPACES, make_space
from autoprune.testing import check_agent, check_cost_model, check_executor, check_space
from autoprune.zoo.models import build_model

# Agents that allocate from facts about a model (heuristics, RL) need a search's context;
# the search tests cover them. The rest take the suite as a third party's agent would.
FREE = sorted(n for n, c in AGENTS.items() if not c.context_needs)


@pytest.fixture(scope="module")
def model_and_space() -> tuple[torch.nn.Module, object, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1, width_mult=0.5,
                        input_size=8).eval()
    x = torch.randn(2, 1, 8, 8)
    return model, make_space("channel", model, x, round_to=4), x


@pytest.mark.parametrize("name", FREE)
def test_every_free_agent_conforms(name: str) -> None:
    check_agent(lambda dim: make_agent(name, dim, seed=3))


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_conforms(name: str, model_and_space: tuple) -> None:
    model, _, x = model_and_space
    check_space(make_space(name, model, x, round_to=4), model, x)


@pytest.mark.parametrize("name", ["macs", "params"])
def test_analytic_cost_models_conform(name: str, model_and_space: tuple) -> None:
    check_cost_model(get_cost_model(name), model_and_space[1])


def test_local_executor_conforms(model_and_space: tuple) -> None:
    check_executor(LocalExecutor(), model_and_space[1], lambda dim: make_agent("random", dim))
