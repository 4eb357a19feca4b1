"""Where the database is, and how to connect to it (the rest of stage0/ledger/ runs SQL on
the connections made here; nothing outside stage0/ledger/ imports the driver).

With LOGLINE_DATABASE_URL unset, LogLine starts (or reuses) an embedded PostgreSQL 16 from
`pgserver` whose data lives in $LOGLINE_HOME/pgdata and which keeps running between commands
(`logline db stop` stops it). LOGLINE_DATABASE_URL points at any other server instead; it is
the administrative connection (migrations). The application and kernel connections log in as
the roles `logline_app` and `logline_kernel` on the same server (LOGLINE_APP_DATABASE_URL and
LOGLINE_KERNEL_DATABASE_URL override them, e.g. to carry passwords).

As root: PostgreSQL refuses to run as root, so pgserver runs it as the OS user `pgserver`
(and chowns the data folder, $LOGLINE_HOME/pgdata, to it); LogLine makes that user's own
group its only one (pgserver alone would leave it root's groups). Left to itself pgserver would also
create that user silently and `chmod g+rx,o+rx` every directory above the data folder and
above its PostgreSQL programs, up to / (a 0700 home became 0755). LogLine never lets it:
it says on stderr that it creates the user, and why, before it does; and when a directory on
the way is closed to that user it changes nothing and refuses with EMBEDDED_AS_ROOT, naming
each directory and the remedies (README, "Running as root").
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_loads

from stage0.config import Home
from stage0.errors import LoglineError
from stage0.ledger.queries import q

Role = Literal["admin", "app", "kernel"]
#: What Database.connect returns (rows as dicts); the one connection type every layer names.
Connection = psycopg.Connection[DictRow]
ROLE_NAMES = {"app": "logline_app", "kernel": "logline_kernel"}
EMBEDDED_DBNAME = "logline"
#: The OS user the embedded PostgreSQL runs as when LogLine runs as root (pgserver's name).
PG_OS_USER = "pgserver"
_SAFE = 2**53 - 1

#: The driver's errors, for the layers above that must tell a database failure apart (they
#: catch these names and never import the driver themselves; db_error says what one means).
DatabaseError = psycopg.Error
OperationalError = psycopg.OperationalError
QueryCanceled = psycopg.errors.QueryCanceled


def _parse_int(text: str) -> int | float:
    # jsonb stores numbers as decimals; a float such as 1e300 comes back as digits. A span
    # never holds an integer beyond 2^53 (normalise refuses it), so such digits were a float.
    value = int(text)
    return value if -_SAFE <= value <= _SAFE else float(value)


_DECODER = json.JSONDecoder(parse_int=_parse_int)  # built once: json.loads with a hook
                                                   # builds a new decoder on every call


def loads(data: str | bytes) -> Any:
    return _DECODER.decode(data.decode() if isinstance(data, bytes) else data)


#: Marks a number PostgreSQL holds more precisely than a span can express. It contains a NUL,
#: which no stored span can (normalise refuses it), so the span cannot hash to its curr_hash.
LOSSY = "\x00lossy number:"


def _exact(text: str, value: int | float) -> int | float | str:
    if isinstance(value, int) or Decimal(text) == Decimal(repr(value)):
        return value
    return LOSSY + text


def strict_loads(data: str | bytes) -> Any:
    """Like `loads`, but a number whose stored digits are not exactly what the writer could
    have sent (e.g. 100.0000000000000001 edited in behind our back, which would otherwise
    read back as 100.0) comes back as a marker that fails the hash check."""
    return json.loads(data, parse_int=lambda t: _exact(t, _parse_int(t)),
                      parse_float=lambda t: _exact(t, float(t)))


@dataclass(frozen=True)
class Database:
    """Connection strings for the three roles of one LogLine database."""

    admin_url: str

    def url(self, role: Role = "app") -> str:
        if role == "admin":
            return self.admin_url
        override = os.environ.get(f"LOGLINE_{role.upper()}_DATABASE_URL")
        if override:
            return override
        params = conninfo_to_dict(self.admin_url)
        params.pop("password", None)
        params["user"] = ROLE_NAMES[role]
        return make_conninfo("", **params)

    def with_dbname(self, dbname: str) -> Database:
        return Database(make_conninfo(self.admin_url, dbname=dbname))

    @property
    def dbname(self) -> str:
        return str(conninfo_to_dict(self.admin_url).get("dbname") or "")

    def connect(self, role: Role = "app", autocommit: bool = True) -> Connection:
        """A connection in autocommit mode by default: work that must be atomic says so with
        `with conn.transaction()`, and no implicit transaction is ever left open holding
        the append lock."""
        try:
            conn = psycopg.connect(self.url(role), autocommit=autocommit, row_factory=dict_row)
        except psycopg.OperationalError as exc:
            raise db_error(exc, "connect", role) from None
        configure(conn)
        return conn


def configure(conn: psycopg.Connection[Any]) -> None:
    set_json_loads(loads, conn)


def _pgserver() -> Any:
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset on servers
        import pgserver
        import pgserver._commands

    logging.getLogger("pgserver").setLevel(logging.WARNING)
    if os.geteuid() == 0:
        # pgserver's own helpers would create the user and chmod directories up to / without
        # a word: they only check here (what they would change, LogLine refuses to).
        import pgserver.postgres_server as server_module

        server_module.ensure_user_exists = lambda username: _os_user(username)
        server_module.ensure_prefix_permissions = lambda path: _require_reachable(
            [Path(path).parent], "the database's directories")
        server_module.ensure_folder_permissions = lambda path, flag: _require_readable(
            Path(path))
        commands: Any = pgserver._commands  # it makes initdb, pg_ctl, ... at run time
        server_module.initdb = _in_own_group(commands.initdb)
        server_module.pg_ctl = _in_own_group(commands.pg_ctl)
    return pgserver


# --- the embedded server as root --------------------------------------------------------
def _os_user(name: str = PG_OS_USER) -> Any:
    """The OS user's passwd entry, created (and said so first) when it does not exist."""
    import pwd

    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    print(f"logline: running as root. PostgreSQL refuses to run as root, so the embedded "
          f"database runs as the unprivileged OS user {name!r}, which does not exist yet: "
          f"creating it now ({' '.join(command)})", file=sys.stderr, flush=True)
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)
        return pwd.getpwnam(name)
    except (OSError, subprocess.SubprocessError, KeyError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise LoglineError("EMBEDDED_AS_ROOT", f"could not create the OS user {name!r} the "
                           f"embedded database runs as: {detail.strip()}. Create it yourself "
                           f"(`useradd --system {name}`), run logline as a normal user, or set "
                           "LOGLINE_DATABASE_URL to a PostgreSQL server") from None


def _own_group(user: str) -> dict[str, Any]:
    """subprocess arguments that run a command as `user` in its own group only: pgserver's
    `user=` alone changes the uid and keeps root's group and supplementary groups."""
    import pwd

    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def _in_own_group(command: Any) -> Any:
    def run(args: list[str], pgdata: Any = None, **kwargs: Any) -> Any:
        if kwargs.get("user"):
            kwargs.update(_own_group(kwargs["user"]))
        return command(args, pgdata=pgdata, **kwargs)
    return run


def _may(st: os.stat_result, uid: int | None, gids: set[int], bits: str) -> bool:
    """Whether the user (uid, groups) has `bits` ("r", "x", "rx") on a file of status st,
    by the owner, group or other permission bits as the kernel picks them."""
    if uid is not None and st.st_uid == uid:
        which = {"r": stat.S_IRUSR, "x": stat.S_IXUSR}
    elif st.st_gid in gids:
        which = {"r": stat.S_IRGRP, "x": stat.S_IXGRP}
    else:
        which = {"r": stat.S_IROTH, "x": stat.S_IXOTH}
    return all(st.st_mode & which[b] for b in bits)


def _pg_identity() -> tuple[int | None, set[int]]:
    """The uid and groups PostgreSQL runs with as root: the user's, and its own group only
    (_own_group)."""
    import pwd

    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:  # not created yet: it will get a new group of its own
        return None, set()
    return entry.pw_uid, {entry.pw_gid}


def _closed(dirs: list[Path]) -> list[Path]:
    """Of `dirs` and the directories above them, those (from / down) the PostgreSQL user
    cannot traverse."""
    uid, gids = _pg_identity()
    closed: list[Path] = []
    for path in dirs:
        for d in reversed([path, *path.parents]):
            if d not in closed and d.exists() and not _may(d.stat(), uid, gids, "x"):
                closed.append(d)
    return closed


def _require_reachable(dirs: list[Path], what: str, home: Home | None = None) -> None:
    """EMBEDDED_AS_ROOT unless the PostgreSQL user can traverse `dirs` and every directory
    above them; nothing is changed either way."""
    closed = _closed(dirs)
    if not closed:
        return
    listed = ", ".join(f"{d} (mode {stat.S_IMODE(d.stat().st_mode):04o}, owner uid "
                       f"{d.stat().st_uid})" for d in closed)
    where = ("set LOGLINE_HOME to a directory every user may traverse (e.g. "
             "/var/lib/logline/home), ") if home is not None else ""
    raise LoglineError(
        "EMBEDDED_AS_ROOT",
        f"running as root, the embedded PostgreSQL runs as the OS user {PG_OS_USER!r} "
        f"(PostgreSQL refuses root), and it cannot reach {what}: {listed} "
        f"{'is' if len(closed) == 1 else 'are'} closed to other users. LogLine does not open "
        f"your directories. Either run logline as a normal user; or {where}or open "
        f"{'it' if len(closed) == 1 else 'them'} for traversal only, yourself: chmod o+x "
        f"{' '.join(str(d) for d in closed)}; or set LOGLINE_DATABASE_URL to a PostgreSQL "
        "server", str(home.path) if home is not None else str(dirs[0]))


def _require_readable(folder: Path) -> None:
    """EMBEDDED_AS_ROOT unless the PostgreSQL user can read (and run) PostgreSQL's own
    programs and libraries under `folder` (pip installs them so; nothing is changed)."""
    uid, gids = _pg_identity()
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            needs = "rx" if stat.S_ISDIR(st.st_mode) or folder.name == "bin" else "r"
            if not stat.S_ISLNK(st.st_mode) and not _may(st, uid, gids, needs):
                raise LoglineError(
                    "EMBEDDED_AS_ROOT", f"running as root, the embedded PostgreSQL runs as the "
                    f"OS user {PG_OS_USER!r}, which cannot read {path} (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}). LogLine does not change it: reinstall "
                    "the package so that its files are world-readable, run logline as a "
                    "normal user, or set LOGLINE_DATABASE_URL", str(path))


def _as_root(pgserver: Any, home: Home) -> None:
    """Before the embedded server starts as root: every directory PostgreSQL's user must
    cross is already open to it (else EMBEDDED_AS_ROOT, nothing changed), then the user."""
    programs = Path(pgserver._commands.POSTGRES_BIN_PATH)
    # The data folder itself becomes the PostgreSQL user's (pgserver chowns it): LogLine's.
    _require_reachable([home.pgdata.resolve().parent], "the data folder", home)
    _require_reachable([programs, programs.parent / "lib"],
                       "PostgreSQL's programs (in the Python environment)")
    _require_readable(programs)
    _require_readable(programs.parent / "lib")
    _os_user()


def embedded(home: Home) -> Database:
    """Start the embedded server if it is not running, and make sure our database exists."""
    home.path.mkdir(parents=True, exist_ok=True)
    pgserver = _pgserver()
    if os.geteuid() == 0:
        _as_root(pgserver, home)
    server = pgserver.get_server(home.pgdata, cleanup_mode=None)
    base = Database(server.get_uri())
    with base.connect("admin", autocommit=True) as conn:
        exists = conn.execute(q("database_exists"), {"name": EMBEDDED_DBNAME}).fetchone()
        if not exists:
            conn.execute(sql.SQL(q("create_database")).format(sql.Identifier(EMBEDDED_DBNAME)))
    return base.with_dbname(EMBEDDED_DBNAME)


def resolve(home: Home | None = None, create: bool = False) -> Database:
    """The database this process works on: LOGLINE_DATABASE_URL, else the embedded one.

    Only `create` (what `logline init` asks for) makes a new embedded server; every other
    command on a home without one starts nothing and says to run `logline init`."""
    url = os.environ.get("LOGLINE_DATABASE_URL")
    if url:
        return Database(url)
    home = home or Home.from_env()
    if not create and not (home.pgdata / "PG_VERSION").is_file():
        raise not_initialised(f"{home.path} holds no LogLine database yet")
    return embedded(home)


def not_initialised(what: str) -> LoglineError:
    return LoglineError("NOT_INITIALISED", f"{what}: run `logline init` (or point LOGLINE_HOME "
                        "at an initialised home, or LOGLINE_DATABASE_URL at a migrated server)")


#: What was being done when the driver raised: it decides the reason code (see db_error).
During = Literal["statement", "command", "connect", "migration"]


def db_error(exc: psycopg.Error, during: During = "statement", where: str = "") -> LoglineError:
    """The one place a database error becomes a LoglineError; every layer that catches the
    driver's errors hands them here.

    - "statement" (a write or a kernel's query): the append trigger's own reason code (its
      message is `CODE: text`), else by the error's kind LEDGER_DUPLICATE,
      LEDGER_STALE_SNAPSHOT or LEDGER_FORBIDDEN, else LEDGER_REJECTED.
    - "command" (what escaped a command): NOT_INITIALISED when LogLine's tables or schemas
      are missing (the driver's `relation "ledger..." does not exist`), else as a statement.
    - "connect" (`where` is the role): a server without LogLine's roles has never been
      migrated, so NOT_INITIALISED, not the driver's `role "logline_kernel" does not
      exist`; else DB_UNAVAILABLE.
    - "migration" (`where` is its file): MIGRATION_FAILED there.
    """
    if during == "connect":
        name = ROLE_NAMES.get(where)  # the admin role is the server's own
        if name and f'role "{name}" does not exist' in str(exc):
            return not_initialised(f"the database has no {name} role (not migrated)")
        return LoglineError("DB_UNAVAILABLE", f"cannot connect as {where}: {exc}".strip())
    if during == "migration":
        return LoglineError("MIGRATION_FAILED", str(exc).strip(), where)
    if during == "command" and isinstance(exc, psycopg.errors.UndefinedTable
                                          | psycopg.errors.InvalidSchemaName):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return not_initialised(f"the database is not migrated ({first})")
    message = (exc.diag.message_primary or str(exc)).strip()
    code, sep, rest = message.partition(": ")
    if sep and code.replace("_", "").isupper():
        return LoglineError(code, rest)
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return LoglineError("LEDGER_DUPLICATE", message)
    if isinstance(exc, psycopg.errors.SerializationFailure):
        # ledger.chain_tip changed after this REPEATABLE READ/SERIALIZABLE snapshot: chaining
        # to the tip it shows would fork the ledger (schema/0004). The caller retries.
        return LoglineError("LEDGER_STALE_SNAPSHOT", "another transaction committed a "
                            "conflicting change after this one's snapshot was taken; retry "
                            f"the transaction (PostgreSQL: {message})")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return LoglineError("LEDGER_FORBIDDEN", message)
    return LoglineError("LEDGER_REJECTED", message)


def stop_embedded(home: Home) -> bool:
    """Stop the embedded server of this home, if it runs. True when one was stopped."""
    if not (home.pgdata / "postmaster.pid").exists():
        return False
    as_user = _own_group(PG_OS_USER) if os.geteuid() == 0 else {}
    _pgserver()._commands.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=home.pgdata, **as_user)
    return True


def one(cursor: psycopg.Cursor[DictRow]) -> DictRow:
    """The row of a statement that always returns one (an aggregate, a function call)."""
    row = cursor.fetchone()
    if row is None:
        raise AssertionError("the statement returned no row")
    return row


@contextmanager
def unbounded(conn: Connection) -> Iterator[None]:
    """No statement or idle-in-transaction timeout on this session inside (the role's own
    again after): for the operator's commands that legitimately run long, such as seeding a
    big file. Applied and reset outside any transaction."""
    conn.execute(q("unbounded_session"))
    try:
        yield
    finally:
        if not conn.closed and idle(conn):
            conn.execute(q("bounded_session"))


def idle(conn: Connection) -> bool:
    """No transaction is open on this connection (nor failed, nor running a statement)."""
    return conn.info.transaction_status == TransactionStatus.IDLE


@contextmanager
def as_identity(conn: Connection, user_id: str, tenant_id: str | None) -> Iterator[None]:
    """One transaction with the caller's identity set locally (never on the session)."""
    with conn.transaction():
        set_identity(conn, user_id, tenant_id)
        yield


def set_identity(conn: Connection, user_id: str, tenant_id: str | None) -> None:
    """The caller's identity for the rest of the open transaction (row-level security)."""
    conn.execute(q("set_identity"), {"user": user_id, "tenant": tenant_id or ""})
