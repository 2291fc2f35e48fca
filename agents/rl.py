"""AMC-style reinforcement learning (He et al., "AMC: AutoML for Model Compression and
Acceleration on Mobile Devices", ECCV 2018): stable-baselines3's DDPG or TD3 over the
layer-by-layer environment of ``agents/amc_env.py``, driven from the ask/tell loop.

How the loop maps to episodes:

- ``ask(n)`` rolls out ``n`` whole episodes with the current actor and returns their points.
  The first ``warmup`` episodes are random (AMC: 100 random episodes; here a uniform random
  point scaled to the budget, see ``_warmup_point``); later ones add truncated-normal noise on [0, 1] around the actor's coordinate with
  ``sigma * sigma_decay ** (episode - warmup)`` (AMC: 0.5 and 0.95 per episode). The
  environment bounds every action (AMC's action bound), so every proposed point meets every
  budget before the loop sees it.
- ``tell(point, result)`` replays the episode that ends on the *evaluated* point (the loop's
  repair may have grown it toward the budget; the agent learns from what was evaluated) and
  writes its transitions into ``model.replay_buffer``, every transition carrying the episode's
  final reward (AMC). Rewards are stored raw; before every update the moving-average baseline
  (AMC: alpha 0.5) is subtracted from all of them, as AMC subtracts it from each sampled batch.
- When every asked episode has been told (a batch is complete; or at the next ask, after a
  search resumed mid-batch) and the warm-up is over, the agent runs ``model.train(gradient_steps, batch_size)`` with one gradient step per transition
  stored since the last update (AMC updates once per transition).

Rewards (``reward``): ``acc`` is AMC's resource-constrained ``R = -error`` (the objective, an
accuracy, up to a constant the baseline removes); ``acc-flops`` is AMC's accuracy-guaranteed
``R = -error * log(FLOPs)`` with FLOPs the candidate's MACs.

Resume: ``state_dict()`` is JSON. Counters, the baseline and the noise generator are plain
numbers; the replay buffer (filled part, float32) is a base64 ``.npz``; actor, critic, their
targets and both Adam optimizers are a base64 ``torch.save`` blob loaded back with
``torch.load(weights_only=True)`` (nothing is unpickled). Kept inside the study's metadata
rather than a side file, so the agent state and the trials it has seen are written together.
The blob is re-encoded only after an update. Updates draw their random numbers (batch indices,
TD3's target noise) from generators seeded by ``(seed, updates so far)`` inside a forked RNG
state, so a resumed agent proposes exactly what the uninterrupted one would.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .base import Agent
from .registry import register_agent

if TYPE_CHECKING:
    from stable_baselines3 import TD3

    from .amc_env import PruningEnv

__all__ = ["REWARDS", "DDPGAgent", "RLAgent", "RLConfig", "TD3Agent"]

#: ``acc``: R = -error (AMC's resource-constrained reward). ``acc-flops``: R = -error * log(FLOPs)
#: (AMC's accuracy-guaranteed reward).
REWARDS = ("acc", "acc-flops")
_STATE_FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class RLConfig:
    """AMC's DDPG settings where SB3 allows them (He et al. 2018, released code).

    ``hidden``: actor and critic hidden layers (AMC: 300-300). ``learning_rate``: one for actor
    and critic (SB3 has a single schedule; AMC uses 1e-4 / 1e-3). ``batch_size`` (AMC: 64),
    ``tau`` (AMC: 0.01). ``gamma``: every transition carries the episode's final reward (AMC),
    so with 0 the critic regresses that reward directly instead of bootstrapping it through
    every later unit (AMC: 1.0). ``warmup``: random episodes before learning (AMC: 100 of 800;
    pruning searches here run a few hundred trials). ``sigma``, ``sigma_decay``: exploration
    noise (AMC: 0.5, 0.95 per episode). ``baseline_alpha``: moving-average reward baseline
    (AMC: 0.5). ``buffer_episodes``: replay capacity in episodes (AMC: 100 x layers
    transitions). ``updates_per_transition``: gradient steps per stored transition (AMC: 1;
    an evaluation costs far more than an update, so more updates per sample pay).

    Where the defaults differ from AMC they were measured on the synthetic budget landscape of
    ``tests/test_rl.py`` (8 units, 4 seeds, DDPG 64-64; mean regret of the best of 100 / 200
    evaluations, random search 0.56 / 0.48), with AMC's per-unit random warm-up: AMC's
    settings 0.65 / 0.63 (the actor settles early); 4 updates per transition and decay 0.98:
    0.31 / 0.22 with gamma 1, 0.21 / 0.14 with gamma 0. With the scaled warm-up: 0.26 at 100.
    """

    hidden: tuple[int, ...] = (300, 300)
    learning_rate: float = 1e-3
    batch_size: int = 64
    tau: float = 0.01
    gamma: float = 0.0
    warmup: int = 20
    sigma: float = 0.5
    sigma_decay: float = 0.98
    baseline_alpha: float = 0.5
    buffer_episodes: int = 100
    updates_per_transition: int = 4
    reward: str = "acc"

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; use one of {', '.join(REWARDS)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must list positive layer sizes, got {self.hidden}")
        if self.warmup < 0 or self.buffer_episodes < 1 or self.batch_size < 1:
            raise ValueError("warmup must be >= 0, buffer_episodes and batch_size >= 1")
        if not 0.0 <= self.baseline_alpha <= 1.0 or not 0.0 <= self.gamma <= 1.0:
            raise ValueError("baseline_alpha and gamma must be in [0, 1]")


def _truncated_normal(rng: np.random.Generator, mu: float, sigma: float) -> float:
    """A draw from N(mu, sigma) truncated to [0, 1] (AMC's exploration noise), by rejection."""
    if sigma <= 0.0:
        return float(np.clip(mu, 0.0, 1.0))
    for _ in range(1000):
        v = float(rng.normal(mu, sigma))
        if 0.0 <= v <= 1.0:
            return v
    return float(np.clip(mu, 0.0, 1.0))


def _encode(write: Callable[[io.BytesIO], object]) -> str:
    buf = io.BytesIO()
    write(buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode(text: str) -> io.BytesIO:
    return io.BytesIO(base64.b64decode(text.encode("ascii")))


class RLAgent(Agent):
    """The AMC agent around one stable-baselines3 algorithm (``algorithm``)."""

    context_needs: ClassVar[frozenset[str]] = frozenset({"units", "budget"})
    algorithm: ClassVar[str] = "TD3"
    options: ClassVar[Mapping[str, Sequence[str]]] = {"reward": REWARDS}
    family: ClassVar[str] = "RL agents"

    def __init__(self, dim: int, *, seed: int = 0, config: RLConfig | None = None) -> None:
        super().__init__(dim, seed=seed)
        self.config = config or RLConfig()
        self.rng = np.random.default_rng(seed)
        self.asked = 0       # episodes proposed
        self.told = 0        # episodes told
        self.pending = 0     # proposed, not yet told
        self.untrained = 0   # transitions stored since the last update (after the warm-up)
        self.baseline: float | None = None
        self._env: PruningEnv | None = None
        self._model: TD3 | None = None
        self._raw: np.ndarray = np.zeros(0, dtype=np.float32)  # rewards before the baseline
        self._nets: str | None = None   # cached encoding of the networks
        self._restore: Mapping[str, Any] | None = None  # a state waiting for the model

    def set_reward(self, reward: str) -> None:
        """Choose the reward (``REWARDS``) before the search starts."""
        self.config = replace(self.config, reward=reward)

    def set_option(self, name: str, value: str) -> None:
        if name != "reward":
            super().set_option(name, value)
        self.set_reward(value)

    # ------------------------------------------------------------------ the model
    def _ensure_model(self) -> TD3:
        if self._model is not None:
            return self._model
        import torch
        from stable_baselines3 import DDPG, TD3
        from stable_baselines3.common.logger import Logger

        from .amc_env import PruningEnv

        ctx = self._require_context()
        assert ctx.budget is not None  # set_context checked the needs
        self._env = PruningEnv(choices=ctx.choices, units=ctx.units, budget=ctx.budget)
        cls = {"DDPG": DDPG, "TD3": TD3}[self.algorithm]
        cfg = self.config
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG left alone
            torch.manual_seed(self.seed)
            model = cls("MlpPolicy", self._env, learning_rate=cfg.learning_rate,
                        buffer_size=cfg.buffer_episodes * self.dim, learning_starts=0,
                        batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
                        policy_kwargs={"net_arch": list(cfg.hidden)}, device="cpu", seed=None,
                        verbose=0)
        model.set_logger(Logger(folder=None, output_formats=[]))
        self._model = model
        self._raw = np.zeros(model.replay_buffer.buffer_size, dtype=np.float32)
        if self._restore is not None:
            state, self._restore = self._restore, None
            self._load_model(state)
        return model

    def _actor(self, obs: np.ndarray) -> float:
        import torch

        model = self._ensure_model()
        with torch.no_grad():
            return float(model.actor(torch.as_tensor(obs[None], dtype=torch.float32))[0, 0])

    # ------------------------------------------------------------------ ask / tell
    def ask(self, n: int) -> list[np.ndarray]:
        self._require_context()
        self._ensure_model()
        env = self._env
        assert env is not None
        cfg = self.config
        if self.untrained > 0:  # a batch left half told (a search killed and resumed mid-batch)
            self._train(self.untrained * cfg.updates_per_transition)
            self.untrained = 0
        self.pending = 0  # episodes never told are dropped, as the search loop drops them
        points = []
        for _ in range(max(0, n)):
            episode = self.asked
            sigma = cfg.sigma * cfg.sigma_decay ** max(0, episode - cfg.warmup)
            warm = self._warmup_point() if episode < cfg.warmup else None
            obs, _ = env.reset()
            done, info = False, {}
            while not done:
                if warm is not None:
                    x = float(warm[env.t])
                else:
                    x = _truncated_normal(self.rng, 0.5 * (self._actor(obs) + 1.0), sigma)
                obs, _, done, _, info = env.step(np.array([2.0 * x - 1.0], dtype=np.float32))
            points.append(np.asarray(info["point"], dtype=float))
            self.asked += 1
            self.pending += 1
        return points

    def _warmup_point(self) -> np.ndarray:
        """A uniform random point scaled toward the lower bounds until it meets the budget.

        AMC's warm-up acts uniformly per unit and lets the bound clip each action in turn, so
        early units spend the budget and later ones end at their lower bound (on the synthetic
        landscape those episodes scored a regret of ~3.5 against ~0.6 for these). Scaling the
        whole point (the loop's repair path, AMC's uniform scaling) keeps the warm-up unbiased;
        the bound is then a no-op and the episode still meets every budget.
        """
        ctx = self._require_context()
        assert ctx.budget is not None
        u = self.rng.random(self.dim)
        if ctx.budget.feasible(u):
            return u
        lo, hi = 0.0, 1.0  # feasible at 0: budgets below the thinnest network are refused
        for _ in range(20):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if ctx.budget.feasible(u * mid) else (lo, mid)
        return u * lo

    def tell(self, point: np.ndarray, result: Mapping[str, float]) -> None:
        model = self._ensure_model()
        env = self._env
        assert env is not None
        self.told += 1
        self.pending = max(0, self.pending - 1)
        reward = self.reward(result)
        if math.isfinite(reward):  # a failed trial teaches nothing about the allocation
            a = self.config.baseline_alpha
            self.baseline = reward if self.baseline is None else \
                self.baseline + a * (reward - self.baseline)
            buffer = model.replay_buffer
            for obs, action, _, nxt, done in env.replay(point):
                self._raw[buffer.pos] = reward
                buffer.add(obs[None], nxt[None], action[None], np.array([reward]),
                           np.array([done]), [{}])
                if self.told > self.config.warmup:
                    self.untrained += 1
        if self.pending == 0 and self.untrained > 0:
            self._train(self.untrained * self.config.updates_per_transition)
            self.untrained = 0

    def reward(self, result: Mapping[str, float]) -> float:
        """The episode's reward from a trial's result (NaN for a failed trial)."""
        objective = float(result.get("objective", math.nan))
        if not math.isfinite(objective) or self.config.reward == "acc":
            return objective  # AMC: R = -error = accuracy - 1; the constant cancels
        if "metric.accuracy" in result:
            error = 1.0 - float(result["metric.accuracy"])
        elif "metric.loss" in result:
            error = float(result["metric.loss"])
        else:
            error = 1.0 - objective
        macs = result.get("cost.macs")
        if macs is None or not math.isfinite(float(macs)):
            raise ValueError("reward 'acc-flops' needs the trial's cost.macs in the result")
        return -max(0.0, error) * math.log(max(float(macs), 2.0))

    def _train(self, steps: int) -> None:
        import torch

        model = self._ensure_model()
        buffer = model.replay_buffer
        size = buffer.size()
        base = self.baseline or 0.0
        buffer.rewards[:size, 0] = self._raw[:size] - base  # AMC: minus the moving average
        seed = int(np.random.SeedSequence([self.seed, model._n_updates]).generate_state(1)[0])
        np_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed)  # SB3 samples batch indices from the global generator
                model.train(gradient_steps=steps, batch_size=self.config.batch_size)
        finally:
            np.random.set_state(np_state)
        self._nets = None

    # ------------------------------------------------------------------ resume
    def _networks(self) -> str:
        import torch

        model = self._ensure_model()
        if self._nets is None:
            blob = {"policy": model.policy.state_dict(),
                    "actor_optimizer": model.actor.optimizer.state_dict(),
                    "critic_optimizer": model.critic.optimizer.state_dict()}
            self._nets = _encode(lambda f: torch.save(blob, f))
        return self._nets

    def _buffer(self) -> str:
        model = self._ensure_model()
        b = model.replay_buffer
        n = b.size()
        return _encode(lambda f: np.savez_compressed(
            f, observations=b.observations[:n], next_observations=b.next_observations[:n],
            actions=b.actions[:n], dones=b.dones[:n], rewards=self._raw[:n]))

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": _STATE_FORMAT, "algorithm": self.algorithm, "seed": self.seed,
            "config": {**asdict(self.config), "hidden": list(self.config.hidden)},
            "rng": self.rng.bit_generator.state, "asked": self.asked, "told": self.told,
            "pending": self.pending, "untrained": self.untrained, "baseline": self.baseline}
        if self._model is not None:
            b = self._model.replay_buffer
            state.update({"networks": self._networks(), "buffer": self._buffer(), "pos": b.pos,
                          "full": b.full, "updates": self._model._n_updates})
        elif self._restore is not None:  # restored before the context came: pass it on
            state.update({k: self._restore[k] for k in ("networks", "buffer", "pos", "full",
                                                        "updates")})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != _STATE_FORMAT or state.get("algorithm") != self.algorithm:
            raise ValueError(f"not a saved {self.name!r} agent state (format "
                             f"{state.get('format')}, algorithm {state.get('algorithm')})")
        cfg = dict(state["config"])
        cfg["hidden"] = tuple(cfg["hidden"])
        self.config = RLConfig(**cfg)
        self.seed = int(state["seed"])
        self.rng = np.random.default_rng(self.seed)
        self.rng.bit_generator.state = state["rng"]
        self.asked, self.told = int(state["asked"]), int(state["told"])
        self.pending, self.untrained = int(state["pending"]), int(state["untrained"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self._model, self._env, self._nets, self._restore = None, None, None, None
        if "networks" in state:
            self._restore = state
            if self.context is not None:
                self._ensure_model()

    def _load_model(self, state: Mapping[str, Any]) -> None:
        import torch

        model = self._model
        assert model is not None
        nets = torch.load(_decode(state["networks"]), weights_only=True, map_location="cpu")
        model.policy.load_state_dict(nets["policy"])
        model.actor.optimizer.load_state_dict(nets["actor_optimizer"])
        model.critic.optimizer.load_state_dict(nets["critic_optimizer"])
        model._n_updates = int(state["updates"])
        data = np.load(_decode(state["buffer"]))
        b = model.replay_buffer
        n = len(data["rewards"])
        if n > b.buffer_size or data["observations"].shape[1:] != b.observations.shape[1:]:
            raise ValueError("the saved replay buffer does not fit this search space")
        for name in ("observations", "next_observations", "actions", "dones"):
            getattr(b, name)[:n] = data[name]
        self._raw[:n] = data["rewards"]
        b.rewards[:n, 0] = data["rewards"] - (self.baseline or 0.0)
        b.pos, b.full = int(state["pos"]), bool(state["full"])
        self._nets = state["networks"]


@register_agent("ddpg")
class DDPGAgent(RLAgent):
    """AMC: stable-baselines3 DDPG walks the units, action bound keeps every budget (He et al.)."""

    algorithm: ClassVar[str] = "DDPG"


@register_agent("td3")
class TD3Agent(RLAgent):
    """AMC-style search with stable-baselines3 TD3 (twin critics, delayed actor updates)."""

    algorithm: ClassVar[str] = "TD3"
