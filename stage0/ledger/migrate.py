"""Ordered SQL migrations from schema/, applied once each and recorded with their checksum.

A migration runs in one transaction together with the row that records it, under an advisory
lock so two `logline migrate` at once apply each file once. A file that changed after it was
applied is refused: migrations are history, append a new one instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from stage0.config import schema_dir
from stage0.errors import LoglineError
from stage0.ledger.db import Connection, Database, db_error

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK = 5514346441049466214

_META = """
CREATE SCHEMA IF NOT EXISTS logline_meta;
CREATE TABLE IF NOT EXISTS logline_meta.migrations (
  version    integer PRIMARY KEY,
  name       text NOT NULL,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON SCHEMA logline_meta FROM PUBLIC;
"""


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
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
        try:
            conn.execute(_META)
            done = {r["version"]: r for r in conn.execute(
                "SELECT version, name, checksum FROM logline_meta.migrations")}
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
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
    return applied_now


def _apply(conn: Connection, m: Migration) -> None:
    try:
        with conn.transaction():
            conn.execute(m.sql)
            conn.execute("RESET ROLE")
            conn.execute("INSERT INTO logline_meta.migrations (version, name, checksum) "
                         "VALUES (%s, %s, %s)", (m.version, m.name, m.checksum))
    except psycopg.Error as exc:
        raise db_error(exc, "migration", str(m.path)) from None


def applied(db: Database) -> list[str]:
    with db.connect("admin") as conn:
        try:
            rows = conn.execute("SELECT name FROM logline_meta.migrations ORDER BY version")
            return [r["name"] for r in rows]
        except psycopg.errors.UndefinedTable:
            return []
