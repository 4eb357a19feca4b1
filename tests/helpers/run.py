"""This run's temporary root, and the PostgreSQL that every process of the run shares.

A run (`python -m pytest`, which starts xdist workers) keeps its temporary files under a root
of its own: /tmp/logline-tests-<pid of the process pytest was started as>, unless --basetemp
names one. pytest's shared default root prunes older runs' directories, which pulled the data
directory from under another run's PostgreSQL when two runs shared a machine. xdist gives
each worker ROOT/popen-gwN as its basetemp, and tests/conftest.py hands the root itself to
the workers (pytest_configure_node).

The embedded PostgreSQL lives in ROOT/pg: the first process that needs it starts it, under a
lock (ROOT/pg.lock) so that only one does; the others connect to the same server. The process
pytest was started as stops it when the run ends, after every worker has left, and then
removes the root (unless it was given with --basetemp).
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stage0.config import Home
from stage0.ledger import db

_ROOT: list[Path] = []  # this run's root, in every process of the run (set_run_root)


def run_root(pid: int | None = None) -> Path:
    """The temporary root of the test run started as process `pid` (default: this one)."""
    return Path(tempfile.gettempdir()) / f"logline-tests-{pid or os.getpid()}"


def set_run_root(root: Path) -> None:
    """tests/conftest.py says where this run's root is (pytest_configure, in each process)."""
    _ROOT[:] = [root]


def reachable_by_postgres(path: Path) -> Path:
    """`path`, with the run's temporary directories above it open for traversal when the
    tests run as root (CI does). As root the embedded PostgreSQL runs as another OS user, and
    LogLine refuses (EMBEDDED_AS_ROOT) rather than open a directory on its way; pytest makes
    its temporary directories 0700. So, as an operator would, the test opens its own ones,
    from the run's root down to `path`, for traversal only (o+x: still not listable)."""
    if os.geteuid() != 0 or not _ROOT:
        return path
    root, path = _ROOT[0], path.resolve()
    for d in [path, *path.parents]:
        if d != root and root not in d.parents:
            break  # only the run's own directories
        d.chmod(stat.S_IMODE(d.stat().st_mode) | stat.S_IXOTH)
    return path


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) across the run's processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _home(root: Path) -> Home:
    return Home(root / "pg")


#: The run's server is thrown away at its end: nothing it writes needs to survive a crash
#: (fsync and its kin off: a DROP DATABASE after each test then costs ms, not a checkpoint's
#: flush), and it serves every worker of the run, their API servers and agents at once.
#: CI's PostgreSQL 15 is started likewise (.ci/pg15.sh).
TEST_SERVER_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                        "max_connections": "300"}


def shared_server(root: Path) -> db.Database:
    """The run's embedded server: started by the first process to ask (which sets it up for
    tests, TEST_SERVER_SETTINGS), reused by the rest."""
    home = _home(root)
    with locked(root / "pg.lock"):
        home.path.mkdir(parents=True, exist_ok=True)
        reachable_by_postgres(home.path)
        fresh = not (home.pgdata / "PG_VERSION").is_file()
        server = db.embedded(home)
        if fresh:
            with server.connect("admin", autocommit=True) as conn:
                for name, value in TEST_SERVER_SETTINGS.items():
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            _pg_ctl(home, "restart", "-m", "fast")  # max_connections needs a restart
        return server


def _pg_ctl(home: Home, *args: str) -> None:
    """pg_ctl on the server, as stage0.ledger.db.stop_embedded runs it (pg_ctl restart keeps
    the server's options, its socket among them)."""
    as_user = db._own_group(db.PG_OS_USER) if os.geteuid() == 0 else {}
    db._pgserver()._commands.pg_ctl(["-w", *args], pgdata=home.pgdata, **as_user)


def stop_shared_server(root: Path) -> None:
    """Stop the run's embedded server, if one was started."""
    if not _home(root).pgdata.exists():
        return
    with locked(root / "pg.lock"):
        db.stop_embedded(_home(root))
