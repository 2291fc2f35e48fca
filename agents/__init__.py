"""Agents: how to search. One ask/tell contract for every method."""

from __future__ import annotations

from .base import AGENTS, Agent, agent_descriptions, make_agent, register_agent
from .simple import RandomAgent, UniformAgent

__all__ = ["AGENTS", "Agent", "RandomAgent", "UniformAgent", "agent_descriptions", "make_agent",
           "register_agent"]
