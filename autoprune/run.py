"""A run folder, opened: ``Run.open(folder)`` is the one way every command reads a run.

``pick``, ``recover``, ``export``, ``latency --config``, ``load_pruned`` and a resumed
``search`` all go through it. A ``Run`` owns the folder's record (run.json: the search's
settings, where its study lives, the baseline it searched), one study store, and, built on
first use, the task (dense model, data, evaluator), the example input and the search space as
the search made them. A folder that holds only chosen networks (``ofa extract`` writes one)
opens too: its networks load, and what needs a study says so.

The files themselves are written and read in ``autoprune.run_folder``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import SearchError
from autoprune.evaluator import Evaluator
from autoprune.placement import example_on, placed, resolve_device
from autoprune.precision import as_example, model_dtype
from autoprune.run_folder import (open_study, read_choice, read_run_record, rebuild_choice,
                                  study_record)
from autoprune.search_spaces import SearchSpace, make_space
from autoprune.settings import SearchSettings
from autoprune.spaces import space_options
from autoprune.study import StudyStore
from autoprune.zoo.tasks import Task, load_task
from autoprune.zoo.train import archived_baseline

__all__ = ["Run", "load_pruned"]


class Run:
    """A run folder: its record, one study store, and the task, example and space it was
    searched with (each built on first use)."""

    def __init__(self, folder: Path, record: dict[str, Any] | None, *,
                 cache_dir: Path | None = None, device: torch.device | None = None) -> None:
        self.folder, self.record, self.cache_dir = folder, record, cache_dir
        self.device = device  # where its networks are scored and trained (None: the CPU)

    @classmethod
    def open(cls, folder: str | Path, *, cache_dir: Path | None = None,
             device: str | torch.device | None = None) -> Run:
        """The run in ``folder``; refuses what is not a run folder, naming what it lacks.
        ``device`` (cpu, cuda, cuda:N, auto) is where its networks are scored and trained."""
        place = None if device is None else resolve_device(device)
        folder = Path(folder)
        if not folder.is_dir():
            what = "is a file" if folder.exists() else "does not exist"
            raise FileNotFoundError(f"{folder} {what}: not an autoprune run folder; pass the "
                                    "folder autoprune search --run-dir (or allocate's run_dir) "
                                    "wrote")
        record = read_run_record(folder) if (folder / "run.json").is_file() else None
        if record is None and not any(folder.glob("*.json")):
            raise FileNotFoundError(f"{folder} is not an autoprune run folder (no run.json and "
                                    "no chosen network's JSON); run autoprune search --run-dir "
                                    f"{folder} first")
        return cls(folder, record, cache_dir=cache_dir, device=place)

    # ------------------------------------------------------------------ what was recorded
    @property
    def made_by_api(self) -> bool:
        """Whether ``autoprune.allocate`` made it, on a model of the user's."""
        return (self.record or {}).get("made_by") == "allocate"

    @property
    def recorded(self) -> dict[str, Any]:
        """The search's identity, flat, as run.json holds it."""
        if self.record is None:
            raise FileNotFoundError(f"{self.folder} holds chosen networks but no search (no "
                                    "run.json): load them with autoprune.load_pruned")
        return dict(self.record["settings"])

    @cached_property
    def settings(self) -> SearchSettings:
        """The settings the run was searched with (``run_dir`` and ``cache_dir`` this
        folder's and this process's)."""
        return SearchSettings.from_recorded(self.recorded, run_dir=self.folder,
                                            cache_dir=self.cache_dir)

    @cached_property
    def study(self) -> StudyStore:
        """The run's study: one store, opened on first use."""
        self.recorded  # noqa: B018 - a folder without a search says so
        stored = study_record(self.folder)
        if stored is None and not (self.folder / "study.db").exists():
            raise FileNotFoundError(f"{self.folder} has no study.db (and run.json names no "
                                    "shared store): the search never started there")
        return open_study(self.folder, stored)

    # ------------------------------------------------------------------ what it searched
    @cached_property
    def task(self) -> Task:
        """The dense model (in the run's precision), its data and baseline, as searched;
        refused when the baseline changed since (``check_baseline``)."""
        if self.made_by_api:
            raise SearchError(f"{self.folder} was made by autoprune.allocate on a model of your "
                              "own, which the folder cannot build; load its network with "
                              "autoprune.load_pruned(folder, model=dense)")
        src = self.settings.source
        try:
            task = load_task(src.model, src.data, image_size=src.image_size,
                             width_mult=src.width_mult, cache_dir=self.cache_dir, progress=False,
                             model_args=src.model_args, weights=src.weights)
        except ValueError as err:
            raise SearchError(str(err)) from None
        self.check_baseline(task)
        dtype = None if src.dtype == "float32" else src.dtype
        if dtype is None and self.device is None:
            return task
        return replace(task, model=placed(task.model, device=self.device, dtype=dtype))

    def check_baseline(self, task: Task) -> None:
        """Refuse a run whose dense weights changed since it searched: its trials were scored
        on the others."""
        recorded = (self.record or {}).get("baseline", {}).get("sha256")
        now = task.weights_hash()
        if recorded is None or now is None or recorded == now:
            return
        path = Path(str(task.baseline.get("weights_path", "")))
        kept = archived_baseline(path, recorded)
        where = (f" The baseline it searched is kept at {kept}: move it back to {path} to go "
                 "on with this run." if kept.is_file() else "")
        raise SearchError(f"the dense weights of {self.folder} changed since it searched "
                          f"(it was made on weights {recorded[:12]}, {path} now holds "
                          f"{now[:12]}: a baseline trained again, or another weights file); "
                          "its trials and figures belong to the old weights. Start a new run on "
                          f"the new ones (autoprune search --run-dir NEW).{where}")

    @property
    def model(self) -> nn.Module:
        """The dense model, as searched."""
        return self.task.model

    @cached_property
    def example(self) -> Any:
        """One sample's example input, in the model's precision."""
        return example_on(as_example(self.task.example_inputs(1), model_dtype(self.model)),
                          self.device)

    def evaluator(self, *, finetune_steps: int | None = None) -> Evaluator:
        """The run's evaluator (its fine-tune steps, unless ``finetune_steps`` says)."""
        scoring = self.settings.scoring
        return self.task.evaluator(
            calib_batches=scoring.calib_batches, seed=self.settings.seed, user=scoring.evaluator,
            finetune_steps=scoring.finetune_steps if finetune_steps is None else finetune_steps)

    @cached_property
    def space(self) -> SearchSpace:
        """The space as the search built it (its criterion too), with its level store."""
        s = self.settings
        space = make_space(s.space.space, self.model, self.example, round_to=s.space.round_to,
                           min_ratio=s.space.min_ratio, output=s.source.output,
                           **space_options(s.space, self.task, seed=s.seed))
        space.keep_in(self.folder / "levels")  # a weight-sparse run's levels: read, not rebuilt
        return space

    # ------------------------------------------------------------------ what it chose
    def choice(self, name: str = "best") -> dict[str, Any]:
        """A chosen network's JSON (``best``, or ``pick-...`` by its file's stem)."""
        path = self.folder / f"{name}.json"
        if not path.is_file():
            chosen = sorted(p.stem for p in self.folder.glob("*.json")
                            if p.stem == "best" or p.stem.startswith("pick-"))
            raise FileNotFoundError(
                f"{path} does not exist: "
                + (f"{self.folder} holds {', '.join(chosen)}" if chosen else
                   f"{self.folder} holds no chosen network yet (its search has not finished: "
                   "run it again to resume)"))
        return read_choice(path)[0]

    def network(self, name: str = "best", *, model: nn.Module | None = None) -> nn.Module:
        """A chosen network rebuilt with its weights (loaded weights only, never unpickled
        code). ``model``: the dense model, for a run made on a model of the user's."""
        choice = self.choice(name)
        weights = self.folder / choice.get("weights", "pruned.pt")
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing: the run folder is incomplete")
        network = rebuild_choice(choice, self.folder, model=model)[0]
        return network if self.device is None else placed(network, device=self.device)


def load_pruned(run_dir: str | Path, *, choice: str = "best",
                model: nn.Module | None = None) -> nn.Module:
    """The pruned network a run chose (``choice="best"``), that ``autoprune pick`` chose
    (``choice="pick-flops-30"``, the name of its JSON file) or that ``Allocation.save`` wrote,
    rebuilt and loaded (weights only, never unpickled code). A run made by
    ``autoprune.allocate`` on a model of your own needs that dense model: ``model=dense``
    (it is not modified)."""
    return Run.open(run_dir).network(choice, model=model)
