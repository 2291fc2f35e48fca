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
  search resumed mid-batch) and the warm-up is over, the agent sends an *update job* with one
  gradient step per transition stored since the last update (AMC updates once per transition,
  here ``updates_per_transition``): the transitions, the baseline and the step count go to the
  learner (``agents/rl_learner.py``), a process of its own that runs SB3's
  ``model.train(gradient_steps, batch_size)`` while the search's next trial runs.
- **One update behind.** An ask rolls out with the actor of every job but the latest one
  (still training in the background, during this very trial). In a sequential search that is
  the policy after the episode before last: the learner's time hides behind a trial instead of
  adding to it (a TD3 update after a 12-unit episode costs about as much as a ResNet-20 trial
  on two cores). It is part of the algorithm, not of timing: a proposal depends only on what
  was told, so runs are reproducible and resume exactly.

Rewards (``reward``): ``acc`` is AMC's resource-constrained ``R = -error`` (the objective, an
accuracy, up to a constant the baseline removes); ``acc-flops`` is AMC's accuracy-guaranteed
``R = -error * log(FLOPs)`` with FLOPs the candidate's MACs.

Resume: ``state_dict()`` is JSON and small. It holds counters, the baseline, the noise
generator, every told episode (its kept levels and its raw reward) and every update job (the
episodes it covered, its steps and its baseline). Every ``checkpoint_every`` jobs the learner
also returns its whole networks (actor, critics, targets, both Adam optimizers; a base64
``torch.save`` blob loaded back with ``torch.load(weights_only=True)``: nothing is unpickled),
kept under the state's ``blobs``, which the search loop stores apart and rewrites only when it
changes (``autoprune/session.py``). A resumed agent loads the last checkpoint, refills the
replay buffer from the told episodes and re-runs the jobs since (at most
``checkpoint_every``); updates draw their random numbers (batch indices, TD3's target noise)
from generators seeded by ``(seed, updates so far)``, so it proposes exactly what the
uninterrupted agent would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .base import Agent
from .registry import register_agent

if TYPE_CHECKING:
    from concurrent.futures import Future

    from torch import nn

    from .amc_env import PruningEnv
    from .rl_learner import Learner

__all__ = ["REWARDS", "DDPGAgent", "RLAgent", "RLConfig", "TD3Agent"]

#: ``acc``: R = -error (AMC's resource-constrained reward). ``acc-flops``: R = -error * log(FLOPs)
#: (AMC's accuracy-guaranteed reward).
REWARDS = ("acc", "acc-flops")
_STATE_FORMAT = 2


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
    ``checkpoint_every``: update jobs between two saved copies of the networks (a resume
    re-runs at most this many; it changes no proposal).

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
    checkpoint_every: int = 8

    def __post_init__(self) -> None:
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; use one of {', '.join(REWARDS)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must list positive layer sizes, got {self.hidden}")
        if self.warmup < 0 or min(self.buffer_episodes, self.batch_size,
                                  self.checkpoint_every) < 1:
            raise ValueError("warmup must be >= 0; buffer_episodes, batch_size and "
                             "checkpoint_every >= 1")
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
        #: Every told episode: its kept level per unit and its raw reward (None: failed).
        self.episodes: list[tuple[list[int], float | None]] = []
        #: Every update job: (episodes told when it was sent, gradient steps, baseline).
        self.jobs: list[tuple[int, int, float]] = []
        #: The last networks the learner returned: (jobs done, SB3 updates, encoded networks).
        self.checkpoint: tuple[int, int, str] | None = None
        self._env: PruningEnv | None = None
        self._learner: Learner | None = None
        self._policy: nn.Module | None = None  # the actor this process rolls out with
        self._results: dict[int, Future[Any]] = {}  # job number (1-based) -> its result
        self._applied = 0    # jobs whose actor the rollouts use
        self._unsent: list[tuple[np.ndarray, ...]] = []  # transitions since the last job
        self._replay = False  # restored: the learner must re-run the saved jobs

    def set_reward(self, reward: str) -> None:
        """Choose the reward (``REWARDS``) before the search starts."""
        self.config = replace(self.config, reward=reward)

    def set_option(self, name: str, value: str) -> None:
        if name != "reward":
            super().set_option(name, value)
        self.set_reward(value)

    # ------------------------------------------------------------------ the model
    def _spec(self) -> dict[str, Any]:
        from .amc_env import FEATURES

        cfg = self.config
        return {"algorithm": self.algorithm, "seed": self.seed, "features": len(FEATURES),
                "learning_rate": cfg.learning_rate, "buffer_size": cfg.buffer_episodes * self.dim,
                "batch_size": cfg.batch_size, "tau": cfg.tau, "gamma": cfg.gamma,
                "hidden": list(cfg.hidden)}

    def _ensure_model(self) -> None:
        """The environment, and this agent's model in the learner process (started now, in
        the background: the warm-up episodes need no actor)."""
        if self._learner is not None:
            return
        from .amc_env import PruningEnv
        from .rl_learner import Learner

        ctx = self._require_context()
        assert ctx.budget is not None  # set_context checked the needs
        self._env = PruningEnv(choices=ctx.choices, units=ctx.units, budget=ctx.budget)
        self._learner = Learner(self._spec())
        if self._replay:
            self._replay = False
            self._rerun()

    def _actor(self, obs: np.ndarray) -> float:
        import torch

        if self._policy is None:  # the seeded actor, as the learner built it
            from .rl_learner import actor_network

            assert self._learner is not None
            self._policy = actor_network(self._spec())
            self._policy.load_state_dict(self._learner.opened.result())
        with torch.no_grad():
            return float(self._policy(torch.as_tensor(obs[None], dtype=torch.float32))[0, 0])

    def _set_actor(self, weights: Mapping[str, Any]) -> None:
        from .rl_learner import actor_network

        if self._policy is None:
            self._policy = actor_network(self._spec())
        self._policy.load_state_dict(weights)

    # ------------------------------------------------------------------ ask / tell
    def ask(self, n: int) -> list[np.ndarray]:
        self._require_context()
        self._ensure_model()
        env = self._env
        assert env is not None
        cfg = self.config
        if self.untrained > 0:  # a batch left half told (a search killed and resumed mid-batch)
            self._submit()
        self._apply(len(self.jobs) - 1)  # one update behind: the latest trains meanwhile
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
        self._ensure_model()
        self.told += 1
        self.pending = max(0, self.pending - 1)
        reward = self.reward(result)
        levels = self._levels(point)
        if math.isfinite(reward):  # a failed trial teaches nothing about the allocation
            a = self.config.baseline_alpha
            self.baseline = reward if self.baseline is None else \
                self.baseline + a * (reward - self.baseline)
            self.episodes.append((levels, reward))
            stored = self._store(levels, reward)
            if self.told > self.config.warmup:
                self.untrained += stored
        else:
            self.episodes.append((levels, None))
        if self.pending == 0 and self.untrained > 0:
            self._submit()

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

    # ------------------------------------------------------------------ the learner
    def _levels(self, point: np.ndarray) -> list[int]:
        """The kept level per unit of ``point`` (what the environment's replay snaps it to)."""
        assert self._env is not None
        x = np.clip(np.asarray(point, dtype=float), 0.0, 1.0)
        return [int(round(v * n)) for v, n in zip(x, self._env.levels)]

    def _store(self, levels: Sequence[int], reward: float) -> int:
        """Queue the transitions of the episode that ends on ``levels`` for the next job (every
        transition carries the episode's final reward, AMC); how many."""
        env = self._env
        assert env is not None
        steps = env.replay(np.asarray(levels, dtype=float) / np.maximum(env.levels, 1))
        for obs, action, _, nxt, done in steps:
            self._unsent.append((obs, action, nxt, np.float32(done), np.float32(reward)))
        return len(steps)

    def _submit(self) -> None:
        """Send the update for the transitions stored since the last one."""
        steps = self.untrained * self.config.updates_per_transition
        self.jobs.append((len(self.episodes), steps, float(self.baseline or 0.0)))
        self._send(len(self.jobs), steps, float(self.baseline or 0.0))
        self.untrained = 0

    def _send(self, number: int, steps: int, baseline: float) -> None:
        assert self._learner is not None
        cols = list(zip(*self._unsent)) or [()] * 5
        obs, actions, nxt, dones, rewards = (np.asarray(c, dtype=np.float32) for c in cols)
        self._unsent = []
        self._results[number] = self._learner.train({
            "observations": obs, "actions": actions, "next_observations": nxt, "dones": dones,
            "rewards": rewards, "baseline": baseline, "steps": steps,
            "batch_size": self.config.batch_size,
            "checkpoint": number > 0 and number % self.config.checkpoint_every == 0})

    def _apply(self, upto: int) -> None:
        """Roll out with the actor after job ``upto`` (waiting for the learner if needed)."""
        if upto <= self._applied:
            return
        for number in range(self._applied + 1, upto + 1):  # in order: the latest networks
            out = self._results.pop(number).result()
            if "networks" in out:
                self.checkpoint = (number, int(out["updates"]), out["networks"])
        self._set_actor(out["actor"])
        self._applied = upto

    def _rerun(self) -> None:
        """After a resume: the learner loads the last checkpoint, gets the buffer the jobs up
        to it had, and re-runs the jobs since; the rollouts wait as they would have."""
        import torch

        from .rl_learner import actor_weights, decode

        assert self._learner is not None
        done = 0
        if self.checkpoint is not None:
            done, updates, networks = self.checkpoint
            self._learner.load(networks, updates)
            nets = torch.load(decode(networks), weights_only=True, map_location="cpu")
            self._set_actor(actor_weights(nets["policy"], "actor.mu."))
        told = 0
        for number, (until, steps, baseline) in enumerate(self.jobs, start=1):
            self._queue_episodes(told, until)
            told = until
            if number == done:  # the buffer as that job left it, no steps
                self._send(0, 0, baseline)
                self._results.pop(0).result()
            elif number > done:
                self._send(number, steps, baseline)
        self._applied = done
        self._queue_episodes(told, len(self.episodes))  # told since the last job

    def _queue_episodes(self, start: int, stop: int) -> None:
        for levels, reward in self.episodes[start:stop]:
            if reward is not None:
                self._store(levels, reward)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": _STATE_FORMAT, "algorithm": self.algorithm, "seed": self.seed,
            "config": {**asdict(self.config), "hidden": list(self.config.hidden)},
            "rng": self.rng.bit_generator.state, "asked": self.asked, "told": self.told,
            "pending": self.pending, "untrained": self.untrained, "baseline": self.baseline,
            "episodes": [[list(levels), reward] for levels, reward in self.episodes],
            "jobs": [list(job) for job in self.jobs]}
        if self.checkpoint is not None:
            jobs, updates, networks = self.checkpoint
            state["checkpoint"] = {"jobs": jobs, "updates": updates}
            state["blobs"] = {"networks": networks}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("algorithm") != self.algorithm:
            raise ValueError(f"not a saved {self.name!r} agent state (algorithm "
                             f"{state.get('algorithm')})")
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"this {self.name!r} agent state has format {state.get('format')}, from an "
                f"older autoprune (this one reads format {_STATE_FORMAT}); resume it with the "
                "autoprune that started it, or start a new run folder")
        cfg = dict(state["config"])
        cfg["hidden"] = tuple(cfg["hidden"])
        self.config = RLConfig(**cfg)
        self.seed = int(state["seed"])
        self.rng = np.random.default_rng(self.seed)
        self.rng.bit_generator.state = state["rng"]
        self.asked, self.told = int(state["asked"]), int(state["told"])
        self.pending, self.untrained = int(state["pending"]), int(state["untrained"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.episodes = [([int(v) for v in levels], None if r is None else float(r))
                         for levels, r in state["episodes"]]
        self.jobs = [(int(a), int(b), float(c)) for a, b, c in state["jobs"]]
        ck = state.get("checkpoint")
        self.checkpoint = None if ck is None else (
            int(ck["jobs"]), int(ck["updates"]), str(state["blobs"]["networks"]))
        self._env, self._learner, self._policy = None, None, None
        self._results, self._applied, self._unsent = {}, 0, []
        self._replay = True
        if self.context is not None:
            self._ensure_model()


@register_agent("ddpg")
class DDPGAgent(RLAgent):
    """AMC: stable-baselines3 DDPG walks the units, action bound keeps every budget (He et al.)."""

    algorithm: ClassVar[str] = "DDPG"


@register_agent("td3")
class TD3Agent(RLAgent):
    """AMC-style search with stable-baselines3 TD3 (twin critics, delayed actor updates)."""

    algorithm: ClassVar[str] = "TD3"
