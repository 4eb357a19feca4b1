"""One LISTEN connection per server; subscribers are woken, never sent rows.

A notification carries (position, tenant_id, visibility): a subscriber is woken only when
the new row could be visible to it (public, or its own tenant). It then reads the rows after
its cursor through row-level security, as its principal: the database decides what it sees.

The broadcaster also owns what the SSE streams (stage0/api/stream.py) read with: async
connection pools of the application role (RLS forced; the identity is set per transaction)
and the streams' hub, so that they live and die with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from stage0.ledger import notify
from stage0.ledger.db import Database
from stage0.ledger.pools import async_connection_pool

STREAM_POOL_SIZE = 4  # SSE reads of clients catching up (the live edge has its own)


class Subscription:
    def __init__(self, tenant_id: str, on_wake: Callable[[], None] | None = None) -> None:
        self.tenant_id = tenant_id
        self.event = asyncio.Event()
        self.on_wake = on_wake

    def wake(self) -> None:
        self.event.set()
        if self.on_wake is not None:
            self.on_wake()

    def offer(self, note: dict[str, Any]) -> None:
        if note.get("visibility") == "public" or note.get("tenant_id") == self.tenant_id:
            self.wake()


class Broadcaster:
    def __init__(self, database: Database, pool_size: int = STREAM_POOL_SIZE) -> None:
        self.database = database
        self.by_tenant: dict[str, set[Subscription]] = {}
        self.tip = 0
        self._task: asyncio.Task[None] | None = None
        # The hub's reads for the live edge have a connection of their own, so they never
        # wait behind clients catching up from an old position (those share `pool`).
        self.live_pool = async_connection_pool(database, "app", 1, 1, "logline-stream-live")
        self.pool = async_connection_pool(database, "app", min(2, pool_size), pool_size,
                                          "logline-stream")
        self.hub: Any = None  # stage0/api/stream.py's Hub, made by the first stream

    @property
    def subscribers(self) -> set[Subscription]:
        return {sub for subs in self.by_tenant.values() for sub in subs}

    async def start(self) -> None:
        await self.live_pool.open(wait=True, timeout=30)
        await self.pool.open(wait=True, timeout=30)
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.stop()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.live_pool.close()
        await self.pool.close()

    def subscribe(self, tenant_id: str,
                  on_wake: Callable[[], None] | None = None) -> Subscription:
        """Wake-ups for what tenant_id's principals might see: `event` is set (and on_wake
        called) on every append of that tenant and every public one."""
        sub = Subscription(tenant_id, on_wake)
        self.by_tenant.setdefault(tenant_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.by_tenant.get(sub.tenant_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.by_tenant[sub.tenant_id]

    async def _listen(self) -> None:
        """LISTEN forever, reconnecting with backoff; on reconnect wake everyone (they
        re-read from their cursor, so nothing committed meanwhile is missed)."""
        backoff = 0.2
        while True:
            try:
                async with notify.listening(self.database) as notes:
                    backoff = 0.2
                    for sub in self.subscribers:
                        sub.wake()
                    async for payload in notes:
                        self._dispatch(payload)
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
        if note.get("visibility") == "public":
            woken = [sub for subs in self.by_tenant.values() for sub in subs]
        else:
            woken = list(self.by_tenant.get(note.get("tenant_id"), ()))
        for sub in woken:
            sub.wake()
