#!/usr/bin/env python
"""API benchmark: SSE delivery latency and timeline reads through a real `logline serve`,
beside a bare Starlette floor served the same way on the same database, in the same run.

    python tools/bench_api.py [--quick] [--preload 1000000] [--profile] [--json FILE]

Starts its own embedded PostgreSQL in a temporary directory (or uses the server named by
LOGLINE_DATABASE_URL), creates a fresh database, migrates it, makes an operator key, seeds the
manifest, preloads the ledger (signed spans COPYed through the append trigger, as
tools/bench_ingest.py does) and creates API keys for a few tenants. Then it starts two
servers as subprocesses on free ports:

* ours: `python -m stage0.cli serve` (uvicorn, the whole API: auth, rate limits, RLS per
  request, pydantic models; SSE as stage0/api/stream.py serves it: one RLS read per
  (principal, filters) group and burst of notifications, fanned out);
* the floor: a plain Starlette app defined below, served by uvicorn with the same settings:
  `GET /floor/timeline` runs a bare `SELECT ... ORDER BY position DESC LIMIT 50` as the kernel
  role (no auth, no RLS) through a psycopg async pool and returns JSON
  (`/floor/timeline-thread` does the same through a sync pool in a worker thread, as ours
  does), and `GET /floor/stream?tenant=T` forwards every NOTIFY of that tenant as an SSE event
  (one LISTEN connection, no database read);
* in the same process, /sketch/: what stage0/api could do without giving up row-level
  security (app role, the caller's identity, one pipelined round trip per transaction):
  the timeline page built as JSON by PostgreSQL and passed through, and an SSE stream that
  fetches once per identity and wake for all subscribers with that identity, PostgreSQL
  encoding each row, one write per batch.

and measures (issue 4, item 8):

1. SSE: --clients (100) concurrent SSE clients on raw asyncio sockets in two client processes,
   spread over the tenants and several keys each; another process appends --rate (500)
   spans/s through stage0.ledger.store.append (kernel role) in batches of --batch (10), one tenant
   per batch, for --duration (20) s. Latency is the client's receive time minus the span's
   commit time taken by the writer right after the commit returns (one clock: same host).
   The raw NOTIFY latency (psycopg LISTEN in this process) is measured in the same runs.
2. GET /api/timeline?limit=50 with the ledger at --preload (1,000,000) rows: latency from one
   connection (sequential) and requests/s with --concurrency (8) keep-alive connections;
   the same for the floor's endpoints, and the SQL alone without HTTP (bare as kernel; the
   view under RLS as logline_app in a transaction with the caller's identity, as ours runs it).

Besides latency it prints the CPU each request or delivered event cost the API process and
PostgreSQL (all its processes; read from /proc). A benchmark never fails: it reports.
`--profile` re-runs both loads afterwards (not measured) with py-spy attached to our server
and prints where its time goes. docs/benchmarks.md ("API") holds a recorded run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing
import os
import pickle
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tools"))

import psycopg  # noqa: E402
from bench_ingest import met, release, run_bench, table  # noqa: E402
from rich.console import Console  # noqa: E402

from stage0 import keys  # noqa: E402
from stage0.config import Home, row_dir  # noqa: E402
from stage0.gov import apikeys  # noqa: E402
from stage0.ledger import db, migrate, seed, store  # noqa: E402
from stage0.ledger.queries import SPAN_COLUMNS  # noqa: E402

GOALS = {"sse_p99_ms": 50.0, "timeline_p95_ms": 10.0}
console = Console(width=160)
HOST = "127.0.0.1"
BARE_TIMELINE = (f"SELECT {SPAN_COLUMNS}, position FROM ledger.universal_registry "
                 "ORDER BY position DESC LIMIT %s")
#: What /api/timeline runs (stage0/api/routes.py TIMELINE) with no filters.
RLS_TIMELINE = (f"SELECT {SPAN_COLUMNS}, position FROM ledger.visible_timeline "
                "WHERE (%(entity_type)s::text IS NULL OR entity_type = %(entity_type)s) "
                "AND (%(trace_id)s::text IS NULL OR trace_id = %(trace_id)s) "
                "AND (%(before)s::bigint IS NULL OR position < %(before)s) "
                "AND (%(after)s::bigint IS NULL OR position > %(after)s) "
                "ORDER BY position DESC LIMIT %(limit)s")
#: The span id in an SSE event: the span JSON (ours) and the NOTIFY payload (the floor) each
#: carry exactly one "id" key ("parent_id" does not match: the quote must precede `id`).
ID_RE = re.compile(rb'"id"\s*:\s*"([0-9a-f-]{36})"')


# ---------------------------------------------------------------------------------------------
# The floor: a plain Starlette app (run in its own process by uvicorn, like `logline serve`)
# ---------------------------------------------------------------------------------------------

def floor_app(dsn: str, app_dsn: str) -> Any:
    """The floor (kernel role, no auth, no RLS) and, under /sketch/, what stage0/api could do
    while still letting the database decide visibility (app role, RLS, caller's identity)."""
    import anyio
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool, ConnectionPool
    from starlette.applications import Starlette
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    apool = AsyncConnectionPool(dsn, min_size=4, max_size=16, open=False,
                                kwargs={"autocommit": True, "row_factory": dict_row})
    tpool = ConnectionPool(dsn, min_size=4, max_size=16, open=False,
                           kwargs={"autocommit": True, "row_factory": dict_row})
    rls_pool = AsyncConnectionPool(app_dsn, min_size=4, max_size=16, open=False,
                                   kwargs={"autocommit": True})
    subscribers: dict[asyncio.Queue, str | None] = {}
    groups: dict[tuple[str, str], SketchGroup] = {}

    def body(rows: list[dict[str, Any]]) -> bytes:
        return json.dumps({"items": rows}, default=str, separators=(",", ":")).encode()

    async def timeline(request: Any) -> Response:
        async with apool.connection() as conn:
            rows = await (await conn.execute(BARE_TIMELINE, (50,))).fetchall()
        return Response(body(rows), media_type="application/json")

    def fetch() -> list[dict[str, Any]]:
        with tpool.connection() as conn:
            return conn.execute(BARE_TIMELINE, (50,)).fetchall()

    async def timeline_thread(request: Any) -> Response:
        rows = await anyio.to_thread.run_sync(fetch)
        return Response(body(rows), media_type="application/json")

    async def as_identity(tenant: str, user: str, sql: str, params: tuple) -> list[tuple]:
        """One transaction as (user, tenant) under RLS, sent as one pipeline: BEGIN,
        set_config, the query and COMMIT cost one round trip instead of four."""
        async with rls_pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                await conn.execute(SET_IDENTITY, (user, tenant))
                cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def sketch_timeline(request: Any) -> Response:
        q = request.query_params
        [(items,)] = await as_identity(q["tenant"], q["user"], SKETCH_TIMELINE, (50,))
        return Response(b'{"items":' + items.encode() + b"}", media_type="application/json")

    async def stream(request: Any) -> StreamingResponse:
        queue: asyncio.Queue = asyncio.Queue(maxsize=100_000)
        subscribers[queue] = request.query_params.get("tenant")

        async def events():  # type: ignore[no-untyped-def]
            try:
                while True:
                    yield f"data: {await queue.get()}\n\n"
            finally:
                subscribers.pop(queue, None)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def group_loop(group: SketchGroup) -> None:
        [(group.cursor,)] = await as_identity(group.tenant, group.user, SKETCH_TIP, ())
        while group.queues:
            await group.dirty.wait()
            group.dirty.clear()
            while True:
                rows = await as_identity(group.tenant, group.user, SKETCH_STREAM,
                                         (group.cursor, 200))
                if not rows:
                    break
                chunk = "".join(f"id: {p}\nevent: span\ndata: {j}\n\n" for p, j in rows)
                group.cursor = rows[-1][0]
                for queue in list(group.queues):
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(chunk)
                if len(rows) < 200:
                    break

    async def sketch_stream(request: Any) -> StreamingResponse:
        """Subscribers with the same identity see the same rows: one fetch per identity and
        wake, the events encoded once (by PostgreSQL) and written as one chunk per fetch."""
        q = request.query_params
        ident = (q["tenant"], q["user"])
        group = groups.get(ident)
        if group is None:  # no await before it is registered: one group per identity
            group = groups[ident] = SketchGroup(*ident)
        queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)
        group.queues.add(queue)
        if group.task is None or group.task.done():
            group.task = asyncio.create_task(group_loop(group))

        async def events():  # type: ignore[no-untyped-def]
            try:
                while True:
                    yield await queue.get()
            finally:
                group.queues.discard(queue)

        return StreamingResponse(events(), media_type="text/event-stream")

    async def health(request: Any) -> Response:
        return Response("ok")

    async def listen() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("LISTEN timeline_updates")
            async for note in conn.notifies():
                data = json.loads(note.payload)
                tenant = data.get("tenant_id")
                for queue, wanted in list(subscribers.items()):
                    if wanted is None or wanted == tenant:
                        with contextlib.suppress(asyncio.QueueFull):
                            queue.put_nowait(note.payload)
                public = data.get("visibility") == "public"
                for group in list(groups.values()):
                    if public or group.tenant == tenant:
                        group.dirty.set()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):  # type: ignore[no-untyped-def]
        await apool.open(wait=True)
        await rls_pool.open(wait=True)
        tpool.open(wait=True)
        task = asyncio.create_task(listen())
        try:
            yield
        finally:
            task.cancel()
            await apool.close()
            await rls_pool.close()
            tpool.close()

    return Starlette(routes=[Route("/floor/timeline", timeline),
                             Route("/floor/timeline-thread", timeline_thread),
                             Route("/floor/stream", stream), Route("/floor/health", health),
                             Route("/sketch/timeline", sketch_timeline),
                             Route("/sketch/stream", sketch_stream)],
                     lifespan=lifespan)


SET_IDENTITY = ("SELECT set_config('app.user_id', %s, true), "
                "set_config('app.tenant_id', %s, true)")
#: The page built by PostgreSQL as JSON text (passed through without decoding).
SKETCH_TIMELINE = ("SELECT coalesce(json_agg(t ORDER BY t.position DESC), '[]')::text FROM ("
                   f"SELECT {SPAN_COLUMNS}, position FROM ledger.visible_timeline "
                   "ORDER BY position DESC LIMIT %s) t")
SKETCH_STREAM = ("SELECT t.position, row_to_json(t)::text FROM ("
                 f"SELECT {SPAN_COLUMNS}, position FROM ledger.visible_timeline "
                 "WHERE position > %s ORDER BY position LIMIT %s) t")
SKETCH_TIP = "SELECT coalesce(max(position), 0) FROM ledger.visible_timeline"


class SketchGroup:
    def __init__(self, tenant: str, user: str) -> None:
        self.tenant, self.user, self.cursor = tenant, user, 0
        self.queues: set[asyncio.Queue] = set()
        self.dirty = asyncio.Event()
        self.task: asyncio.Task | None = None


def serve_floor(port: int, dsn: str, app_dsn: str) -> None:
    import uvicorn

    # The same call as stage0/cli/serve_cmds.py _serve.
    uvicorn.run(floor_app(dsn, app_dsn), host=HOST, port=port, log_level="warning",
                timeout_graceful_shutdown=5)


# ---------------------------------------------------------------------------------------------
# Clients (child processes): SSE listeners, an HTTP load generator, the span writer
# ---------------------------------------------------------------------------------------------

def cpu_self() -> float:
    t = os.times()
    return t.user + t.system


class SseClient(asyncio.Protocol):
    """One SSE connection on a raw socket: records (span id, receive time) for every event.
    The HTTP framing (chunk sizes) is not parsed: ids are found in the byte stream, with a
    tail kept across reads so an id split between two reads is still found once."""

    def __init__(self, request: bytes, out: list[tuple[bytes, float]],
                 headers: asyncio.Future) -> None:
        self.request, self.out, self.headers = request, out, headers
        self.head = b""
        self.tail = b""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.headers.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = int(self.head[9:12])
            self.headers.set_result(status)
            data, self.head = self.head[end + 4:], b""
            if status != 200:
                self.transport.close()
                return
        buf = self.tail + data
        last = 0
        for match in ID_RE.finditer(buf):
            self.out.append((match.group(1), now))
            last = match.end()
        self.tail = buf[last:][-200:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.headers.done():
            self.headers.set_result(0)


def sse_clients(port: int, specs: list[tuple[str, str | None]], ready: Any, stop: Any,
                out_file: str) -> None:
    """Child process: open one SSE connection per (path, token), report readiness, record
    events until `stop` is set, then write what was received to out_file."""

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        received: list[tuple[bytes, float]] = []
        clients, futures = [], []
        for path, token in specs:
            auth = f"Authorization: Bearer {token}\r\n" if token else ""
            request = (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}"
                       "Accept: text/event-stream\r\n\r\n").encode()
            headers = loop.create_future()
            _, proto = await loop.create_connection(
                lambda r=request, h=headers: SseClient(r, received, h), HOST, port)
            clients.append(proto)
            futures.append(headers)
        statuses = await asyncio.wait_for(asyncio.gather(*futures), 60)
        ready.put((os.getpid(), collections.Counter(statuses)))
        cpu0 = cpu_self()
        await loop.run_in_executor(None, stop.wait)
        cpu = cpu_self() - cpu0
        dropped = sum(1 for c in clients if c.closed)
        for c in clients:
            c.transport.close()
        return {"events": received, "statuses": collections.Counter(statuses),
                "dropped": dropped, "cpu": cpu, "connections": len(specs)}

    result = asyncio.run(main())
    Path(out_file).write_bytes(pickle.dumps(result))


def http_load(port: int, variants: list[tuple[str, str | None]], connections: int,
              requests: int | None, seconds: float | None, warm: int, out_file: str) -> None:
    """Child process: keep-alive GETs on `connections` raw sockets, each request the next of
    `variants` (path, bearer token or None); `warm` untimed requests per connection, then
    (all connections starting together) either `requests` per connection or for `seconds`.
    Writes the latencies (ms) to out_file."""
    length_re = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")

    async def main() -> dict[str, Any]:
        start, all_warm = asyncio.Event(), asyncio.Event()
        warmed = 0
        lat: list[float] = []
        statuses: collections.Counter = collections.Counter()
        box: dict[str, float | None] = {"deadline": None}

        async def connection(k: int) -> None:
            nonlocal warmed
            reader, writer = await asyncio.open_connection(HOST, port)
            j = k

            async def get() -> tuple[int, float]:
                nonlocal j
                path, token = variants[j % len(variants)]
                j += connections
                auth = f"Authorization: Bearer {token}\r\n" if token else ""
                req = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}\r\n".encode()
                t = time.perf_counter()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                match = length_re.search(head)
                await reader.readexactly(int(match.group(1)) if match else 0)
                return int(head[9:12]), (time.perf_counter() - t) * 1000

            for _ in range(warm):
                await get()
            warmed += 1
            if warmed == connections:
                all_warm.set()
            await start.wait()
            n = 0
            while requests is None or n < requests:
                deadline = box["deadline"]
                if deadline is not None and time.perf_counter() >= deadline:
                    break
                status, ms = await get()
                statuses[status] += 1
                lat.append(ms)
                n += 1
            writer.close()

        tasks = [asyncio.create_task(connection(k)) for k in range(connections)]
        waiter = asyncio.create_task(all_warm.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter:
                task.result()  # a connection failed during the warm-up: raise it
        cpu0, t0 = cpu_self(), time.perf_counter()
        box["deadline"] = t0 + seconds if seconds else None
        start.set()
        await asyncio.gather(*tasks)
        return {"latencies": lat, "statuses": statuses, "wall": time.perf_counter() - t0,
                "cpu": cpu_self() - cpu0}

    result = asyncio.run(main())
    Path(out_file).write_bytes(pickle.dumps(result))


def write_spans(admin_url: str, home_path: str, tenants: list[str], rate: float, batch: int,
                seconds: float, run: str, go: Any, out_file: str) -> None:
    """Child process: append `rate` spans/s in batches (one tenant per batch, in turn) with
    stage0.ledger.store.append as the kernel role; record each span's send and commit time."""
    from bench_ingest import draft  # the ingest benchmark's span mix (~480 bytes)

    database = db.Database(admin_url)
    key = keys.operator_key(Home(Path(home_path)))
    records: list[tuple[bytes, str, float, float]] = []
    with database.connect("kernel") as conn:
        store.append(conn, [{**draft(run, -1), "tenant_id": "bench-warmup"}], key)
        go.wait()
        interval = batch / rate
        batches = max(1, int(round(seconds * rate / batch)))
        cpu0 = cpu_self()
        t0 = time.perf_counter()
        late = 0
        for k in range(batches):
            due = t0 + k * interval
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            else:
                late += 1
            tenant = tenants[k % len(tenants)]
            sent = time.time()
            spans = []
            for i in range(k * batch, (k + 1) * batch):
                span = draft(run, i)
                span.update(tenant_id=tenant, owner_id=f"{tenant}-writer", visibility="tenant",
                            metadata={**span.get("metadata", {}), "sent": sent, "batch": k})
                spans.append(span)
            stored = store.append(conn, spans, key)
            committed = time.time()
            records += [(s["id"].encode(), tenant, sent, committed) for s in stored]
        wall = time.perf_counter() - t0
        cpu = cpu_self() - cpu0
    Path(out_file).write_bytes(pickle.dumps({"records": records, "wall": wall, "cpu": cpu,
                                             "late_batches": late, "batches": batches}))


# ---------------------------------------------------------------------------------------------
# Measuring helpers
# ---------------------------------------------------------------------------------------------

def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class PgCpu:
    """CPU of the PostgreSQL server (postmaster and every child), when it runs on this host:
    processes started during a measurement count in full, ended ones are lost (rare: the
    servers' pools keep their connections)."""

    def __init__(self, backend_pid: int | None) -> None:
        self.root = proc_ppid(backend_pid) if backend_pid else None

    def snapshot(self) -> dict[int, float] | None:
        if self.root is None or proc_cpu(self.root) is None:
            return None
        out = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                pid = int(entry.name)
                if pid == self.root or proc_ppid(pid) == self.root:
                    cpu = proc_cpu(pid)
                    if cpu is not None:
                        out[pid] = cpu
        return out

    @staticmethod
    def delta(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
        if before is None or after is None:
            return None
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


class Meter:
    """CPU of the API server process and of PostgreSQL over a measurement."""

    def __init__(self, server_pid: int | None, pg: PgCpu) -> None:
        self.server_pid, self.pg = server_pid, pg

    def __enter__(self) -> Meter:
        self._server = proc_cpu(self.server_pid) if self.server_pid else None
        self._pg = self.pg.snapshot()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        end = proc_cpu(self.server_pid) if self.server_pid else None
        self.server = end - self._server if end is not None and self._server is not None \
            else None
        self.postgres = PgCpu.delta(self._pg, self.pg.snapshot())

    def per(self, n: int) -> dict[str, float | None]:
        """CPU microseconds per item."""
        return {"server_cpu_us": None if self.server is None or not n else self.server * 1e6 / n,
                "pg_cpu_us": None if self.postgres is None or not n else self.postgres * 1e6 / n,
                "server_cores": None if self.server is None else self.server / self.wall,
                "pg_cores": None if self.postgres is None else self.postgres / self.wall}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(port: int, path: str, proc: subprocess.Popen, log: Path,
              timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on {port} not ready in {timeout}s:\n{log.read_text()[-3000:]}")


# ---------------------------------------------------------------------------------------------
# py-spy: where the server's time goes (--profile; never during a measured figure)
# ---------------------------------------------------------------------------------------------

def pyspy(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    """Sample the thread holding the GIL (the API is one process: its CPU is GIL-bound)."""
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration",
                             str(int(seconds)), "--rate", "200", "--gil", "--nonblocking",
                             "--format", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pyspy_summary(raw: Path, top: int = 16) -> dict[str, Any]:
    """Collapsed stacks -> shares of the samples: own time by function and by package, and
    inclusive time (the function or what it calls) of stage0's functions."""
    own: collections.Counter = collections.Counter()
    package: collections.Counter = collections.Counter()
    ours: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";") if f]
        if not count.isdigit() or not frames:
            continue
        n = int(count)
        total += n
        own[frames[-1][0]] += n
        package[frames[-1][1]] += n
        for name in {name for name, pkg in frames if pkg == "stage0" and
                     not name.startswith(("main ", "cmd_serve ", "_serve ", "<module> "))}:
            ours[name] += n

    def shares(counter: collections.Counter, k: int) -> list[tuple[str, float]]:
        return [(name, n / total) for name, n in counter.most_common(k)] if total else []

    return {"samples": total, "own": shares(own, top), "packages": shares(package, top),
            "stage0": shares(ours, top)}


def _frame(frame: str) -> tuple[str, str]:
    """'fn (path/to/file.py:123)' -> ('fn (pkg/file.py)', 'pkg')."""
    match = re.match(r"(.*) \((.*?):?(\d*)\)$", frame)
    if not match:
        return frame, frame
    fn, path = match.group(1), match.group(2)
    parts = Path(path).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    if "stage0" in parts:
        where = "/".join(parts[parts.index("stage0"):])
        pkg = "stage0"
    elif parts and not Path(path).is_absolute() or "site-packages" in Path(path).parts:
        # py-spy names installed modules relative to site-packages: "pkg/.../file.py".
        where = "/".join(parts[:1] + parts[-1:]) if len(parts) > 1 else "/".join(parts)
        pkg = parts[0].removesuffix(".py") if parts else "?"
    else:
        where = "/".join(parts[-2:])
        pkg = parts[-2] if len(parts) > 1 and not parts[-2].startswith("python3") \
            else parts[-1].removesuffix(".py")
    return f"{fn} ({where})", pkg


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="logline-bench-api-"))
        if os.geteuid() == 0:  # the embedded server runs as another user: let it traverse (only)
            self.tmp.chmod(0o711)
        self.home = Home(self.tmp / "home")
        self.external = bool(os.environ.get("LOGLINE_DATABASE_URL"))
        self.server: db.Database | None = None
        self.database: db.Database | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.ctx = multiprocessing.get_context("spawn")
        self.tenants = [f"tenant-{k}" for k in range(args.tenants)]
        self.idents: dict[str, list[tuple[str, str]]] = {}  # tenant -> [(user, API key)]
        self.results: dict[str, Any] = {"sse": [], "timeline": [], "profiles": {}}

    # --- setup / teardown ---------------------------------------------------------------------

    def setup(self) -> None:
        if self.external:
            self.server = db.Database(os.environ["LOGLINE_DATABASE_URL"])
        else:
            self.server = db.embedded(self.home)
        name = f"logline_bench_{uuid.uuid4().hex[:8]}"
        with self.server.connect("admin", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.database = self.server.with_dbname(name)
        migrate.migrate(self.database)
        self.key, _ = keys.ensure_operator_key(self.home)
        with self.database.connect("kernel") as conn:
            seed.seed(conn, [row_dir()], self.key)
            # Keys: the stream limit is 10 connections per key (burst), the read limit 50/s
            # per key; enough keys that neither limit is what the benchmark measures.
            per_tenant = max(10, -(-self.args.clients // (5 * len(self.tenants))))
            for tenant in self.tenants:
                self.idents[tenant] = [
                    (f"{tenant}-reader-{k}", apikeys.create(
                        conn, self.key, f"{tenant}-reader-{k}", tenant, ("reader",))[0])
                    for k in range(per_tenant)]
            backend = conn.execute("SELECT pg_backend_pid() AS p").fetchone()["p"]
        self.pg = PgCpu(backend)
        with self.database.connect("admin", autocommit=True) as conn:
            settings = {s: conn.execute(f"SHOW {s}").fetchone()[s] for s in (
                "server_version", "fsync", "synchronous_commit", "shared_buffers")}
        import starlette
        import uvicorn

        self.results["meta"] = {
            "command": "python tools/bench_api.py " + " ".join(sys.argv[1:]),
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg(),
            "server": "LOGLINE_DATABASE_URL" if self.external else "embedded pgserver",
            "postgres": settings, "uvicorn": uvicorn.__version__,
            "starlette": starlette.__version__,
            "uvloop": _installed("uvloop"), "httptools": _installed("httptools"),
            "keys": sum(len(v) for v in self.idents.values()),
        }

    def env(self) -> dict[str, str]:
        assert self.database is not None
        return {**os.environ, "LOGLINE_HOME": str(self.home.path),
                "LOGLINE_DATABASE_URL": self.database.admin_url,
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def start_servers(self) -> None:
        assert self.database is not None
        for name, cmd, ready in (
            ("ours", [sys.executable, "-m", "stage0.cli", "serve", "--host", HOST, "--port"],
             "/healthz"),
            ("floor", [sys.executable, str(Path(__file__).resolve()), "--floor-server",
                       self.database.url("kernel"), "--app-dsn", self.database.url("app"),
                       "--port"], "/floor/health"),
        ):
            port = free_port()
            log = self.tmp / f"{name}.log"
            self.procs[name] = subprocess.Popen(cmd + [str(port)], env=self.env(), cwd=ROOT,
                                                stdout=log.open("w"), stderr=subprocess.STDOUT)
            self.ports[name] = port
            wait_http(port, ready, self.procs[name], log)

    def settle(self, timeout: float = 60.0) -> float:
        """Wait until both servers are idle (under 5 % of a core over half a second), so a
        backlog left by one run (SSE events still being written) never loads the next."""
        t0 = time.perf_counter()
        pids = [p.pid for p in self.procs.values()]
        last = {pid: proc_cpu(pid) or 0.0 for pid in pids}
        while time.perf_counter() - t0 < timeout:
            time.sleep(0.5)
            now = {pid: proc_cpu(pid) or 0.0 for pid in pids}
            if all(now[pid] - last[pid] < 0.025 for pid in pids):
                break
            last = now
        return time.perf_counter() - t0

    def stop_servers(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def teardown(self) -> None:
        self.stop_servers()
        if self.args.keep:
            name = self.database.dbname if self.database else "?"
            console.print(f"[yellow]kept[/] database {name} and {self.tmp} (server running)")
            return
        release(self.server, [self.database.dbname if self.database else None],
                self.home, self.tmp, self.external)

    def count(self) -> int:
        assert self.database is not None
        with self.database.connect("kernel") as conn:
            return conn.execute("SELECT count(*) AS n FROM ledger.universal_registry"
                                ).fetchone()["n"]

    # --- preload ------------------------------------------------------------------------------

    def preload(self) -> None:
        """Signed seq-0 spans (bench_ingest's mix: 7 tenants, visibility tenant) COPYed
        through the append trigger in batches, signed by worker processes. Done before the
        servers start, so no listener wakes for a million NOTIFYs."""
        from bench_ingest import ms_ago, signed_batch

        assert self.database is not None
        todo = max(0, self.args.preload - self.count())
        batch, seed_hex = 10_000, bytes(self.key).hex()
        run = f"api-{uuid.uuid4().hex[:8]}"
        first_ms = ms_ago(todo)
        workers = max(1, (os.cpu_count() or 1) - 1)
        t = time.perf_counter()
        with self.database.connect("kernel") as conn, ProcessPoolExecutor(workers) as pool:
            pending: deque = deque()
            for offset in range(0, todo, batch):
                n = min(batch, todo - offset)
                pending.append(pool.submit(signed_batch, seed_hex, run, offset, n,
                                           first_ms + offset))
                while len(pending) >= 2 * workers or (pending and offset + n >= todo):
                    spans = pending.popleft().result()
                    with conn.transaction():
                        store.insert(conn, spans)
        with self.database.connect("admin", autocommit=True) as conn:
            conn.execute("ANALYZE ledger.universal_registry")
            conn.execute("ANALYZE ledger.span_heads")
        self.rows = self.count()
        self.results["preload"] = {"spans": todo, "seconds": round(time.perf_counter() - t, 1),
                                   "rows_after": self.rows}

    # --- timeline -----------------------------------------------------------------------------

    def http(self, name: str, variants: list[tuple[str, str | None]], connections: int,
             requests: int | None = None, seconds: float | None = None,
             warm: int = 20) -> dict[str, Any]:
        self.settle()
        out = self.tmp / f"http-{uuid.uuid4().hex[:6]}.pkl"
        proc = self.ctx.Process(daemon=True, target=http_load, args=(
            self.ports[name], variants, connections, requests, seconds, warm, str(out)))
        pid = self.procs[name].pid
        proc.start()
        # The meter covers the warm-up too; it is short (warm x connections requests) and
        # counted in the divisor below.
        with Meter(pid, self.pg) as m:
            proc.join()
        if proc.exitcode != 0 or not out.exists():
            raise RuntimeError(f"load client failed on {variants[0][0]} (exit {proc.exitcode})")
        res = pickle.loads(out.read_bytes())
        lat, statuses = res["latencies"], res["statuses"]
        n = len(lat) + warm * connections
        return {"requests": len(lat), "non_200": sum(v for k, v in statuses.items() if k != 200),
                "statuses": dict(statuses), "per_s": len(lat) / res["wall"],
                "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99),
                "client_cpu_us": res["cpu"] * 1e6 / max(1, len(lat)), **m.per(n)}

    def timeline(self) -> None:
        args = self.args
        # Interleaved over tenants: consecutive requests use different keys and tenants.
        idents = [(t, u, k) for row in zip(*(self.idents[t] for t in self.tenants), strict=True)
                  for t, (u, k) in zip(self.tenants, row, strict=True)]
        targets = [
            ("ours", "GET /api/timeline?limit=50 (logline serve)", "ours",
             [("/api/timeline?limit=50", k) for _, _, k in idents]),
            ("floor", "floor: bare SELECT, async pool, no auth/RLS", "floor",
             [("/floor/timeline", None)]),
            ("floor_thread", "floor: the same through a sync pool in a thread (as ours)",
             "floor", [("/floor/timeline-thread", None)]),
            ("sketch", "sketch: RLS as the caller, 1 round trip, JSON built by PostgreSQL",
             "floor", [(f"/sketch/timeline?tenant={t}&user={u}", None) for t, u, _ in idents]),
        ]
        self.sql_only()
        for key, label, server, variants in targets:
            seq = self.http(server, variants, 1, requests=args.requests)
            load = self.http(server, variants, args.concurrency, seconds=args.load_seconds)
            self.results["timeline"].append({"key": key, "what": label, "sequential": seq,
                                             "concurrent": load})
            console.log(f"timeline {key}: p95 {seq['p95_ms']:.2f} ms sequential, "
                        f"{load['per_s']:,.0f} req/s with {args.concurrency} connections "
                        f"(load average {os.getloadavg()[0]:.1f})")

    def sql_only(self) -> None:
        """The two queries without HTTP, from this process: what the database part costs."""
        assert self.database is not None
        n = self.args.requests
        tenant = self.tenants[0]
        params = {"entity_type": None, "trace_id": None, "before": None, "after": None,
                  "limit": 50}
        out = {}
        with self.database.connect("kernel") as conn:
            out["bare"] = _timed(lambda: conn.execute(BARE_TIMELINE, (50,)).fetchall(), n)
        with self.database.connect("app") as conn:
            def rls() -> list:
                with conn.transaction():
                    conn.execute("SELECT set_config('app.user_id', %s, true), "
                                 "set_config('app.tenant_id', %s, true)",
                                 (f"{tenant}-reader-0", tenant))
                    return conn.execute(RLS_TIMELINE, params).fetchall()
            out["rls"] = _timed(rls, n)
            with conn.transaction():
                conn.execute("SELECT set_config('app.user_id', %s, true), "
                             "set_config('app.tenant_id', %s, true)",
                             (f"{tenant}-reader-0", tenant))
                plan = [r["QUERY PLAN"] for r in conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS) " + RLS_TIMELINE, params)]
        out["rls_plan"] = plan
        self.results["sql"] = out

    # --- SSE ----------------------------------------------------------------------------------

    def sse(self, key: str, label: str, mode: str, duration: float,
            profile: Path | None = None) -> dict[str, Any]:
        args = self.args
        server = "ours" if mode == "ours" else "floor"
        self.settle()
        specs: list[tuple[str, str | None]] = []
        per_tenant = collections.Counter()
        for c in range(args.clients):
            tenant = self.tenants[c % len(self.tenants)]
            per_tenant[tenant] += 1
            users = self.idents[tenant]
            user, token = users[(c // len(self.tenants)) % len(users)]
            if mode == "ours":
                specs.append(("/api/timeline/stream", token))
            elif mode == "sketch":
                specs.append((f"/sketch/stream?tenant={tenant}&user={user}", None))
            else:
                specs.append((f"/floor/stream?tenant={tenant}", None))
        procs, outs = [], []
        ready = self.ctx.Queue()
        stop, go = self.ctx.Event(), self.ctx.Event()
        for j in range(args.client_procs):
            out = self.tmp / f"sse-{key}-{j}.pkl"
            outs.append(out)
            procs.append(self.ctx.Process(daemon=True, target=sse_clients, args=(
                self.ports[server], specs[j::args.client_procs], ready, stop, str(out))))
        for p in procs:
            p.start()
        statuses: collections.Counter = collections.Counter()
        for _ in procs:
            _, counts = ready.get(timeout=120)
            statuses.update(counts)
        writer_out = self.tmp / f"writer-{key}.pkl"
        assert self.database is not None
        writer = self.ctx.Process(daemon=True, target=write_spans, args=(
            self.database.admin_url, str(self.home.path), self.tenants, args.rate, args.batch,
            duration, f"sse-{key}-{uuid.uuid4().hex[:6]}", go, str(writer_out)))
        writer.start()
        notes: list[tuple[bytes, float]] = []
        listening = threading.Event()
        done = threading.Event()
        listener = threading.Thread(target=self._listen, args=(notes, listening, done))
        listener.start()
        listening.wait(30)
        time.sleep(1.0)  # the writer's process start and warm-up append, before timing
        spy = None
        if profile is not None:
            spy = pyspy(self.procs[server].pid, duration, profile)
        with Meter(self.procs[server].pid, self.pg) as m:
            go.set()
            writer.join()
            time.sleep(args.grace)
        stop.set()
        done.set()
        for p in procs:
            p.join(60)
        listener.join()
        if spy is not None:
            spy.wait()
        w = pickle.loads(writer_out.read_bytes())
        commits = {rec[0]: rec for rec in w["records"]}
        lat: list[float] = []
        seen: collections.Counter = collections.Counter()
        dropped = cpu = 0.0
        for out in outs:
            res = pickle.loads(out.read_bytes())
            dropped += res["dropped"]
            cpu += res["cpu"]
            for span_id, at in res["events"]:
                rec = commits.get(span_id)
                if rec is not None:
                    lat.append((at - rec[3]) * 1000)
                    seen[span_id] += 1
        expected = sum(per_tenant[rec[1]] for rec in w["records"])
        note_lat = [(at - commits[i][3]) * 1000 for i, at in notes if i in commits]
        append_ms = [(rec[3] - rec[2]) * 1000 for rec in w["records"]]
        result = {
            "key": key, "what": label, "clients": args.clients, "connected": statuses.get(200, 0),
            "refused": {k: v for k, v in statuses.items() if k != 200},
            "dropped_during_run": int(dropped), "spans": len(commits),
            "spans_per_s": len(commits) / w["wall"], "late_batches": w["late_batches"],
            "expected": expected, "delivered": len(lat),
            "duplicates": sum(v - per_tenant[commits[i][1]] for i, v in seen.items()
                              if v > per_tenant[commits[i][1]]),
            # Percentiles over every expected delivery: one not delivered by the end of the
            # run (the last append + --grace) counts as infinitely late.
            **{f"p{q}_ms": pct(lat + [float("inf")] * max(0, expected - len(lat)), q)
               for q in (50, 90, 99)},
            "max_ms": max(lat) if lat else None, "window_s": duration + args.grace,
            "load_avg": os.getloadavg()[0],
            "notify_p50_ms": pct(note_lat, 50), "notify_p99_ms": pct(note_lat, 99),
            "append_p50_ms": pct(append_ms, 50), "append_p99_ms": pct(append_ms, 99),
            "client_cpu_us": cpu * 1e6 / max(1, len(lat)), **m.per(len(lat)),
        }
        result["busy_after_s"] = self.settle()  # the server still writing a backlog
        console.log(f"SSE {key}: p50 {_f(result['p50_ms'])} ms, p99 {_f(result['p99_ms'])} ms, "
                    f"{len(lat):,}/{expected:,} delivered (load average "
                    f"{os.getloadavg()[0]:.1f})")
        return result

    def _listen(self, notes: list[tuple[bytes, float]], listening: threading.Event,
                done: threading.Event) -> None:
        assert self.database is not None
        with self.database.connect("kernel") as conn:
            conn.execute("LISTEN timeline_updates")
            listening.set()
            while not done.is_set():
                for note in conn.notifies(timeout=0.2):
                    now = time.time()
                    match = ID_RE.search(note.payload.encode())
                    if match:
                        notes.append((match.group(1), now))

    # --- profile ------------------------------------------------------------------------------

    def profile(self) -> None:
        sse_raw = self.tmp / "pyspy-sse.txt"
        if self.args.only in (None, "sse"):
            self.sse("profile", "profiled", "ours", min(10.0, self.args.duration), sse_raw)
        if self.args.only == "sse":
            self.results["profiles"]["sse"] = pyspy_summary(sse_raw)
            return
        timeline_raw = self.tmp / "pyspy-timeline.txt"
        variants = [("/api/timeline?limit=50", k) for v in self.idents.values() for _, k in v]
        spy = pyspy(self.procs["ours"].pid, self.args.load_seconds, timeline_raw)
        self.http("ours", variants, self.args.concurrency, seconds=self.args.load_seconds)
        spy.wait()
        for name, raw in (("sse", sse_raw), ("timeline", timeline_raw)):
            if raw.exists():
                self.results["profiles"][name] = pyspy_summary(raw)

    # --- the whole run ------------------------------------------------------------------------

    def run_all(self) -> None:
        args = self.args
        steps = [
            (f"preload to {args.preload:,} spans", self.preload),
            ("start servers", self.start_servers),
        ]
        if args.only in (None, "timeline"):
            steps.append(("timeline", self.timeline))
        if args.only in (None, "sse"):
            # Ours last: a backlog it leaves cannot load the others (settle() waits anyway).
            steps += [
                ("SSE, floor", lambda: self.results["sse"].append(self.sse(
                    "floor", "floor: LISTEN -> SSE, no database read", "floor",
                    args.duration))),
                ("SSE, sketch", lambda: self.results["sse"].append(self.sse(
                    "sketch", "sketch: one RLS fetch per identity, JSON by PostgreSQL, one "
                    "write per batch", "sketch", args.duration))),
                ("SSE, ours", lambda: self.results["sse"].append(self.sse(
                    "ours", "GET /api/timeline/stream (logline serve)", "ours",
                    args.duration))),
            ]
        if args.profile:
            steps.append(("profile (py-spy, not measured)", self.profile))
        for name, step in steps:
            t = time.perf_counter()
            with console.status(f"{name} ..."):
                step()
            console.log(f"{name}: {time.perf_counter() - t:.1f} s "
                        f"(load average {os.getloadavg()[0]:.1f})")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _timed(fn: Any, n: int, warm: int = 20) -> dict[str, Any]:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"n": n, "p50_ms": pct(times, 50), "p95_ms": pct(times, 95), "p99_ms": pct(times, 99)}


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _late(ms: float | None, window_s: float) -> str:
    return f"> {window_s:.0f} s" if ms == float("inf") else _f(ms)


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    meta = results["meta"]
    pg = meta["postgres"]
    console.print(
        f"\n[bold]LogLine API benchmark[/]  {meta['date']}  {meta['cpus']} cores, load average "
        f"at start {meta['load_avg_at_start'][0]:.1f}, Python {meta['python']}, uvicorn "
        f"{meta['uvicorn']} (uvloop {'yes' if meta['uvloop'] else 'no'}, httptools "
        f"{'yes' if meta['httptools'] else 'no'}), starlette {meta['starlette']}, PostgreSQL "
        f"{pg['server_version']} ({meta['server']}; fsync={pg['fsync']}, synchronous_commit="
        f"{pg['synchronous_commit']}, shared_buffers={pg['shared_buffers']})")
    p = results.get("preload") or {}
    console.print(f"ledger: {p.get('rows_after', 0):,} rows (preloaded {p.get('spans', 0):,} in "
                  f"{p.get('seconds', 0):.0f} s); {meta['keys']} API keys over "
                  f"{args.tenants} tenants (spans are visibility=tenant: a tenant sees ~1/7 "
                  "of the preload and 1/{} of the writer's spans)".format(args.tenants))

    order = {"ours": 0, "floor": 1, "sketch": 2}
    rows = sorted(results["sse"], key=lambda r: order.get(r["key"], 9))
    if rows:
        t = table(f"SSE delivery, insert (commit) -> client: {args.clients} clients in "
                  f"{args.client_procs} processes over {args.tenants} tenants, "
                  f"{args.rate:.0f} spans/s in batches of {args.batch} (one tenant per batch) "
                  f"for {args.duration:.0f} s",
                  ["endpoint", "spans/s", "delivered", "p50 ms", "p90 ms", "p99 ms", "max ms",
                   "API CPU µs/event", "PG CPU µs/event", "cores API / PG", "load", "goal",
                   "met"], ("endpoint",))
        notify = [r for r in rows if r["notify_p99_ms"] is not None]
        if notify:
            r0 = notify[0]
            t.add_row("NOTIFY (psycopg LISTEN in the benchmark process)",
                      _f(r0["spans_per_s"], 0), f"{r0['spans']:,}", _f(r0["notify_p50_ms"], 2),
                      "", _f(r0["notify_p99_ms"], 2), "", "", "", "", _f(r0["load_avg"]), "",
                      "")
        for r in rows:
            share = r["delivered"] / r["expected"] if r["expected"] else 0
            extra = ""
            if r["refused"]:
                extra += f" refused {r['refused']}"
            if r["dropped_during_run"]:
                extra += f" dropped {r['dropped_during_run']}"
            t.add_row(r["what"], _f(r["spans_per_s"], 0),
                      f"{r['delivered']:,} / {r['expected']:,} ({share:.1%}){extra}",
                      *(_late(r[f"p{q}_ms"], r["window_s"]) for q in (50, 90, 99)),
                      _f(r["max_ms"]), _f(r["server_cpu_us"], 0), _f(r["pg_cpu_us"], 0),
                      f"{_f(r['server_cores'], 2)} / {_f(r['pg_cores'], 2)}",
                      _f(r["load_avg"]),
                      f"p99 < {GOALS['sse_p99_ms']:.0f}" if r["key"] == "ours" else "",
                      met(r["p99_ms"] is not None and r["p99_ms"] < GOALS["sse_p99_ms"]
                          and share > 0.999) if r["key"] == "ours" else "")
        console.print(t)
        for r in rows:
            console.print(f"  {r['key']}: writer append() send->commit p50 "
                          f"{_f(r['append_p50_ms'], 2)} ms, p99 {_f(r['append_p99_ms'], 2)} ms; "
                          f"late batches {r['late_batches']}; NOTIFY p50/p99 "
                          f"{_f(r['notify_p50_ms'], 2)}/{_f(r['notify_p99_ms'], 2)} ms; client "
                          f"CPU {_f(r['client_cpu_us'], 0)} µs/event; duplicates "
                          f"{r['duplicates']}; server busy {r['busy_after_s']:.1f} s after")

    sql = results.get("sql")
    if results["timeline"]:
        t = table(f"GET timeline, limit 50, ledger at {p.get('rows_after', 0):,} rows: "
                  f"1 connection ({args.requests:,} sequential requests) and "
                  f"{args.concurrency} connections ({args.load_seconds:.0f} s)",
                  ["endpoint", "connections", "requests", "non-200", "req/s", "p50 ms",
                   "p95 ms", "p99 ms", "API CPU µs/req", "PG CPU µs/req", "goal", "met"],
                  ("endpoint",))
        if sql:
            for k, label in (("bare", "SQL only: bare SELECT as kernel (no HTTP)"),
                             ("rls", "SQL only: as /api/timeline runs it (app role, "
                                     "transaction, set_config, RLS view)")):
                s = sql[k]
                t.add_row(label, "1", f"{s['n']:,}", "", "", _f(s["p50_ms"], 2),
                          _f(s["p95_ms"], 2), _f(s["p99_ms"], 2), "", "", "", "")
        for r in results["timeline"]:
            for mode, conns in (("sequential", 1), ("concurrent", args.concurrency)):
                x = r[mode]
                ours = r["key"] == "ours" and mode == "sequential"
                t.add_row(r["what"] if mode == "sequential" else "", str(conns),
                          f"{x['requests']:,}", str(x["non_200"]) if x["non_200"] else "0",
                          _f(x["per_s"], 0), _f(x["p50_ms"], 2), _f(x["p95_ms"], 2),
                          _f(x["p99_ms"], 2), _f(x["server_cpu_us"], 0), _f(x["pg_cpu_us"], 0),
                          f"p95 < {GOALS['timeline_p95_ms']:.0f}" if ours else "",
                          met(x["p95_ms"] is not None and x["p95_ms"] < GOALS["timeline_p95_ms"]
                              and not x["non_200"]) if ours else "")
        console.print(t)
        if sql and args.plans:
            console.print("EXPLAIN ANALYZE of the RLS query (tenant-0):")
            console.print("\n".join("  " + line for line in sql["rls_plan"]), markup=False,
                          highlight=False)

    for name, prof in results["profiles"].items():
        t = table(f"py-spy of `logline serve` during the {name} load ({prof['samples']:,} "
                  "samples of the thread holding the GIL, at 200 Hz; not a measured run)",
                  ["own time by package", "share", "stage0 function (inclusive)", "share ",
                   "own time by function", "share  "],
                  ("own time by package", "stage0 function (inclusive)",
                   "own time by function"))
        cols = [prof["packages"][:10], prof["stage0"][:10], prof["own"][:10]]
        for k in range(max(len(c) for c in cols)):
            row: list[str] = []
            for c in cols:
                row += [c[k][0], f"{c[k][1]:.1%}"] if k < len(c) else ["", ""]
            t.add_row(*row)
        console.print(t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="preload 50,000, 6 s of SSE, 3 s of load: about 80 seconds")
    parser.add_argument("--preload", type=int,
                        help="ledger size for the timeline (default 1,000,000; quick 50,000)")
    parser.add_argument("--clients", type=int, default=100, help="concurrent SSE clients")
    parser.add_argument("--client-procs", type=int, default=2,
                        help="processes the SSE clients are spread over")
    parser.add_argument("--tenants", type=int, default=4, help="tenants (keys per tenant)")
    parser.add_argument("--rate", type=float, default=500, help="appended spans per second")
    parser.add_argument("--batch", type=int, default=10, help="spans per append (commit)")
    parser.add_argument("--duration", type=float,
                        help="seconds of appending per SSE run (default 20; quick 6)")
    parser.add_argument("--grace", type=float, default=2.0,
                        help="seconds to wait for deliveries after the last append")
    parser.add_argument("--requests", type=int,
                        help="sequential timeline requests (default 1,000; quick 300)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="connections for the timeline requests/s")
    parser.add_argument("--load-seconds", type=float,
                        help="seconds of concurrent timeline load (default 8; quick 3)")
    parser.add_argument("--only", choices=("timeline", "sse"),
                        help="measure only the timeline reads or only SSE")
    parser.add_argument("--plans", action="store_true", help="print the RLS query's plan")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, py-spy our server under both loads (not measured)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the database, its server and the temp dir")
    parser.add_argument("--floor-server", metavar="DSN", help=argparse.SUPPRESS)
    parser.add_argument("--app-dsn", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor_server:
        serve_floor(args.port, args.floor_server, args.app_dsn)
        return 0
    quick = args.quick
    args.preload = args.preload if args.preload is not None else (50_000 if quick
                                                                   else 1_000_000)
    args.duration = args.duration or (6.0 if quick else 20.0)
    args.requests = args.requests or (300 if quick else 1_000)
    args.load_seconds = args.load_seconds or (3.0 if quick else 8.0)

    return run_bench(Bench(args), args, lambda results: report(results, args))


if __name__ == "__main__":
    sys.exit(main())
