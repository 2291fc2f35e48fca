from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import torch
from torch import nn
import pytest


def run_cli(args: list[str], cache: Path, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``autoprune ARGS`` in a subprocess with its baseline cache in ``cache``; with ``check``
    a non-zero exit fails the test, showing the end of stderr."""
    full = {**os.environ, "AUTOPRUNE_CACHE": str(cache), "COLUMNS": "120", **(env or {})}
    out = subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True,
                         text=True, env=full, timeout=900)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The suite's models are small: intra-op threads buy little, while two OpenMP threads on
    # a 2-core machine shared with other torch processes spin on barriers and ran tests
    # 10-100x slower. Subprocesses started by tests keep torch's default.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class ResidualDepthwiseNet(nn.Module):
    """A user model (not from the zoo) with a residual add and a depthwise conv."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(32)
        self.expand = nn.Conv2d(32, 64, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(64)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
        self.dw_bn = nn.BatchNorm2d(64)
        self.project = nn.Conv2d(64, 32, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem_bn(self.stem(x)))
        z = torch.relu(self.expand_bn(self.expand(y)))
        z = torch.relu(self.dw_bn(self.dw(z)))
        z = self.project_bn(self.project(z))
        y = torch.relu(y + z)
        return self.head(y.mean(dim=(2, 3)))


@pytest.fixture
def user_model() -> nn.Module:
    torch.manual_seed(0)
    return ResidualDepthwiseNet()


def slow_width_score(sleep: float) -> Callable[[nn.Module], dict[str, float]]:
    """An evaluator for search subprocesses: wider is better (no training needed), each call
    taking ``sleep`` seconds so a test can kill the search mid-way."""

    def score(model: nn.Module) -> dict[str, float]:
        time.sleep(sleep)
        n = sum(p.numel() for p in model.parameters())
        return {"accuracy": n / (n + 5000.0)}

    return score


def kill_after_trials(proc: subprocess.Popen, db: Path, trials: int = 4,
                      timeout: float = 900.0) -> int:
    """SIGKILL the search ``proc`` once its study ``db`` holds ``trials`` trials (or it ends,
    or ``timeout`` passes: a guard against a hung search, not a speed the host must reach);
    returns how many it held when polled last. The study is read
    through a read-only SQLite connection: opening it with optuna would create its tables,
    racing the search that is creating them."""
    deadline, done = time.time() + timeout, 0
    while time.time() < deadline and done < trials and proc.poll() is None:
        time.sleep(0.3)
        if db.exists():
            try:
                with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                    done = con.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
            except sqlite3.Error:  # not created yet, or locked by a write
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return done
