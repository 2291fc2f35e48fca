"""The study: the persistent record of every trial of one search, kept in an optuna study.

Each finished trial is written as one complete optuna trial in a single call, so a search killed
at any moment loses nothing that had finished and leaves no half-written trial. Per-unit kept
ratios are the trial's params (so ``optuna-dashboard <run>/study.db`` plots them); channels,
costs, metrics and the evaluated point are user attributes; the agent's state is a study
attribute, saved after every trial, so a resumed search continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["StudyError", "StudyStore", "TrialRecord"]

optuna.logging.set_verbosity(optuna.logging.WARNING)
_OPEN_TRIES = 5


class StudyError(ValueError):
    """A run folder's study that cannot be opened (not a database, or not optuna's)."""


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One evaluated (or failed) configuration."""

    number: int
    point: tuple[float, ...]
    config: Mapping[str, int]
    costs: Mapping[str, float]
    metrics: Mapping[str, float]
    objective: float
    failed: bool = False
    reason: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "config": dict(self.config), "costs": dict(self.costs),
                "metrics": dict(self.metrics), "objective": self.objective, "failed": self.failed,
                "reason": self.reason}


class StudyStore:
    """An optuna study used as an append-only log of trials."""

    def __init__(self, storage: str | None, *, study_name: str = "autoprune") -> None:
        for attempt in range(_OPEN_TRIES):
            try:
                self.study = optuna.create_study(storage=storage, study_name=study_name,
                                                 direction="maximize", load_if_exists=True)
                return
            except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
                # Processes opening a new study.db at once (a search starting while
                # optuna-dashboard or a second process reads the folder) race to set it up:
                # optuna's RDBStorage creates its tables and stamps their version, neither
                # atomic on SQLite, and the losers fail ("table ... already exists", "UNIQUE
                # constraint failed: alembic_version"). Opening again finds it set up; a
                # database that is really broken fails the same way every time.
                if storage is None:
                    raise
                if attempt == _OPEN_TRIES - 1:
                    where = storage.removeprefix("sqlite:///")
                    first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                    raise StudyError(
                        f"cannot open the study {where} ({first}). Fix: give the run a new "
                        f"folder (--run-dir), or move {Path(where).name} away to start it "
                        "over.") from err
                time.sleep(0.05 * (attempt + 1))

    @classmethod
    def in_folder(cls, run_dir: Path) -> StudyStore:
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{(run_dir / 'study.db').resolve()}")

    @classmethod
    def in_memory(cls) -> StudyStore:
        return cls(None)

    # ------------------------------------------------------------------ trials
    def add(self, record: TrialRecord, *, params: Mapping[str, float],
            lows: Mapping[str, float]) -> None:
        """Append one trial (complete, or failed with its reason)."""
        attrs = {"point": list(record.point), "channels": dict(record.config),
                 "costs": dict(record.costs), "metrics": _finite(record.metrics),
                 "reason": record.reason, **dict(record.extra)}
        dists = {k: FloatDistribution(min(lows[k], params[k]), 1.0) for k in params}
        state = TrialState.FAIL if record.failed else TrialState.COMPLETE
        trial = optuna.trial.create_trial(
            params=dict(params), distributions=dists, user_attrs=attrs, state=state,
            value=None if record.failed else record.objective)
        self.study.add_trial(trial)

    def records(self) -> list[TrialRecord]:
        out = []
        for t in self.study.get_trials(deepcopy=False,
                                       states=(TrialState.COMPLETE, TrialState.FAIL)):
            a = t.user_attrs
            failed = t.state == TrialState.FAIL
            out.append(TrialRecord(
                number=t.number, point=tuple(a.get("point", ())), config=a.get("channels", {}),
                costs=a.get("costs", {}), metrics={k: (float("nan") if v is None else v)
                                                   for k, v in a.get("metrics", {}).items()},
                objective=float("nan") if failed else float(t.value), failed=failed,
                reason=a.get("reason", "")))
        return out

    # ------------------------------------------------------------------ study attributes
    def set_meta(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, json.loads(json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        return self.study.user_attrs.get(key, default)


def _finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    # JSON (and so optuna's attributes) has no NaN: a missing score is stored as null.
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
