"""The agent registry: ``register_agent`` (a class decorator), ``make_agent`` (what
``--agent NAME`` and every API call use, with the agent's options) and the list for
``autoprune agents``. Chains (``erk+tpe``) are composed here, from registered stages."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .base import Agent
from .chain import ChainAgent

__all__ = ["AGENTS", "AUTO", "AgentOptionError", "agent_descriptions", "agent_options", "make_agent",
           "register_agent", "resolve_agent"]

AGENTS: dict[str, type[Agent]] = {}

#: What ``--agent auto`` (the default) searches with: one objective, and a Pareto front. The
#: sensitivity agent (each unit's curve, allocations from the curves, then refinement) beat
#: ModelOpt's FastNAS on ResNet-20, MobileNet-V2, the ViT and the char GPT, and its chains with
#: TPE and a GP (benchmarks/results/agents-peers.json; docs/design-notes.md). A Pareto search
#: needs an agent of several objectives: random search, which covers the range evenly.
AUTO = {1: "sensitivity", 2: "random"}


def resolve_agent(name: str, *, objectives: int = 1) -> str:
    """The agent ``name`` stands for: ``auto`` is ``AUTO``'s for the number of objectives;
    any other name is itself."""
    if name.strip() == "auto":
        return AUTO[1 if objectives <= 1 else 2]
    return name


class AgentOptionError(ValueError):
    """An agent option that is unknown, has a bad value, or no chosen agent takes."""


def register_agent(name: str) -> Callable[[type[Agent]], type[Agent]]:
    """Class decorator: make an agent available by ``name`` (``--agent NAME``)."""

    def deco(cls: type[Agent]) -> type[Agent]:
        if name in AGENTS:
            raise ValueError(f"agent {name!r} is registered twice")
        cls.name = name
        AGENTS[name] = cls
        return cls

    return deco


def agent_options() -> dict[str, tuple[str, ...]]:
    """Every option some registered agent takes -> its allowed values (default first)."""
    out: dict[str, tuple[str, ...]] = {}
    for cls in AGENTS.values():
        for name, values in cls.options.items():
            out.setdefault(name, tuple(values))
    return out


def make_agent(name: str, dim: int, *, seed: int = 0, objectives: int = 1,
               options: Mapping[str, str] | None = None) -> Agent:
    """A registered agent searching ``dim`` coordinates for ``objectives`` objectives, with
    ``options`` (such as ``{"reward": "acc-flops"}`` for the RL agents) applied.

    ``a+b`` chains agents: ``a`` proposes until it is done, then ``b`` (see ``ChainAgent``);
    an option goes to every stage that takes it. An option no stage takes is refused unless it
    has its default value, so a caller may always pass the defaults."""
    name = resolve_agent(name, objectives=objectives)
    stages = [_one(part.strip(), dim, seed=seed, objectives=objectives)
              for part in name.split("+")]
    known = agent_options()
    for option, value in (options or {}).items():
        if option not in known:
            raise AgentOptionError(f"unknown agent option {option!r}; agents take: "
                             f"{', '.join(sorted(known)) or 'none'}")
        if value not in known[option]:
            raise AgentOptionError(f"unknown {option} {value!r}; use one of {', '.join(known[option])}")
        takers = [s for s in stages if option in s.options]
        for stage in takers:
            stage.set_option(option, value)
        if not takers and value != known[option][0]:
            able = sorted(n for n, c in AGENTS.items() if option in c.options)
            family = next((AGENTS[n].family for n in able if AGENTS[n].family), "agents")
            raise AgentOptionError(f"--{option} {value} only changes the {family} ({', '.join(able)}); "
                             f"agent {name!r} does not take it")
    return stages[0] if len(stages) == 1 else ChainAgent(stages)


def _one(name: str, dim: int, *, seed: int, objectives: int) -> Agent:
    try:
        cls = AGENTS[name]
    except KeyError:
        raise ValueError(f"unknown agent {name!r}; available: {', '.join(sorted(AGENTS))} "
                         "(autoprune agents lists them)") from None
    if objectives < 1:
        raise ValueError(f"objectives must be at least 1, got {objectives}")
    if objectives > 1 and not cls.multi_objective:
        able = ", ".join(sorted(n for n, c in AGENTS.items() if c.multi_objective))
        raise ValueError(f"agent {name!r} optimises one objective; a Pareto search needs one "
                         f"that handles several: {able}")
    agent = cls(dim, seed=seed)
    agent.objectives = objectives
    return agent


def agent_descriptions() -> dict[str, str]:
    """Agent name -> the first line of its docstring."""
    return {n: (c.__doc__ or "").strip().splitlines()[0] for n, c in sorted(AGENTS.items())}
