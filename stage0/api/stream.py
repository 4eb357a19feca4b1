"""GET /api/timeline/stream: server-sent events of the visible timeline.

Clients with the same principal (tenant, user) and the same filters see exactly the same rows
under row-level security, so they share one *group*. A notification marks the groups that
might see the new row; the hub then reads the new rows once per marked group, each in its
own transaction as the group's principal under RLS (the database still decides what is
visible), all of a burst's reads sent as one pipeline on one connection (one round trip).
PostgreSQL renders the events; the bytes go to every member's bounded queue.

Every member keeps its own cursor (the position of the last event it was given). A client
that starts behind the live edge (Last-Event-ID or ?since= in the past) catches up on its own
first, reading as its principal, and joins its group only once its cursor has reached the
group's; from then on a member is given only the events after its own cursor. So each client
sees every row it may see, in position order, once. A member whose queue outgrows
SSE_QUEUE_BYTES is disconnected (it resumes with Last-Event-ID), and so is one that cannot
take a write within SSE_SEND_TIMEOUT_S (stage0/api/sse.py); the others never wait for it.

A stream outlives the request that authenticated it, so the hub re-checks the keys of every
open stream every SSE_KEY_CHECK_S, all of them in one query (never one per event): a stream
whose key was revoked, or no longer stands for the same principal, ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio

from stage0.api.broadcast import Broadcaster
from stage0.api.sse import SseResponse
from stage0.ledger.db import DatabaseError
from stage0.ledger.queries import q

SSE_BATCH = 200  # rows per read
SSE_SEND_TIMEOUT_S = 5.0  # a client that cannot take a write in this long is dropped
SSE_PING_S = 15  # a keep-alive comment after this long without an event
SSE_QUEUE_BYTES = 8 * 1024 * 1024  # events waiting for one client; beyond it, it is dropped
SSE_READS_PER_ROUND = 64  # group reads in one pipeline
SSE_KEY_CHECK_S = 2.0  # a stream ends this long (at most) after its key is revoked

Key = tuple[str, str, str | None, str | None]  # tenant, user, entity_type, trace_id
Rows = list[tuple[int, str]]  # (position, rendered event)


def _params(key: Key, after: int) -> dict[str, Any]:
    return {"after": after, "entity_type": key[2], "trace_id": key[3], "limit": SSE_BATCH}


async def read(broadcaster: Broadcaster, key: Key, after: int) -> tuple[Rows, int]:
    """For one client reading on its own: the rows after `after` that the principal of
    `key` may see (at most SSE_BATCH) and the newest position it can see, in one
    transaction as that principal, sent as one pipeline (one round trip)."""
    tenant, user = key[0], key[1]
    # Shielded: a client that leaves mid-read ends its stream after the read (a few ms), not
    # by cancelling the query, which would cost the pool its connection.
    with anyio.CancelScope(shield=True):
        async with broadcaster.pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                await conn.execute(q("set_identity"), {"user": user, "tenant": tenant})
                # The tip first: the rows' (later) snapshot then holds every row up to it.
                tip = await conn.execute(q("visible_tip"))
                rows = await conn.execute(q("stream_events"), _params(key, after))
            found, newest = await rows.fetchall(), await tip.fetchone()
    assert newest is not None  # an aggregate: always one row
    return found, newest[0]


async def read_many(broadcaster: Broadcaster, reads: list[tuple[Key, int]]) -> list[Rows]:
    """For each (key, after): the rows after `after` that key's principal may see, each in a
    transaction of its own as that principal; all sent as one pipeline (one round trip)."""
    async with broadcaster.live_pool.connection() as conn:
        cursors = []
        try:
            async with conn.pipeline():
                for key, after in reads:
                    await conn.execute(q("begin"))
                    await conn.execute(q("set_identity"), {"user": key[1], "tenant": key[0]})
                    cursors.append(await conn.execute(q("stream_events"), _params(key, after)))
                    await conn.execute(q("commit"))
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.rollback()  # a failed read leaves its transaction open
            raise
        return [await cursor.fetchall() for cursor in cursors]


def render(rows: Rows, after: int = -1) -> bytes:
    return "".join(event for position, event in rows if position > after).encode()


class Member:
    """One client's stream: its cursor and its queue of rendered chunks."""

    def __init__(self, key: Key, cursor: int) -> None:
        self.key, self.cursor = key, cursor
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.ready = asyncio.Event()
        self.group: Group | None = None
        self.overflowed = False
        self.failed = False
        self.on_overflow: Any = None  # disconnects the client

    def give(self, rows: Rows, chunk: bytes) -> bool:
        """Queue the rows after this member's cursor (`chunk` is all of them, rendered);
        False when its queue is over the limit (its group drops it)."""
        if rows[-1][0] <= self.cursor:
            return True
        if rows[0][0] <= self.cursor:
            chunk = render(rows, self.cursor)
        self.cursor = rows[-1][0]
        self.queue.append(chunk)
        self.queued += len(chunk)
        self.ready.set()
        if self.queued > SSE_QUEUE_BYTES and len(self.queue) > 1:
            self.overflowed = True
            return False
        return True

    def take(self) -> bytes:
        chunk = b"".join(self.queue) if len(self.queue) > 1 else self.queue[0]
        self.queue.clear()
        self.queued = 0
        return chunk


class Group:
    """The members that share one principal and filters, and the group's cursor: the last
    position read for them."""

    def __init__(self, hub: Hub, key: Key, cursor: int) -> None:
        self.hub, self.key, self.cursor = hub, key, cursor
        self.members: set[Member] = set()
        self.wake = hub.broadcaster.subscribe(key[0], on_wake=lambda: hub.mark(self))

    def fan_out(self, rows: Rows) -> None:
        self.cursor = rows[-1][0]
        chunk = render(rows)
        for member in list(self.members):
            if not member.give(rows, chunk):
                self.leave(member)
                if member.on_overflow is not None:
                    member.on_overflow()

    def leave(self, member: Member) -> None:
        self.members.discard(member)
        member.ready.set()
        if not self.members:
            self.hub.close(self)

    def fail(self) -> None:
        for member in self.members:
            member.failed = True
            member.ready.set()
        self.hub.close(self)


class Hub:
    """The groups of one server and the task that reads for them: each round takes every
    group marked since the last one (a burst of notifications marks a group once) and reads
    them in one pipeline."""

    def __init__(self, broadcaster: Broadcaster, log: Any,
                 recheck: Callable[[list[str]], dict[str, Any]]) -> None:
        self.broadcaster, self.log = broadcaster, log
        self.groups: dict[Key, Group] = {}
        self.marked: dict[Group, None] = {}  # an ordered set
        self.pending = asyncio.Event()
        #: Every open stream: (its token, the principal it authenticated as, what ends it).
        self.keys: dict[Member, tuple[str, Any, Callable[[], None]]] = {}
        self.task = asyncio.create_task(self.run())
        self.key_task = asyncio.create_task(self.watch_keys(recheck))

    async def watch_keys(self, recheck: Callable[[list[str]], dict[str, Any]]) -> None:
        """Every SSE_KEY_CHECK_S: `recheck(tokens)` (the principals of the tokens that still
        authenticate, in one query), and the end of every stream whose key is not among
        them. A failed check ends nobody (the streams' own reads fail if the database is
        gone) and is tried again."""
        while True:
            await asyncio.sleep(SSE_KEY_CHECK_S)
            if not self.keys:
                continue
            tokens = sorted({token for token, _, _ in self.keys.values()})
            try:
                valid = await anyio.to_thread.run_sync(recheck, tokens)
            except Exception as exc:
                self.log("sse_key_check_failed", error=f"{type(exc).__name__}: {exc}"[:300])
                continue
            for member, (token, principal, end) in list(self.keys.items()):
                if valid.get(token) != principal:
                    del self.keys[member]
                    end()

    def join(self, member: Member) -> bool:
        """Add `member` to its group (made if there is none) if its cursor has reached the
        group's; else False (it must read on its own first). No await: the check and the
        join happen between two reads of the group."""
        group = self.groups.get(member.key)
        if group is None:
            group = self.groups[member.key] = Group(self, member.key, member.cursor)
            self.mark(group)  # rows committed since the member's last read
        elif member.cursor < group.cursor:
            return False
        group.members.add(member)
        member.group = group
        return True

    def mark(self, group: Group) -> None:
        self.marked[group] = None
        self.pending.set()

    def close(self, group: Group) -> None:
        if self.groups.get(group.key) is group:
            del self.groups[group.key]
        self.marked.pop(group, None)
        self.broadcaster.unsubscribe(group.wake)

    async def run(self) -> None:
        while True:
            await self.pending.wait()
            self.pending.clear()
            while self.marked:
                batch = list(self.marked)[:SSE_READS_PER_ROUND]
                for group in batch:
                    del self.marked[group]
                try:
                    self.deliver(batch, await read_many(self.broadcaster,
                                                        [(g.key, g.cursor) for g in batch]))
                except Exception as exc:  # these clients end and resume with Last-Event-ID
                    self.log("sse_read_failed", groups=len(batch),
                             error=f"{type(exc).__name__}: {exc}"[:300])
                    for group in batch:
                        group.fail()

    def deliver(self, batch: list[Group], results: list[Rows]) -> None:
        for group, rows in zip(batch, results, strict=True):
            if rows and group.members:
                group.fan_out(rows)
            if len(rows) == SSE_BATCH:
                self.mark(group)  # more waiting

    async def stop(self) -> None:
        for task in (self.task, self.key_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for group in list(self.groups.values()):
            group.fail()


async def stream(call: Any) -> SseResponse:
    """SSE of the visible timeline from a position: Last-Event-ID (a reconnect), else
    ?since=, else the current tip. Each event's id is the span's global position, so a
    client that reconnects resumes exactly after what it saw: no gap, no duplicate."""
    last_event = call.request.headers.get("last-event-id", "")
    since = int(last_event) if re.fullmatch(r"[0-9]{1,18}", last_event) \
        else call.int_query("since", None, 0, 2**62)
    state, principal = call.state, call.principal
    assert principal is not None
    key: Key = (principal.tenant_id, principal.user_id, call.query("entity_type"),
                call.uuid_query("trace_id"))
    broadcaster: Broadcaster = state.broadcaster
    if broadcaster.hub is None:
        broadcaster.hub = Hub(broadcaster, state.log, state.valid_principals)
    hub: Hub = broadcaster.hub
    # From the tip, read before the response starts: a span appended after the client has
    # the response headers is in its stream.
    from_tip = since is None
    if since is None:
        since = (await read(broadcaster, key, 2**62))[1]

    async def chunks() -> AsyncGenerator[bytes, None]:
        state.metrics.sse_clients.inc()
        member = Member(key, since)
        member.on_overflow = lambda: response.drop("queue_full", queued_bytes=member.queued)
        hub.keys[member] = (call.token, principal, lambda: response.drop("key_revoked"))
        alone = broadcaster.subscribe(principal.tenant_id)  # wakes it while it reads alone
        try:
            if from_tip:  # join at once unless the group has read past the tip since
                hub.join(member)
            while member.group is None:  # catch up on its own, then join the group
                alone.event.clear()
                rows, tip = await read(broadcaster, key, member.cursor)
                if rows:
                    member.cursor = rows[-1][0]
                    yield render(rows)
                if len(rows) == SSE_BATCH:
                    continue
                # It has seen every row up to `tip` (the rows were read after it).
                member.cursor = max(member.cursor, tip)
                if not hub.join(member):  # the group has read rows newer than ours
                    with anyio.move_on_after(SSE_PING_S) as idle:
                        await alone.event.wait()
                    if idle.cancelled_caught:
                        yield b": ping\n\n"
            broadcaster.unsubscribe(alone)
            group = member.group
            while True:
                if member.overflowed:
                    break
                if member.queue:
                    yield member.take()
                    continue
                if member.failed or member not in group.members:
                    break
                member.ready.clear()
                with anyio.move_on_after(SSE_PING_S) as idle:
                    await member.ready.wait()
                if idle.cancelled_caught:
                    yield b": ping\n\n"
        except (DatabaseError, OSError) as exc:  # the client resumes with Last-Event-ID
            state.log("sse_read_failed", request_id=call.request_id,
                      error=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            hub.keys.pop(member, None)
            broadcaster.unsubscribe(alone)
            if member.group is not None and member in member.group.members:
                member.group.leave(member)
            state.metrics.sse_clients.dec()

    response = SseResponse(chunks(), SSE_SEND_TIMEOUT_S, state, call.request_id)
    return response
