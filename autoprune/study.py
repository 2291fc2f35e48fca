"""The study: the persistent record of every trial of one search, kept in an optuna study.

Each finished trial is written as one complete optuna trial in a single call, so a search killed
at any moment loses nothing that had finished and leaves no half-written trial. Per-unit kept
ratios are the trial's params (so ``optuna-dashboard <run>/study.db`` plots them); channels,
costs, metrics and the evaluated point are user attributes; the agent's state is a study
attribute, saved after every trial, so a resumed search continues where it stopped.

A study lives in the run folder's ``study.db`` (SQLite), or in a shared database given as an
optuna RDB URL (``--storage postgresql+psycopg://...``): there each run folder has a study of
its own name (``study_name_for``), and a URL is only ever printed masked (``masked``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["StudyError", "StudyStore", "TrialRecord", "check_storage", "masked",
           "normalize_storage", "study_name_for"]

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


#: ``TrialRecord.extra`` keys read back from a study (written with every trial).
_EXTRA = ("probe", "broken_units")


class StudyStore:
    """An optuna study used as an append-only log of trials."""

    def __init__(self, storage: str | None, *, study_name: str = "autoprune") -> None:
        self.storage, self.study_name = storage, study_name
        self._blobs: dict[str, tuple[str, dict[str, str]]] = {}  # name -> (text, its ref)
        for attempt in range(_OPEN_TRIES):
            try:
                where: Any = storage
                if storage is not None and not storage.startswith("sqlite"):
                    # a database server may close a connection left idle during a long trial
                    where = optuna.storages.RDBStorage(
                        storage, engine_kwargs={"pool_pre_ping": True})
                self.study = optuna.create_study(storage=where, study_name=study_name,
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
                    first = _first_line(err, storage)
                    if not storage.startswith("sqlite:///"):
                        raise StudyError(
                            f"cannot open the study {study_name!r} in {masked(storage)} "
                            f"({first}). Fix: check that the database server is up and the "
                            "URL's user may create tables there, or give the run a new folder "
                            "(--run-dir).") from err
                    where = storage.removeprefix("sqlite:///")
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
                reason=a.get("reason", ""),
                extra={k: a[k] for k in _EXTRA if k in a}))
        return out

    # ------------------------------------------------------------------ study attributes
    def set_meta(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, json.loads(json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        return self.study.user_attrs.get(key, default)

    def put_blob(self, name: str, text: str) -> dict[str, str]:
        """Keep a large text that changes rarely (an RL agent's networks) in an attribute of its
        own, written only when it changed, and return the small reference to save in its
        place (``get_blob`` reads it back). Two attributes alternate, so the reference saved
        last always names a complete blob: a kill between the two writes leaves the previous
        pair. Writing megabytes after every trial would cost more than the agent."""
        known = self._blobs.get(name)
        if known is not None and (known[0] is text or known[0] == text):
            return known[1]
        slot = "b" if known is not None and known[1]["key"].endswith(".a") else "a"
        ref = {"key": f"blob.{name}.{slot}",
               "sha256": hashlib.sha256(text.encode("ascii")).hexdigest()}
        self.set_meta(ref["key"], text)
        self._blobs[name] = (text, ref)
        return ref

    def get_blob(self, name: str, ref: Mapping[str, str]) -> str:
        """The text ``put_blob`` returned ``ref`` for."""
        text = self.get_meta(ref["key"])
        if not isinstance(text, str) or \
                hashlib.sha256(text.encode("ascii")).hexdigest() != ref["sha256"]:
            raise StudyError(f"the study's saved {name!r} ({ref['key']}) is missing or does not "
                             "match its reference; resume is not possible from this study. "
                             "Fix: start the search in a new run folder")
        self._blobs[name] = (text, dict(ref))
        return text


# ---------------------------------------------------------------------- shared stores (URLs)
def masked(url: str) -> str:
    """``url`` with its password as ``***`` (what may be printed)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def normalize_storage(url: str) -> str:
    """The form of ``url`` a run folder records: a relative SQLite file by its absolute path
    (so the folder reopens it from anywhere); any other URL as given."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url.strip())
    except ArgumentError:
        return url.strip()
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:") \
            and not Path(u.database).is_absolute():
        u = u.set(database=str(Path(u.database).resolve()))
        return u.render_as_string(hide_password=False)
    return url.strip()


_DRIVERS = {"postgresql": "pip install 'autoprune[postgres]' (psycopg; URLs "
                          "postgresql+psycopg://...)",
            "mysql": "pip install pymysql (URLs mysql+pymysql://...)"}
_EXAMPLE = ("e.g. postgresql+psycopg://user:password@host:5432/database, "
            "mysql+pymysql://user:password@host/database or sqlite:////absolute/path/study.db")


def check_storage(url: str, *, timeout_s: float = 10.0) -> None:
    """Refuse, with one ``StudyError`` naming the fix, a ``url`` that is not an RDB URL optuna
    can use, whose driver is missing, or whose database does not answer (a connection is
    opened and closed, at most ``timeout_s`` to connect)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    from sqlalchemy.pool import NullPool

    shown = masked(url)
    try:
        u = make_url(url)
        u.get_dialect()
    except (ArgumentError, NoSuchModuleError) as err:
        raise StudyError(f"--storage {shown} is not a database URL optuna can keep a study in "
                         f"({_first_line(err, url)}); give an RDB URL, {_EXAMPLE}") from None
    backend = u.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend in ("postgresql", "mysql"):
        connect_args["connect_timeout"] = max(1, int(timeout_s))
    try:
        engine = create_engine(u, poolclass=NullPool, connect_args=connect_args)
    except ImportError as err:
        fix = _DRIVERS.get(backend, f"install the {u.drivername} driver")
        raise StudyError(f"--storage {shown}: its database driver is not installed ({err}). "
                         f"Fix: {fix}") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as err:
        raise StudyError(
            f"cannot reach the study store {shown} ({_first_line(err, url)}). Fix: start the "
            "database server, or correct --storage (host, port, user, password; the database "
            "must exist, e.g. createdb NAME)") from None
    finally:
        engine.dispose()


def study_name_for(run_dir: Path) -> str:
    """The study name of a run folder in a shared database: the folder's name and a short
    hash of its resolved path, so many runs share one database without mixing trials."""
    where = str(Path(run_dir).resolve())
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(where).name).strip("-")[:80] or "run"
    return f"autoprune-{name}-{hashlib.sha256(where.encode()).hexdigest()[:10]}"


def _first_line(err: BaseException, url: str | None = None) -> str:
    """An error's first line, without the URL's password should the driver repeat it."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else repr(err)
    if url and "://" in url:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            password = make_url(url).password
        except ArgumentError:
            password = None
        if password:
            first = first.replace(str(password), "***")
    return first


def _finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    # JSON (and so optuna's attributes) has no NaN: a missing score is stored as null.
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
