"""Connection pools for the API server (stage0/api/state.py, broadcast.py): the driver's
pools, made here so that nothing outside stage0/ledger/ imports the driver."""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from stage0.ledger.db import Connection, Database, Role, configure


def connection_pool(database: Database, role: Role, max_size: int,
                    name: str) -> ConnectionPool[Connection]:
    """Connections of `role` like Database.connect's (autocommit, rows as dicts, numbers
    decoded as a span holds them), opened by the caller (`open(wait=True)`)."""
    return ConnectionPool(database.url(role), min_size=1, max_size=max_size, open=False,
                          kwargs={"autocommit": True, "row_factory": dict_row},
                          configure=configure, name=name)


def async_connection_pool(database: Database, role: Role, min_size: int, max_size: int,
                          name: str) -> AsyncConnectionPool[Any]:
    """Async autocommit connections of `role` (rows as tuples), opened by the caller."""
    return AsyncConnectionPool(database.url(role), min_size=min_size, max_size=max_size,
                               open=False, kwargs={"autocommit": True}, name=name)
