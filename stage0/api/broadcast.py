"""One LISTEN connection per server; subscribers are woken, never sent rows.

A notification carries (position, tenant_id, visibility): a subscriber is woken only when
the new row could be visible to it (public, or its own tenant). It then reads the rows after
its cursor through row-level security, as itself: the database decides what it sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import psycopg

from ..db import Database


class Subscription:
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.event = asyncio.Event()

    def offer(self, note: dict) -> None:
        if note.get("visibility") == "public" or note.get("tenant_id") == self.tenant_id:
            self.event.set()


class Broadcaster:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.subscribers: set[Subscription] = set()
        self.tip = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def subscribe(self, tenant_id: str) -> Subscription:
        sub = Subscription(tenant_id)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    async def _listen(self) -> None:
        """LISTEN forever, reconnecting with backoff; on reconnect wake everyone (they
        re-read from their cursor, so nothing committed meanwhile is missed)."""
        backoff = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.database.url("kernel"),
                                                             autocommit=True)
                async with conn:
                    await conn.execute("LISTEN timeline_updates")
                    backoff = 0.2
                    for sub in list(self.subscribers):
                        sub.event.set()
                    async for note in conn.notifies():
                        self._dispatch(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)

    def _dispatch(self, payload: str) -> None:
        try:
            note = json.loads(payload)
        except ValueError:
            return
        self.tip = max(self.tip, int(note.get("position") or 0))
        for sub in list(self.subscribers):
            sub.offer(note)
