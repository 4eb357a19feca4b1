"""Test fixtures: one real PostgreSQL per test session, a migrated template database built
once, and a fresh clone of it per test (CREATE DATABASE ... TEMPLATE: fast and isolated).

The server is LOGLINE_DATABASE_URL when set (CI runs the suite once against Debian's
PostgreSQL 15 that way), else an embedded pgserver in a temporary directory.

Each run keeps its temporary files under a root of its own, /tmp/logline-tests-<pid> (unless
--basetemp names one), removed when the run ends: pytest's shared default root prunes older
runs' directories, which pulled the data directory from under another run's PostgreSQL when
two runs shared a machine.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from stage0 import keys
from stage0.config import Home, row_dir
from stage0.ledger import db, migrate, seed

REPO = Path(__file__).resolve().parent.parent
#: Set to keep this run's temporary root after it ends (to look at what a test left).
KEEP_TMP = "LOGLINE_KEEP_TEST_TMP"
_OWN_ROOT = pytest.StashKey[Path]()  # set when this run chose its root (and so removes it)
_BASETEMP: list[Path] = []  # this run's temporary root (pytest_configure sets it)


def run_root(pid: int | None = None) -> Path:
    """The temporary root of the test run in process `pid` (default: this one)."""
    return Path(tempfile.gettempdir()) / f"logline-tests-{pid or os.getpid()}"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Before pytest's tmp_path machinery reads it: a basetemp of this run's own."""
    if config.option.basetemp is None:
        config.option.basetemp = str(run_root())
        config.stash[_OWN_ROOT] = Path(config.option.basetemp)
    _BASETEMP[:] = [Path(config.option.basetemp).resolve()]


def reachable_by_postgres(path: Path) -> Path:
    """`path`, with the run's temporary directories above it open for traversal when the
    tests run as root (CI does). As root the embedded PostgreSQL runs as another OS user, and
    LogLine refuses (EMBEDDED_AS_ROOT) rather than open a directory on its way; pytest makes
    its temporary directories 0700. So, as an operator would, the test opens its own ones,
    from the run's root down to `path`, for traversal only (o+x: still not listable)."""
    if os.geteuid() != 0 or not _BASETEMP:
        return path
    root, path = _BASETEMP[0], path.resolve()
    for d in [path, *path.parents]:
        if d != root and root not in d.parents:
            break  # only the run's own directories
        d.chmod(stat.S_IMODE(d.stat().st_mode) | stat.S_IXOTH)
    return path


def pytest_unconfigure(config: pytest.Config) -> None:
    """After the session's fixtures (the embedded server among them) have stopped."""
    root = config.stash.get(_OWN_ROOT, None)
    if root is not None and not os.environ.get(KEEP_TMP):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[db.Database]:
    url = os.environ.get("LOGLINE_DATABASE_URL")
    if url:
        yield db.Database(url)
        return
    home = Home(reachable_by_postgres(tmp_path_factory.mktemp("pg")))
    yield db.embedded(home)
    db.stop_embedded(home)


@pytest.fixture(scope="session")
def has_pgvector(server: db.Database) -> bool:
    with server.connect("admin") as conn:
        return bool(conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone())


@pytest.fixture(scope="session")
def template(server: db.Database) -> Iterator[str]:
    name = f"logline_tpl_{os.getpid()}"
    with server.connect("admin", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate.migrate(server.with_dbname(name))
    yield name
    with server.connect("admin", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _own_database(server: db.Database, template: str | None) -> Iterator[db.Database]:
    name = f"logline_t_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with server.connect("admin", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    yield server.with_dbname(name)
    with server.connect("admin", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database(server: db.Database, template: str) -> Iterator[db.Database]:
    """A migrated, empty ledger of its own for this test."""
    yield from _own_database(server, template)


@pytest.fixture
def empty_database(server: db.Database) -> Iterator[db.Database]:
    """A database of its own with nothing in it (not even migrated)."""
    yield from _own_database(server, None)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """An initialised $LOGLINE_HOME (operator key pinned as root)."""
    h = Home(tmp_path / "home")
    keys.ensure_operator_key(h)
    monkeypatch.setenv("LOGLINE_HOME", str(h.path))
    return h


@pytest.fixture
def operator(home: Home):
    return keys.operator_key(home)


@pytest.fixture
def seeded(database: db.Database, operator) -> db.Database:
    """A ledger holding ROW/ as `logline init` would seed it."""
    with database.connect("kernel") as conn:
        seed.seed(conn, [row_dir()], operator)
    return database


@pytest.fixture
def kernel_conn(seeded: db.Database) -> Iterator[psycopg.Connection]:
    with seeded.connect("kernel") as conn:
        yield conn


@pytest.fixture
def cli(home: Home, seeded: db.Database):
    """Run the real `logline` CLI in a subprocess against this test's ledger."""

    def run(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "LOGLINE_HOME": str(home.path),
               "LOGLINE_DATABASE_URL": seeded.admin_url}
        proc = subprocess.run([sys.executable, "-m", "stage0.cli", *args], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"logline {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    return run
