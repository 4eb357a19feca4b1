"""Where the database is, and how to connect to it (the rest of stage0/ledger/ runs SQL on
the connections made here; nothing outside stage0/ledger/ imports the driver).

With LOGLINE_DATABASE_URL unset, LogLine starts (or reuses) an embedded PostgreSQL 16 from
`pgserver` whose data lives in $LOGLINE_HOME/pgdata and which keeps running between commands
(`logline db stop` stops it). LOGLINE_DATABASE_URL points at any other server instead; it is
the administrative connection (migrations). The application and kernel connections log in as
the roles `logline_app` and `logline_kernel` on the same server (LOGLINE_APP_DATABASE_URL and
LOGLINE_KERNEL_DATABASE_URL override them, e.g. to carry passwords).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
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
_SAFE = 2**53 - 1

#: The driver's errors, for the layers above that must tell a database failure apart (they
#: catch these names and never import the driver themselves).
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
        return make_conninfo(**params)

    def with_dbname(self, dbname: str) -> Database:
        return Database(make_conninfo(self.admin_url, dbname=dbname))

    @property
    def dbname(self) -> str:
        return conninfo_to_dict(self.admin_url).get("dbname", "")

    def connect(self, role: Role = "app", autocommit: bool = True) -> Connection:
        """A connection in autocommit mode by default: work that must be atomic says so with
        `with conn.transaction()`, and no implicit transaction is ever left open holding
        the append lock."""
        try:
            conn = psycopg.connect(self.url(role), autocommit=autocommit, row_factory=dict_row)
        except psycopg.OperationalError as exc:
            raise _refused_login(role, exc) from None
        configure(conn)
        return conn


def configure(conn: psycopg.Connection) -> None:
    set_json_loads(loads, conn)


def _pgserver() -> Any:
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset on servers
        import pgserver
        import pgserver._commands

    logging.getLogger("pgserver").setLevel(logging.WARNING)
    return pgserver


def embedded(home: Home) -> Database:
    """Start the embedded server if it is not running, and make sure our database exists."""
    home.path.mkdir(parents=True, exist_ok=True)
    server = _pgserver().get_server(home.pgdata, cleanup_mode=None)
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


def unmigrated(exc: BaseException) -> LoglineError | None:
    """NOT_INITIALISED for a query on a database whose migrations have not (all) run, else
    None (the CLI turns the driver's `relation "ledger..." does not exist` into this)."""
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return not_initialised(f"the database is not migrated ({first})")
    return None


def _refused_login(role: str, exc: psycopg.OperationalError) -> LoglineError:
    """A server without LogLine's roles has never been migrated: say so, not the driver's
    `role "logline_kernel" does not exist`."""
    text = str(exc)
    if role != "admin" and f'role "{ROLE_NAMES[role]}" does not exist' in text:
        return not_initialised(f"the database has no {ROLE_NAMES[role]} role (not migrated)")
    return LoglineError("DB_UNAVAILABLE", f"cannot connect as {role}: {exc}".strip())


def stop_embedded(home: Home) -> bool:
    """Stop the embedded server of this home, if it runs. True when one was stopped."""
    if not (home.pgdata / "postmaster.pid").exists():
        return False
    user = "pgserver" if os.geteuid() == 0 else None
    _pgserver()._commands.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=home.pgdata, user=user)
    return True


@contextmanager
def unbounded(conn: psycopg.Connection) -> Iterator[None]:
    """No statement or idle-in-transaction timeout on this session inside (the role's own
    again after): for the operator's commands that legitimately run long, such as seeding a
    big file. Applied and reset outside any transaction."""
    conn.execute(q("unbounded_session"))
    try:
        yield
    finally:
        if not conn.closed and idle(conn):
            conn.execute(q("bounded_session"))


def idle(conn: psycopg.Connection) -> bool:
    """No transaction is open on this connection (nor failed, nor running a statement)."""
    return conn.info.transaction_status == TransactionStatus.IDLE


@contextmanager
def as_identity(conn: psycopg.Connection, user_id: str, tenant_id: str | None) -> Iterator[None]:
    """One transaction with the caller's identity set locally (never on the session)."""
    with conn.transaction():
        set_identity(conn, user_id, tenant_id)
        yield


def set_identity(conn: psycopg.Connection, user_id: str, tenant_id: str | None) -> None:
    """The caller's identity for the rest of the open transaction (row-level security)."""
    conn.execute(q("set_identity"), {"user": user_id, "tenant": tenant_id or ""})
