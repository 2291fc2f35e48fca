"""Settings, in a few frozen parts: what to prune (``ModelSource``), the search space
(``SpaceSettings``), how candidates are scored (``ScoringSettings``), the device a latency is
for (``autoprune.latency.Device``) and where trials run (``ExecutorSettings``); the settings of
each whole job (``SearchSettings``, ``ProfileSettings``, ``LatencySettings``) compose them.

This module imports no torch: the command line takes every default from these classes, so
there is one copy of each, and ``autoprune --help`` stays fast.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from autoprune.latency.device import FINAL_REPEATS, FINAL_WARMUP, Device
from autoprune.targets import parse_targets

__all__ = ["SPACE_KINDS", "ExecutorSettings", "LatencySettings", "ModelSource", "ProfilePlan", "ProfileSettings",
           "ScoringSettings", "SearchSettings", "SpaceSettings", "slug"]

#: ``accuracy``: the best network within the budgets. ``pareto``: the front of accuracy against
#: the first budget's cost, from the thinnest network up to that budget (``autoprune.pareto``).
OBJECTIVES = ("accuracy", "pareto")


def slug(text: str) -> str:
    """A file-name-safe form of targets or names (``flops=50%`` -> ``flops-50``)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """What to prune: a zoo model, or a user's factory (``file.py:fn``, ``package.module:fn``,
    called with ``model_args``, each ``name=value``, and loaded with ``weights``), on a data
    source, at an input resolution and width (a zoo model's)."""

    # VGG-11 at 80 px: `autoprune search --target latency=10ms` (README's main job) must need
    # real pruning on every host it runs on: the dense network at least 2x the budget on the
    # fastest host seen. At 40 px it measured 7.7-8.3 ms on the fastest 2-core host (Intel
    # Xeon, quiet; batch 1, one thread) and 11.9-13 ms on the same host busy or on slower
    # ones, so the search cut only 16% of the MACs; 72 px measured 18-20.6 ms there, 80 px
    # (4x the MACs of 40 px) 21.8-25 ms. It trains in about 6 CPU-minutes (8.5 minutes on
    # the busy host) to 98.6% validation and 95.8% test accuracy with the default epochs.
    model: str = "vgg11"
    data: str = "digits"
    image_size: int = 80
    width_mult: float = 1.0
    # The output tensor pruning must keep (a ModelOutput field, dict key or tuple position;
    # None: the first tensor).
    output: str | None = None
    model_args: tuple[str, ...] = ()
    weights: str | None = None
    # One sample's input shape (no batch), for when no data gives it (profile, latency).
    input_shape: tuple[int, ...] | None = None
    # The precision the model is searched in (its weights and every trial): float32,
    # bfloat16 or float16 (autoprune.precision).
    dtype: str = "float32"

    def recorded(self) -> dict[str, Any]:
        """The fields a run folder records: the options left at their defaults are left out,
        so folders made before them still resume."""
        optional = {"output": None, "model_args": (), "weights": None, "input_shape": None,
                    "dtype": "float32"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if k not in optional or v != optional[k]}


#: What each registered space (``search_spaces.SPACES``, the classes) prunes: the torch-free
#: view of the registry that settings, checks and reports read (a test keeps the two equal).
SPACE_KINDS: dict[str, frozenset[str]] = {
    "channel": frozenset({"channels"}), "unstructured": frozenset({"weights"}),
    "nm": frozenset({"weights"}), "channel+unstructured": frozenset({"channels", "weights"})}


@dataclass(frozen=True, kw_only=True)
class SpaceSettings:
    """The search space: its registered name (``--space``), channel rounding, lower bound, and
    the criterion that ranks the channels within each unit (``--criterion``: a registered
    one, ``autoprune.search_spaces.criterion_names()``; the data-driven ones rank on
    ``criterion_batches`` batches of the training split)."""

    space: str = "channel"
    round_to: int = 8
    # None: each kind of unit keeps its own floor (search_spaces.channel.FLOORS).
    min_ratio: float | None = None
    criterion: str = "l2"
    criterion_batches: int = 8
    # The weight-sparsity spaces (``space`` unstructured or nm; ``--granularity``): the
    # sparsity levels a weight tensor may take, the N:M patterns a layer may follow, whether
    # the first and last layers are pruned too, and the storage format ``size=`` counts.
    levels: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
    nm: tuple[str, ...] = ("2:4", "1:4")
    include_ends: bool = False
    storage_format: str = "bitmap"

    def __post_init__(self) -> None:
        # The default criterion, l2, ranks channels; a weight-sparsity space's own default is
        # magnitude (the same norm, per weight), so the defaults work for every space.
        if self.criterion == "l2" and not self.prunes_channels:
            object.__setattr__(self, "criterion", "magnitude")

    @property
    def prunes_channels(self) -> bool:
        """Whether whole channels go (a channel criterion ranks them; latency steers them)."""
        return "channels" in SPACE_KINDS.get(self.space, frozenset({"channels"}))

    @property
    def prunes_weights(self) -> bool:
        """Whether single weights go (sparsity= and size= budgets; a compressed file)."""
        return "weights" in SPACE_KINDS.get(self.space, frozenset())

    def options(self) -> dict[str, Any]:
        """The space's own options (``make_space(..., **options)``); none for channels,
        ``levels`` and ``include_ends`` for unstructured and channel+unstructured."""
        if self.space == "channel":
            return {}
        common: dict[str, Any] = {"include_ends": self.include_ends}
        return {**common, "levels": self.levels} \
            if self.space in ("unstructured", "channel+unstructured") \
            else {**common, "nm": self.nm}

    @classmethod
    def from_recorded(cls, saved: dict[str, Any]) -> SpaceSettings:
        """The space settings a run folder's identity (run.json) records."""
        default = cls()
        kept = {k: saved[k] for k in ("space", "round_to", "min_ratio", "criterion",
                                      "criterion_batches", "include_ends", "storage_format")
                if k in saved}
        return cls(**kept, levels=tuple(saved.get("levels", default.levels)),
                   nm=tuple(saved.get("nm", default.nm)))

    def recorded(self) -> dict[str, Any]:
        """What a run's identity holds of the space beyond rounding and floor (older run
        folders hold none of it, and resume)."""
        flat: dict[str, Any] = {}
        if self.space != "channel":
            flat["space"] = self.space
            flat.update({k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in self.options().items()})
            flat["storage_format"] = self.storage_format
        if self.criterion != "l2":
            flat["criterion"] = self.criterion
            flat["criterion_batches"] = self.criterion_batches
        return flat


@dataclass(frozen=True, kw_only=True)
class ScoringSettings:
    """How a candidate is scored: adaptive-BN batches, optional few-step fine-tune, and the
    metric (the built-in one, or a user's ``evaluator``)."""

    calib_batches: int = 16
    finetune_steps: int = 0
    # A metric of the user's: file.py:fn or package.module:fn, fn(model, batches) -> dict.
    evaluator: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExecutorSettings:
    """Where trials run; none of these change the results, so a run folder may be resumed with
    another executor. ``workers=None``: 1 locally, as many as the CPUs hold on Ray."""

    executor: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # Ray: each trial's share of a GPU (0: none)
    # Where scoring, statistics and fine-tunes run (autoprune.placement): cpu, cuda, cuda:N or
    # auto (a GPU when torch sees one). Not the latency Device, which says what a latency is for.
    device: str = "auto"


@dataclass(frozen=True, kw_only=True)
class ProfilePlan:
    """How much to measure. ``grid`` widths per axis at most; ``calibration`` whole networks
    (dense, thinnest, random) the correction is fitted on, and ``holdout`` random ones it is
    checked on. In each of ``rounds`` shuffled rounds a block gets ``warmup`` + ``repeats``
    calls and a whole network ``net_warmup`` + ``net_repeats``."""

    grid: int = 5
    rounds: int = 3
    warmup: int = 3
    repeats: int = 10
    calibration: int = 10
    holdout: int = 6
    net_warmup: int = 3
    net_repeats: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.grid < 2 or self.repeats < 1 or self.rounds < 1 or self.net_repeats < 1:
            raise ValueError(f"invalid profile plan {self}: grid >= 2, repeats, rounds >= 1")
        if self.calibration < 2:
            raise ValueError("calibration needs at least 2 whole networks (dense and thinnest)")
        if self.holdout < 1:
            raise ValueError("holdout needs at least 1 whole network (the table's check)")


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """Everything ``autoprune search`` takes. The source, the space, the scoring, the targets,
    agent and seed define the search: a run folder refuses to resume with other values."""

    source: ModelSource = field(default_factory=ModelSource)
    space: SpaceSettings = field(default_factory=SpaceSettings)
    scoring: ScoringSettings = field(default_factory=ScoringSettings)
    device: Device = field(default_factory=Device)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    targets: tuple[str, ...] = ("flops=50%",)
    # auto: the agent autoprune.agents.AUTO names for one objective or a Pareto front (search
    # resolves it first, so run.json records the agent itself).
    agent: str = "auto"
    objective: str = "accuracy"
    # The RL agents' reward (agents/rl.py): acc (AMC's -error) or acc-flops (-error * log FLOPs).
    reward: str = "acc"
    seed: int = 0
    trials: int = 30
    run_dir: Path | None = None
    # A shared study store: an optuna RDB URL (postgresql+psycopg://...). None: study.db in
    # the run folder. Not part of the identity: run.json records it beside, and a resume
    # elsewhere is refused with its own error (``run_folder.study_record``).
    storage: str | None = None
    cache_dir: Path | None = None
    progress: bool = True
    # The lookup table that costs a latency budget (None: built on first use and cached next
    # to the baselines).
    lut: Path | None = None

    def identity(self) -> dict[str, Any]:
        """What a run folder records and a resume must match (flat, as run.json has always
        held it)."""
        flat: dict[str, Any] = {**self.source.recorded(), "targets": list(self.targets),
                                "agent": self.agent, "seed": self.seed,
                                "round_to": self.space.round_to, "min_ratio": self.space.min_ratio,
                                **{k: v for k, v in asdict(self.scoring).items()
                                   if k != "evaluator" or v is not None}}
        flat.update(self.space.recorded())  # only what differs from a channel search
        if self.objective != "accuracy":  # so run folders made before Pareto searches resume
            flat["objective"] = self.objective
        if self.reward != "acc":  # likewise for run folders made before the RL agents
            flat["reward"] = self.reward
        if self.has_latency_target():  # predicted latencies in the study hold for one device
            flat.update(batch=self.device.batch, threads=self.device.threads,
                        backend=self.device.backend, clock=self.device.clock)
        return flat

    @classmethod
    def from_recorded(cls, saved: dict[str, Any], **overrides: Any) -> SearchSettings:
        """The settings whose ``identity()`` a run folder recorded (run.json's ``settings``),
        with ``overrides`` (run_dir, cache_dir, ...) for what a run does not record."""
        def plain(v: Any) -> Any:
            return tuple(v) if isinstance(v, list) else v

        source = ModelSource(**{f.name: plain(saved[f.name]) for f in fields(ModelSource)
                                if f.name in saved})
        scoring = ScoringSettings(**{f.name: saved[f.name] for f in fields(ScoringSettings)
                                     if f.name in saved})
        device = Device(**{k: saved[k] for k in ("batch", "threads", "backend", "clock")
                           if k in saved})
        return cls(source=source, space=SpaceSettings.from_recorded(saved), scoring=scoring,
                   device=device, targets=tuple(saved.get("targets", ())),
                   agent=saved.get("agent", "auto"), seed=saved.get("seed", 0),
                   objective=saved.get("objective", "accuracy"),
                   reward=saved.get("reward", "acc"), **overrides)

    def has_latency_target(self) -> bool:
        return any(t.metric == "latency_ms" for t in parse_targets(self.targets))

    def default_run_dir(self) -> Path:
        kind = "" if self.objective == "accuracy" else f"-{self.objective}"
        model = slug(self.source.model.rpartition(":")[2]) if ":" in self.source.model \
            else self.source.model
        return Path("runs") / (f"{model}-{slug(self.source.data)}-"
                               f"{slug('_'.join(self.targets))}-{self.agent}{kind}-s{self.seed}")


@dataclass(frozen=True, kw_only=True)
class ProfileSettings:
    """What ``autoprune profile`` takes. Latency does not depend on weight values, so the
    profiled model is the zoo architecture, untrained; the data set gives its input shape."""

    source: ModelSource = field(default_factory=ModelSource)
    space: SpaceSettings = field(default_factory=SpaceSettings)
    device: Device = field(default_factory=Device)
    output: Path = Path("lut.json")
    plan: ProfilePlan = field(default_factory=ProfilePlan)


@dataclass(frozen=True, kw_only=True)
class LatencySettings:
    """What ``autoprune latency`` takes: a zoo model (dense, or a run's chosen configuration)."""

    source: ModelSource = field(default_factory=ModelSource)
    device: Device = field(default_factory=Device)
    config: Path | None = None
    warmup: int = FINAL_WARMUP
    repeats: int = FINAL_REPEATS
    lut: Path | None = None
