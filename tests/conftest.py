"""Test fixtures: one real PostgreSQL per test run, a migrated template database built once per
run, and a fresh clone of it per test (CREATE DATABASE ... TEMPLATE: fast and isolated).

The server is LOGLINE_DATABASE_URL when set (CI runs the suite once against Debian's
PostgreSQL 15 that way), else an embedded pgserver; either way all of the run's xdist workers
share it, and its template (helpers/run.py: where it lives, who starts and stops it).

The folders are the layers of the suite, and each test is marked with its folder's marker:
tests/unit (`unit`: no database, no server; a unit test that asks for one is refused at
collection), tests/integration (`integration`: the real PostgreSQL, the library and the CLI
in-process) and tests/acceptance (`acceptance` and `integration`: end to end through real
processes, `logline serve`, workers, agents, a browser).

Under xdist (`-n`, in pyproject's addopts) tests are handed out one by one (--dist loadgroup),
except that the tests of a module that use one of its module-scoped fixtures (a server, a
browser, a sandbox pool) run on one worker, which sets that fixture up once; a module may
name its own group (pytest.mark.xdist_group).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import REPO
from helpers.cli import Ran, logline
from helpers.run import locked, run_root, set_run_root, shared_server, stop_shared_server

from stage0 import keys
from stage0.config import Home, row_dir
from stage0.ledger import db, migrate, seed

#: Set to keep this run's temporary root after it ends (to look at what a test left).
KEEP_TMP = "LOGLINE_KEEP_TEST_TMP"
_ROOT = pytest.StashKey[Path]()  # this run's temporary root (every process of the run)
_OWN_ROOT = pytest.StashKey[bool]()  # set when this run chose its root (and so removes it)
LAYERS = ("unit", "integration", "acceptance")
#: Fixtures that reach PostgreSQL: a unit test may use none of them.
DATABASE_FIXTURES = {"server", "template", "database", "empty_database", "seeded",
                     "kernel_conn", "cli", "has_pgvector"}


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Before pytest's tmp_path machinery reads it: a basetemp of this run's own."""
    if _is_worker(config):
        config.stash[_ROOT] = Path(config.workerinput["logline_root"])
    else:
        if config.option.basetemp is None:
            config.option.basetemp = str(run_root())
            config.stash[_OWN_ROOT] = True
        config.stash[_ROOT] = Path(config.option.basetemp).resolve()
    set_run_root(config.stash[_ROOT])


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist: each worker learns the run's root (its own basetemp is ROOT/popen-gwN)."""
    node.workerinput["logline_root"] = str(node.config.stash[_ROOT])


def pytest_unconfigure(config: pytest.Config) -> None:
    """In the process pytest was started as, after every worker has left: stop the run's
    embedded server, then remove the root."""
    if _is_worker(config) or _ROOT not in config.stash:
        return
    root = config.stash[_ROOT]
    _drop_template(root)
    stop_shared_server(root)
    if config.stash.get(_OWN_ROOT, False) and not os.environ.get(KEEP_TMP):
        shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = _under_tests(item.path)
        layer = parts[0] if len(parts) > 1 and parts[0] in LAYERS else None
        if layer == "unit":
            used = DATABASE_FIXTURES & set(item.fixturenames)
            if used:
                raise pytest.UsageError(
                    f"{item.nodeid}: a unit test takes no database ({', '.join(sorted(used))}"
                    "); it belongs in tests/integration")
        if layer:
            item.add_marker(layer)
        if layer == "acceptance":
            item.add_marker("integration")
        if _uses_a_module_fixture(item) and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group("/".join(parts)))


def _under_tests(path: Path) -> tuple[str, ...]:
    try:
        return path.relative_to(REPO / "tests").parts
    except ValueError:  # a test file of another tree (tests of this conftest itself)
        return path.parts[-1:]


def _uses_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of what the test uses
    if info is None:
        return False
    return any(defs and defs[-1].scope in ("module", "class", "package")
               for defs in info.name2fixturedefs.values())


@pytest.fixture(scope="session")
def run_dir(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This run's temporary root, shared by all its processes (for locks and shared files)."""
    tmp_path_factory.getbasetemp()  # made (a given --basetemp emptied) before anything is put in
    return pytestconfig.stash[_ROOT]


@pytest.fixture(scope="session")
def server(run_dir: Path) -> db.Database:
    url = os.environ.get("LOGLINE_DATABASE_URL")
    if url:
        return db.Database(url)
    return shared_server(run_dir)


@pytest.fixture(scope="session")
def has_pgvector(server: db.Database) -> bool:
    with server.connect("admin") as conn:
        return bool(conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone())


@pytest.fixture
def one_migration_at_a_time(run_dir: Path) -> Iterator[None]:
    """Held by a test that migrates a database of the shared server. Migrations alter roles,
    which belong to the whole server (schema/0006): two at once, even on two databases, meet
    there and the loser is retried (stage0/ledger/migrate.py); held so that a test that
    stages that race itself is the only migration running."""
    with locked(run_dir / "migrate.lock"):
        yield


@pytest.fixture(scope="session")
def template(server: db.Database, run_dir: Path) -> str:
    """The migrated template of this run: built once, by the first process that needs it
    (its name in ROOT/template), and dropped when the run ends (pytest_unconfigure). The
    others never connect to it: a database being copied must have no sessions."""
    made = run_dir / "template"
    with locked(run_dir / "migrate.lock"):
        if made.is_file():
            return made.read_text()
        name = f"logline_tpl_{uuid.uuid4().hex[:12]}"
        with server.connect("admin", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        migrate.migrate(server.with_dbname(name))
        made.write_text(name)
        return name


def _drop_template(root: Path) -> None:
    """The run's template, on a server that outlives the run (LOGLINE_DATABASE_URL)."""
    url, made = os.environ.get("LOGLINE_DATABASE_URL"), root / "template"
    if url and made.is_file():
        with db.Database(url).connect("admin", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{made.read_text()}" WITH (FORCE)')


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
    """Run the `logline` CLI against this test's ledger: in this process (helpers/cli.py:
    what still runs as a subprocess, and why)."""

    def run(*args: str, check: bool = True, cwd: Path | None = None) -> Ran:
        env = {**os.environ, "LOGLINE_HOME": str(home.path),
               "LOGLINE_DATABASE_URL": seeded.admin_url}
        return logline(*args, env=env, cwd=cwd, check=check)

    return run


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """The environment with no database configured and a LOGLINE_HOME not made yet."""
    from helpers.cli import DB_ENV

    env = {k: v for k, v in os.environ.items() if k not in DB_ENV}
    env["LOGLINE_HOME"] = str(tmp_path / "fresh-home")
    return env
