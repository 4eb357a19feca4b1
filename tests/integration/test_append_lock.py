"""ledger.append_lock() (schema/0009): the lock the append trigger takes, behind a name, for
the kernel role only."""

from __future__ import annotations

import re

import psycopg
import pytest

from stage0.ledger import db
from stage0.ledger.queries import q


def held_advisory_locks(conn: db.Connection) -> set[int]:
    return {r["key"] for r in conn.execute(
        "SELECT (classid::bigint << 32) | objid::bigint AS key FROM pg_locks "
        "WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND granted")}


def test_it_takes_the_lock_the_append_trigger_takes_until_commit(database: db.Database) -> None:
    with database.connect("admin") as admin:
        source = admin.execute("SELECT prosrc FROM pg_proc "
                               "WHERE oid = 'ledger.on_append'::regproc").fetchone()["prosrc"]
    [trigger_key] = re.findall(r"pg_advisory_xact_lock\((\d+)\)", source)
    with database.connect("kernel") as conn:
        with conn.transaction():
            conn.execute(q("append_lock"))
            assert held_advisory_locks(conn) == {int(trigger_key)}
        assert held_advisory_locks(conn) == set()


def test_the_app_role_may_not_take_it(database: db.Database) -> None:
    with database.connect("app") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(q("append_lock"))
