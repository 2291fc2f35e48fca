"""Agents: how to search. One ask/tell contract for every method.

Importing this package registers every agent; the modules import their heavy libraries
(optuna, cmaes, stable-baselines3) only when an agent is used, so listing agents stays fast.
"""

from __future__ import annotations

from .base import Agent, AgentContext, PointCosts, Probe, UnitFacts, is_probe, probe
from .registry import (AGENTS, AUTO, AgentOptionError, agent_descriptions, agent_options, make_agent,
                       register_agent, resolve_agent)
from .chain import ChainAgent
from .cma_es import CMAESAgent
from .erk import ERKAgent
from .evolution import EvolutionAgent, EvolutionConfig
from .global_magnitude import GlobalMagnitudeAgent
from .gp import GPAgent
from .lamp import LAMPAgent
from .nsga2 import NSGA2Agent
from .owl import OWLAgent
from .rl import REWARDS, DDPGAgent, RLAgent, RLConfig, TD3Agent
from .sensitivity import SensitivityAgent
from .simple import RandomAgent, UniformAgent
from .tpe import TPEAgent

__all__ = ["AGENTS", "AUTO", "REWARDS", "AgentOptionError", "Agent", "AgentContext", "CMAESAgent", "ChainAgent", "DDPGAgent",
           "ERKAgent", "EvolutionAgent", "EvolutionConfig", "GPAgent", "GlobalMagnitudeAgent",
           "LAMPAgent", "NSGA2Agent", "OWLAgent", "PointCosts", "Probe", "RLAgent", "RLConfig", "RandomAgent",
           "SensitivityAgent", "TD3Agent", "TPEAgent", "UniformAgent", "UnitFacts",
           "agent_descriptions", "agent_options", "is_probe", "probe",
           "make_agent", "register_agent", "resolve_agent"]
