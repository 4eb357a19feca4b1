"""Ordered SQL migrations from schema/, applied once each and recorded with their checksum.

A migration runs in one transaction together with the row that records it, under an advisory
lock so two `logline migrate` at once apply each file once. Migrations of two databases of one
server can still meet on the roles, which the whole server shares: the loser is retried. A
file that changed after it was applied is refused: migrations are history, append a new one
instead.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from stage0.config import schema_dir
from stage0.errors import LoglineError
from stage0.ledger.db import Connection, Database, db_error
from stage0.ledger.queries import q

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
#: The schema as the migrations leave it, beside them (tools/dump_schema.py writes it, a test
#: checks it): a description for readers, never applied.
SNAPSHOT = "schema.sql"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or schema_dir()
    found = []
    for path in sorted(directory.glob("*.sql")):
        if path.name == SNAPSHOT:
            continue
        match = _NAME.match(path.name)
        if not match:
            raise LoglineError("MIGRATION_BAD_NAME", "migration files are named "
                               "NNNN_lowercase_words.sql", str(path))
        found.append(Migration(int(match.group(1)), path.stem, path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise LoglineError("MIGRATION_DUPLICATE", "two migrations share a number", str(directory))
    return found


def migrate(db: Database, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    migrations = discover(directory)
    applied_now: list[str] = []
    with db.connect("admin", autocommit=True) as conn:
        conn.execute(q("migrations_lock"))
        try:
            conn.execute(q("migrations_table"))
            done = {r["version"]: r for r in conn.execute(q("migrations_done"))}
            for m in migrations:
                if m.version in done:
                    if done[m.version]["checksum"] != m.checksum:
                        raise LoglineError("MIGRATION_CHANGED", "this migration was already "
                                           "applied with different content; add a new "
                                           "migration instead of editing it", str(m.path))
                    continue
                _apply(conn, m)
                applied_now.append(m.name)
        finally:
            conn.execute(q("migrations_unlock"))
    return applied_now


def _apply(conn: Connection, m: Migration) -> None:
    for attempt in range(_ATTEMPTS):
        try:
            with conn.transaction():
                conn.execute(m.sql)
                conn.execute(q("reset_role"))
                conn.execute(q("migration_record"), {"version": m.version, "name": m.name,
                                                     "checksum": m.checksum})
            return
        except psycopg.Error as exc:
            if attempt + 1 < _ATTEMPTS and _lost_a_server_wide_race(exc):
                time.sleep(random.uniform(0, 0.05 * 2 ** attempt))  # full jitter
                continue
            raise db_error(exc, "migration", str(m.path)) from None


#: Roles and their settings belong to the whole server (0001, 0006) while the migration lock
#: is per database, so migrating two databases of one server at once can meet there: the
#: loser of a catalog update fails ('tuple concurrently updated', or a duplicate role name).
#: Its transaction rolled back whole; running it again sees the winner's work.
_ATTEMPTS = 5


def _lost_a_server_wide_race(exc: psycopg.Error) -> bool:
    if exc.sqlstate == "XX000":
        return "concurrently" in str(exc)
    return exc.sqlstate == "23505" and (exc.diag.constraint_name or "").startswith("pg_")


def applied(db: Database) -> list[str]:
    with db.connect("admin") as conn:
        try:
            rows = conn.execute(q("migrations_applied"))
            return [r["name"] for r in rows]
        except psycopg.errors.UndefinedTable:
            return []
