"""Notifications of appends: the channel ledger.after_append sends on (schema/0004), a small
JSON envelope per appended row (position, id, seq, tenant_id, visibility, entity_type),
sent at commit. They only wake readers, which then read the ledger itself: a lost one costs
a poll interval at most. Used by the worker (sync) and the API's broadcaster (async)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

from stage0.ledger.db import Connection, Database
from stage0.ledger.queries import q


def listen(conn: Connection) -> None:
    """Have `conn` (autocommit) receive the append notifications from now on."""
    conn.execute(q("listen_timeline"))


def wait(conn: Connection, timeout: float) -> list[str]:
    """The payloads that arrive on a listening `conn` within `timeout` seconds: at the first
    one, also whatever else has already arrived, without waiting for more."""
    # One notifies() generator at a time: psycopg holds the connection while one is open.
    notes = list(conn.notifies(timeout=timeout, stop_after=1))
    if notes:
        notes += conn.notifies(timeout=0)
    return [note.payload for note in notes]


@asynccontextmanager
async def listening(database: Database) -> AsyncIterator[AsyncIterator[str]]:
    """A kernel connection of its own that listens; yields the payloads as they arrive, for
    as long as the connection lives (a lost connection raises db.DatabaseError: the caller
    reconnects)."""
    conn = await psycopg.AsyncConnection.connect(database.url("kernel"), autocommit=True)
    async with conn:
        await conn.execute(q("listen_timeline"))
        yield (note.payload async for note in conn.notifies())
