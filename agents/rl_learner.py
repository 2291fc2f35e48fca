"""The RL agents' learner: stable-baselines3's gradient steps in a process of their own, so an
agent learns while the search's trials run instead of between them.

Why a process: an update (48 TD3 steps on 300-300 networks after a 12-unit episode) costs about
as much as a trial, and a trial cannot start until the agent has proposed it. A thread would
share torch's and numpy's global random generators with the trial (SB3 samples batches and
TD3's target noise from them), so updates would stop being reproducible; a process has its own.

How the agent uses it (``agents/rl.py``): the learner holds the agent's SB3 model (actor,
critics, targets, optimizers, replay buffer). Each *job* brings the transitions told since the
last one, the reward baseline and a number of gradient steps; the learner adds them, trains
with generators seeded by ``(seed, updates so far)``, and returns the new actor weights (and,
every few jobs, the whole networks encoded for the agent's saved state). Jobs run in the order
they were sent, so their results depend only on what was sent, never on timing.

One learner process serves every RL agent of this Python process (keyed by agent); it starts
on first use (``python -c`` importing this module: no re-import of the user's ``__main__``)
with torch pinned to one thread, and ends when this process does (its stdin closes). Messages
are pickled frames over its stdin/stdout, between two processes of the same program.

Protocol (requests; each gets one reply, in order): ``("open", key, spec)`` builds the model;
``("load", key, networks, updates)`` restores saved networks; ``("train", key, job)`` adds a
job's transitions and trains; ``("close", key)`` drops the model.
"""

from __future__ import annotations

import atexit
import base64
import io
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import IO, Any

import numpy as np

__all__ = ["Learner", "LearnerError"]

_HEADER = struct.Struct("<Q")


class LearnerError(RuntimeError):
    """The learner process failed or died."""


def _send(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)  # noqa: S301 - frames from our own learner process


def encode(write: Any) -> str:
    """``write(file)`` into memory, as base64 text (JSON-safe)."""
    buf = io.BytesIO()
    write(buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode(text: str) -> io.BytesIO:
    return io.BytesIO(base64.b64decode(text.encode("ascii")))


# ---------------------------------------------------------------------- the model (both sides)
def build_model(spec: Mapping[str, Any]) -> Any:
    """The agent's SB3 model, seeded: the same weights in the agent and in the learner."""
    import gymnasium
    import torch
    from gymnasium import spaces
    from stable_baselines3 import DDPG, TD3
    from stable_baselines3.common.logger import Logger

    class _Spaces(gymnasium.Env):  # what SB3 needs of the environment to build its networks
        observation_space = spaces.Box(0.0, 1.0, shape=(int(spec["features"]),),
                                       dtype=np.float32)
        action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

        def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
            return np.zeros(self.observation_space.shape, np.float32), {}

        def step(self, action: Any) -> Any:
            raise NotImplementedError("only the spaces of this environment are used")

    cls = {"DDPG": DDPG, "TD3": TD3}[spec["algorithm"]]
    with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG left alone
        torch.manual_seed(int(spec["seed"]))
        model = cls("MlpPolicy", _Spaces(), learning_rate=spec["learning_rate"],
                    buffer_size=int(spec["buffer_size"]), learning_starts=0,
                    batch_size=int(spec["batch_size"]), tau=spec["tau"], gamma=spec["gamma"],
                    policy_kwargs={"net_arch": list(spec["hidden"])}, device="cpu", seed=None,
                    verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def actor_network(spec: Mapping[str, Any]) -> Any:
    """SB3's deterministic actor (``Actor.mu``: linear and ReLU layers, then tanh) as a plain
    torch module: what the agent rolls out with, without importing SB3 in its process."""
    from torch import nn

    sizes = [int(spec["features"]), *(int(h) for h in spec["hidden"])]
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], 1), nn.Tanh()).eval()


def actor_weights(state: Mapping[str, Any], prefix: str = "mu.") -> dict[str, Any]:
    """The weights of ``actor_network`` in an SB3 actor's (or policy's, with the prefix
    ``actor.mu.``) state dict."""
    return {k[len(prefix):]: v.detach().clone() for k, v in state.items()
            if k.startswith(prefix)}


class _Model:
    """One agent's model inside the learner: SB3's model and the raw rewards of its buffer."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.seed = int(spec["seed"])
        self.model = build_model(spec)
        self.raw = np.zeros(self.model.replay_buffer.buffer_size, dtype=np.float32)

    def load(self, networks: str, updates: int) -> None:
        import torch

        nets = torch.load(decode(networks), weights_only=True, map_location="cpu")
        m = self.model
        m.policy.load_state_dict(nets["policy"])
        m.actor.optimizer.load_state_dict(nets["actor_optimizer"])
        m.critic.optimizer.load_state_dict(nets["critic_optimizer"])
        m._n_updates = int(updates)

    def networks(self) -> str:
        import torch

        m = self.model
        blob = {"policy": m.policy.state_dict(),
                "actor_optimizer": m.actor.optimizer.state_dict(),
                "critic_optimizer": m.critic.optimizer.state_dict()}
        return encode(lambda f: torch.save(blob, f))

    def train(self, job: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        m = self.model
        buffer = m.replay_buffer
        obs, nxt, actions, dones, rewards = (job[k] for k in (
            "observations", "next_observations", "actions", "dones", "rewards"))
        for i in range(len(rewards)):
            self.raw[buffer.pos] = rewards[i]
            buffer.add(obs[i][None], nxt[i][None], actions[i][None],
                       np.array([rewards[i]]), np.array([dones[i]]), [{}])
        size = buffer.size()
        buffer.rewards[:size, 0] = self.raw[:size] - float(job["baseline"])  # AMC's baseline
        seed = int(np.random.SeedSequence([self.seed, m._n_updates]).generate_state(1)[0])
        if int(job["steps"]) > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed)  # SB3 samples batch indices from the global generator
                m.train(gradient_steps=int(job["steps"]), batch_size=int(job["batch_size"]))
        out: dict[str, Any] = {"actor": actor_weights(m.actor.state_dict()),
                               "updates": int(m._n_updates)}
        if job.get("checkpoint"):
            out["networks"] = self.networks()
        return out


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """The learner's loop: one reply per request, in order, until its input closes."""
    import signal

    import torch

    # Ctrl-C reaches the whole process group: the agent's process handles it, and its exit
    # closes this input; a traceback from here too would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    models: dict[Any, _Model] = {}
    while True:
        try:
            request = _receive(inp)
        except EOFError:
            return
        kind, key, *args = request
        try:
            if kind == "open":
                models[key] = _Model(args[0])
                reply: Any = actor_weights(models[key].model.actor.state_dict())
            elif kind == "load":
                models[key].load(*args)
                reply = None
            elif kind == "train":
                reply = models[key].train(args[0])
            elif kind == "close":
                models.pop(key, None)
                reply = None
            else:
                raise ValueError(f"unknown request {kind!r}")
            _send(out, ("ok", reply))
        except Exception as err:  # noqa: BLE001 - sent back and raised in the agent
            import traceback

            _send(out, ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))


# ---------------------------------------------------------------------- the agent's side
class _Process:
    """The learner process of this Python process, and the replies it owes."""

    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from autoprune.agents.rl_learner import serve; "
             "serve(sys.stdin.buffer, sys.stdout.buffer)"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.lock = threading.Lock()
        self.waiting: list[Future[Any]] = []
        self.dropped: list[Any] = []  # keys of agents garbage-collected (see Learner.__del__)
        self.failed: str | None = None
        self.reader = threading.Thread(target=self._read, name="rl-learner-replies",
                                       daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                status, reply = _receive(self.proc.stdout)
            except EOFError:
                break
            with self.lock:
                future = self.waiting.pop(0)
            if status == "ok":
                future.set_result(reply)
            else:
                future.set_exception(LearnerError(f"the RL learner failed: {reply}"))
        code = self.proc.wait()
        with self.lock:
            self.failed = (f"the RL learner process ended (exit code {code}); its error, if "
                           "any, is printed above. Rerun the search: it resumes from its study")
            waiting, self.waiting = self.waiting, []
        for future in waiting:
            future.set_exception(LearnerError(self.failed))

    def request(self, *message: Any) -> Future[Any]:
        while self.dropped:  # models of agents gone since the last request
            self._request("close", self.dropped.pop())
        return self._request(*message)

    def _request(self, *message: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self.lock:
            if self.failed is not None:
                raise LearnerError(self.failed)
            self.waiting.append(future)
            assert self.proc.stdin is not None
            try:
                _send(self.proc.stdin, message)
            except (BrokenPipeError, OSError):
                self.waiting.remove(future)
                raise LearnerError("the RL learner process is gone; rerun the search: it "
                                   "resumes from its study") from None
        return future

    def close(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_PROCESS: _Process | None = None
_PROCESS_LOCK = threading.Lock()


def _process() -> _Process:
    global _PROCESS
    with _PROCESS_LOCK:
        if _PROCESS is None or _PROCESS.failed is not None:
            _PROCESS = _Process()
            atexit.register(_PROCESS.close)
        return _PROCESS


class Learner:
    """One agent's model in the learner process: jobs go in order, results come back as
    futures (``Future.result()`` waits for one)."""

    _next_key = 0

    def __init__(self, spec: Mapping[str, Any]) -> None:
        Learner._next_key += 1
        self.key = (os.getpid(), Learner._next_key)
        self.process = _process()
        #: The seeded actor's initial weights (``actor_weights``), once the model is built.
        self.opened: Future[Any] = self.process.request("open", self.key, dict(spec))

    def load(self, networks: str, updates: int) -> Future[Any]:
        return self.process.request("load", self.key, networks, int(updates))

    def train(self, job: Mapping[str, Any]) -> Future[Any]:
        return self.process.request("train", self.key, dict(job))

    def __del__(self) -> None:
        # An agent dropped: its model leaves the learner with the next request (a finalizer
        # may run in the middle of a request of this thread, so it only takes a note).
        self.process.dropped.append(self.key)
