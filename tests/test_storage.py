"""A shared study store (``--storage URL``) against a real PostgreSQL server.

The server is Debian's PostgreSQL (``.ci/run`` installs it where it is missing), started for
this module on the loopback address in a temporary data folder and stopped at the end.
PostgreSQL refuses to run as root, so under root (CI) it runs as an unprivileged system user.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli

SMALL = ["--model", "resnet20", "--image-size", "8", "--width-mult", "0.5", "--round-to", "4"]
SEARCH = ["search", *SMALL, "--target", "flops=50%", "--agent", "random", "--no-progress"]
PG_USER = "autoprune-pg"  # the system user the server runs as under root
PASSWORD = "s3cret-not-printed"  # trust auth ignores it; it must never be printed


def _pg_bin(name: str) -> str:
    """A PostgreSQL program: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(
        f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        pytest.fail(f"PostgreSQL's {name} is not installed: apt-get install postgresql "
                    "(.ci/run installs it where it is missing); the shared-store tests need a "
                    "real server")
    return found


def _server_user() -> str | None:
    """Who runs the server: None (this user) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(PG_USER)
        return PG_USER
    except KeyError:
        pass
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                           "/usr/sbin/nologin", PG_USER], capture_output=True, text=True)
    if made.returncode == 0:
        return PG_USER
    return "nobody"  # useradd is missing or refused: an unprivileged user every system has


def _as(user: str | None, argv: list[str]) -> list[str]:
    if user is None:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *argv]
    return ["su", "-s", "/bin/sh", user, "-c", shlex.join(argv)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], what: str, timeout: float = 60) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{what} failed ({out.returncode}): {out.stdout}{out.stderr}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 (trust auth, database ``autoprune``); yields the
    SQLAlchemy URL of that database, with a password the server ignores."""
    initdb, pg_ctl, pg_isready = _pg_bin("initdb"), _pg_bin("pg_ctl"), _pg_bin("pg_isready")
    user = _server_user()
    # Not under pytest's basetemp: that folder is private to root, out of the server user's reach.
    root = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
    data, log = root / "data", root / "server.log"
    if user is not None:
        os.chmod(root, 0o755)
        shutil.chown(root, user=user)
    port = _free_port()
    _run(_as(user, [initdb, "-D", str(data), "-U", "autoprune", "--auth=trust", "-E", "UTF8",
                    "--locale=C", "--no-sync"]), "initdb")
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off")
    try:
        _run(_as(user, [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                        "start"]), "pg_ctl start", timeout=90)
        deadline = time.monotonic() + 30
        while subprocess.run([pg_isready, "-h", "127.0.0.1", "-p", str(port), "-q"]).returncode:
            if time.monotonic() > deadline:
                pytest.fail("PostgreSQL did not accept connections within 30 s: "
                            + (log.read_text()[-2000:] if log.exists() else "no log"))
            time.sleep(0.2)
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=autoprune dbname=postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE autoprune")
        yield f"postgresql+psycopg://autoprune:{PASSWORD}@127.0.0.1:{port}/autoprune"
    finally:
        subprocess.run(_as(user, [pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _trials(url: str, study_name: str) -> list:
    import optuna

    return optuna.load_study(study_name=study_name, storage=url).get_trials(deepcopy=False)


def _finished_in_db(url: str, study_name: str) -> int:
    """Finished trials of a study, read with plain SQL (never creates optuna's tables)."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    try:
        with psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database,
                             connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM trials JOIN studies USING (study_id) "
                "WHERE study_name = %s AND state IN ('COMPLETE', 'FAIL')", (study_name,)
            ).fetchone()
    except psycopg.Error:  # the tables are not there yet
        return 0
    return int(row[0]) if row else 0


def _study(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())["study"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    run_cli(["train", *SMALL[:6], "--epochs", "2"], cache)  # a short baseline, cached first
    return cache


@pytest.fixture(scope="module")
def shared_run(postgres: str, cache: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    run_dir = tmp_path_factory.mktemp("runs") / "shared"
    out = run_cli([*SEARCH, "--trials", "4", "--run-dir", str(run_dir), "--storage", postgres,
                   "--json"], cache)
    return run_dir, json.loads(out.stdout), out.stdout + out.stderr


def test_a_search_keeps_its_trials_in_postgres(shared_run: tuple[Path, dict, str],
                                               postgres: str) -> None:
    run_dir, summary, printed = shared_run
    assert summary["trials"] == 4
    assert not (run_dir / "study.db").exists()
    study = _study(run_dir)
    assert study["storage"] == postgres  # kept whole: the folder reopens it
    assert study["name"].startswith("autoprune-shared-")
    trials = _trials(postgres, study["name"])
    assert len(trials) == 4 and all(t.user_attrs["channels"] for t in trials)
    assert summary["study"]["name"] == study["name"]
    assert PASSWORD not in printed and "***" in summary["study"]["storage"]
    assert (run_dir / "run.json").stat().st_mode & 0o077 == 0  # the password: owner only


@pytest.fixture(scope="module")
def killed_and_resumed(postgres: str, cache: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    """A search killed with SIGKILL once some trials are stored, then run again."""
    run_dir = tmp_path_factory.mktemp("runs") / "killed"
    args = [*SEARCH, "--trials", "12", "--run-dir", str(run_dir), "--storage", postgres,
            "--json"]
    env = {**os.environ, "AUTOPRUNE_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "run.json").exists() or \
                _finished_in_db(postgres, _study(run_dir)["name"]) < 3:
            assert proc.poll() is None, f"the search ended early: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no 3 trials stored within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    name = _study(run_dir)["name"]
    before = {t.number: t.user_attrs["channels"] for t in _trials(postgres, name)}
    assert 3 <= len(before) < 12
    out = run_cli(args, cache)
    return run_dir, json.loads(out.stdout), [before]


def test_a_search_killed_with_sigkill_resumes_from_the_database(
        killed_and_resumed: tuple[Path, dict, list], postgres: str) -> None:
    run_dir, summary, (before,) = killed_and_resumed
    trials = _trials(postgres, _study(run_dir)["name"])
    assert summary["trials"] == len(trials) == 12
    assert [t.number for t in trials] == list(range(12))  # none lost, none twice
    assert {t.number: t.user_attrs["channels"] for t in trials if t.number in before} == before
    assert not (run_dir / "study.db").exists()


def test_pick_reads_the_store_from_the_run_folder(killed_and_resumed: tuple[Path, dict, list],
                                                  postgres: str, cache: Path) -> None:
    run_dir, _, _ = killed_and_resumed
    out = run_cli(["pick", "--run", str(run_dir), "--target", "flops=50%", "--json"], cache)
    picked = json.loads(out.stdout)
    assert 0 <= picked["trial"] < 12 and picked["budgets_met"]
    assert (run_dir / "pick-flops-50.json").exists()
    assert PASSWORD not in out.stdout + out.stderr


def test_runs_sharing_one_database_keep_their_own_trials(
        shared_run: tuple[Path, dict, str], killed_and_resumed: tuple[Path, dict, list],
        postgres: str) -> None:
    import optuna

    first, second = _study(shared_run[0]), _study(killed_and_resumed[0])
    assert first["name"] != second["name"] and first["storage"] == second["storage"]
    names = {s.study_name for s in optuna.get_all_study_summaries(storage=postgres)}
    assert {first["name"], second["name"]} <= names
    ones, others = _trials(postgres, first["name"]), _trials(postgres, second["name"])
    assert not {t._trial_id for t in ones} & {t._trial_id for t in others}
    for run_dir, trials in ((shared_run[0], ones), (killed_and_resumed[0], others)):
        assert len(trials) == json.loads((run_dir / "summary.json").read_text())["trials"]


def test_an_unreachable_store_is_one_clear_error(cache: Path, tmp_path: Path) -> None:
    url = f"postgresql+psycopg://autoprune:{PASSWORD}@127.0.0.1:{_free_port()}/autoprune"
    out = run_cli([*SEARCH, "--run-dir", str(tmp_path / "r"), "--storage", url], cache,
                  check=False)
    said = " ".join(out.stderr.split())
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot reach the study store" in said and "Fix:" in said
    assert "Traceback" not in out.stderr and PASSWORD not in out.stderr
    assert not (tmp_path / "r" / "run.json").exists()  # nothing recorded: no work was done


@pytest.mark.parametrize("url, said", [
    ("redis://localhost/0", "not a database URL"),
    ("runs/study.db", "not a database URL"),
    ("mysql+pymysql://u:pw@127.0.0.1/db", "driver is not installed"),
])
def test_what_is_not_a_usable_rdb_url_is_named(url: str, said: str) -> None:
    from autoprune.study import StudyError, check_storage

    if "pymysql" in url and importlib.util.find_spec("pymysql"):
        pytest.skip("pymysql is installed here")
    with pytest.raises(StudyError, match=said) as err:
        check_storage(url)
    assert "pw@" not in str(err.value)


def test_allocate_with_a_store_needs_a_run_folder() -> None:
    import torch

    import autoprune

    with pytest.raises(autoprune.SearchError, match="needs a run_dir"):
        autoprune.allocate(torch.nn.Linear(4, 4), example_inputs=torch.zeros(1, 4),
                           target="flops=50%", evaluate=lambda m: {"accuracy": 1.0},
                           storage="postgresql+psycopg://u@127.0.0.1/db")


def test_resuming_with_another_store_is_refused(shared_run: tuple[Path, dict, str],
                                                postgres: str, cache: Path) -> None:
    run_dir = shared_run[0]
    other = postgres.rsplit("/", 1)[0] + "/postgres"
    out = run_cli([*SEARCH, "--trials", "4", "--run-dir", str(run_dir), "--storage", other],
                  cache, check=False)
    said = " ".join(out.stderr.split())
    assert out.returncode == 2, out.stderr[-2000:]
    assert "keeps its study" in said and "127.0.0.1" in said and "/autoprune" in said
    assert PASSWORD not in out.stderr and "Traceback" not in out.stderr
    # without --storage the folder's recorded store is used: one more trial there
    out = run_cli([*SEARCH, "--trials", "5", "--run-dir", str(run_dir), "--json"], cache)
    assert json.loads(out.stdout)["trials"] == 5 == len(_trials(postgres, _study(run_dir)["name"]))
    assert not (run_dir / "study.db").exists() and PASSWORD not in out.stdout + out.stderr
