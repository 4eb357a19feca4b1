#!/usr/bin/env python
"""Ingest benchmark: signed spans through the real append path, next to the raw primitives.

    python tools/bench_ingest.py [--quick] [--spans N] [--preload 1000000] [--json FILE]

Starts its own embedded PostgreSQL in a temporary directory (or uses the server named by
LOGLINE_DATABASE_URL), creates a fresh database, migrates it, makes an operator key and seeds
the manifest, then measures, in one run:

* raw primitives: canonicalise + BLAKE3 + Ed25519 sign, Ed25519 verify, COPY into an
  identical table without triggers or indexes, one INSERT per commit into that table;
* stage0.ledger.store.append (normalise, chain, hash, sign, COPY through the append trigger) in
  batches and one span per commit, into a fresh ledger and into one preloaded to N spans;
* stage0.ledger.verify.verify with one job and with every core;
* stage0.ledger.store.head latency on random ids and the "all scheduled requests" queries;
* the peer (issue 13): eventsourcing's PostgresApplicationRecorder appending the same events
  (same drafts, payload and batching) in rounds alternating with LogLine's (`pip install -e
  ".[bench]"`; without it, or with --no-peer, the peer is left out).

It ends with issue 13's table: each path beside its primitive or the peer, the ratio, its goal
and a CPU ratio (client + server CPU per row: what load moves least). One span per commit and
the peer are measured in paired rounds, each beside the figure it is compared with.

Each figure is printed beside the primitive it is bounded by and beside its goal (issue 2,
item 9). Besides wall-clock rates it reports CPU time per span, of this process (with its
worker processes) and of the PostgreSQL backend serving it (read from /proc when the server
runs on this host): on a shared machine the CPU figures are the stable ones. A benchmark never
fails: it reports. docs/benchmarks.md holds a recorded run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import io
import json
import multiprocessing
import os
import platform
import pstats
import random
import re
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import blake3  # noqa: E402
import psycopg  # noqa: E402
import rfc8785  # noqa: E402
from nacl.signing import SigningKey, VerifyKey  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from stage0 import keys  # noqa: E402
from stage0.config import Home, row_dir  # noqa: E402
from stage0.ledger import db, migrate, seed, store, verify
from stage0.ledger.queries import SPAN_COLUMNS, q  # noqa: E402
from stage0.spans.canonical import (  # noqa: E402
    FIELDS,
    canonical_bytes,
    format_at,
    normalise,
    signing_view,
)
from stage0.spans.proofs import public_key_hex, seal  # noqa: E402

#: Issue 13: each path against its own primitive, measured in the same run.
RATIO_GOALS = {
    "batched": 0.85,      # batched append / COPY of signed rows through the append trigger
    "trigger": 0.6,       # COPY through the trigger / COPY into the indexed table, no trigger
    "per_commit": 0.7,    # one span per commit / one bare INSERT per commit
    "verify_1": 0.9,      # verify, 1 process / canonicalise + BLAKE3 + Ed25519 verify
    "verify_n": 0.9,      # verify, N processes / the same primitive on N processes
    "verify_scaling": 1.8,  # verify on 2 processes / verify on 1 (x)
    "peer": 1.0,          # LogLine / eventsourcing's recorder, same events, same batching
}
GOALS = {
    "batched_fresh": 15_000,    # spans/s
    "batched_large": 6_000,     # spans/s at 1M rows
    "per_commit": 2_000,        # spans/s, one span per commit
    "verify_per_core": 20_000,  # spans/s per core
    "verify_scaling": 0.8,      # all-core rate >= 80% of jobs x one-core rate ("near-linear")
    "head_p99_ms": 1.0,         # head lookup at 1M rows
}
PAIRED_ROUNDS = 5  # one span per commit: rounds, each beside a round of bare INSERT + commit
UPDATE_SHARE = 0.2  # share of appended spans that are the next version of an existing id
console = Console(width=150)

#: "All scheduled requests" read from the head projection first (a rewrite of list_spans that
#: the benchmark measures beside the current query; see docs/benchmarks.md).
HEADS_FIRST = ("SELECT " + ", ".join(f"r.{c}" for c in SPAN_COLUMNS.split(", ")) +
               ", r.position FROM ledger.span_heads h JOIN ledger.universal_registry r "
               "ON r.id = h.id AND r.seq = h.seq WHERE h.entity_type = %(entity_type)s "
               "AND h.status = %(status)s ORDER BY h.position DESC LIMIT %(limit)s")
COUNT_SCHEDULED = ("SELECT count(*) AS n FROM ledger.span_heads "
                   "WHERE entity_type = 'request' AND status = 'scheduled'")


# ---------------------------------------------------------------------------------------------
# The spans: deterministic, realistic mix (events, requests, executions, metrics)
# ---------------------------------------------------------------------------------------------

def span_id(run: str, i: int) -> str:
    digest = hashlib.blake2b(f"{run}:{i}".encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


def draft(run: str, i: int) -> dict[str, Any]:
    """Unsigned span number i (about 480 canonical bytes). One span in 1,000 is a scheduled
    request (the other requests are done), so "all scheduled requests" stays a small set."""
    kind = i % 20
    base: dict[str, Any] = {
        "id": span_id(run, i), "who": f"kernel:{i % 5}", "this": f"bench span {i}",
        "owner_id": f"user-{i % 97}", "tenant_id": f"tenant-{i % 7}", "visibility": "tenant",
        "trace_id": f"{i:032x}",
    }
    if kind < 2:
        base.update(entity_type="request", did="scheduled",
                    status="scheduled" if i % 1000 == 0 else "done",
                    parent_id=span_id(run, -(i % 50) - 1),
                    input={"args": [i, "x" * 16], "kw": {"retries": 3, "timeout_ms": 5000}},
                    metadata={"idempotency_key": f"{run}:{i}", "priority": i % 3})
    elif kind < 5:
        base.update(entity_type="execution", did="executed", status="complete",
                    duration_ms=i % 4000, parent_id=span_id(run, -(i % 50) - 1),
                    output={"result": {"ok": True, "rows": i % 100}, "stdout": "done " * 8},
                    metadata={"runtime_ms": i % 4000, "sandbox": "restricted"})
    elif kind < 6:
        base.update(entity_type="metric", did="measured", status="recorded",
                    output={"name": "exec_duration_ms", "value": i % 997, "unit": "ms"})
    else:
        base.update(entity_type="event", did="observed", status="ok",
                    related_to=[span_id(run, i - 1)],
                    input={"message": f"event {i} observed by the bench", "level": "info",
                           "tags": ["bench", f"shard-{i % 16}"]},
                    metadata={"source": "bench", "seq_hint": i})
    return base


class Workload:
    """Drafts for append(): mostly new ids, UPDATE_SHARE next versions of earlier ones (a
    status change, which append() chains with seq + 1 and prev_hash from the head)."""

    def __init__(self, run: str, start: int, rng: random.Random) -> None:
        self.run, self.i, self.rng = run, start, rng
        self.recent: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.ids: list[str] = []

    def next(self) -> dict[str, Any]:
        if self.recent and self.rng.random() < UPDATE_SHARE:
            update = dict(self.recent.popleft())
            update["status"] = {"scheduled": "done"}.get(update.get("status"), "superseded")
            update["did"] = "updated"
            return update
        span = draft(self.run, self.i)
        self.i += 1
        self.recent.append(span)
        self.ids.append(span["id"])
        return span

    def take(self, n: int) -> list[dict[str, Any]]:
        return [self.next() for _ in range(n)]


def signed_batch(seed_hex: str, run: str, start: int, n: int, first_ms: int
                 ) -> list[dict[str, Any]]:
    """n signed seq-0 spans, one millisecond apart from first_ms (Unix time): runs in worker
    processes during the preload."""
    key = SigningKey(bytes.fromhex(seed_hex))
    return [seal(normalise({**draft(run, i), "at": at_ms(first_ms + i - start)}), key)
            for i in range(start, start + n)]


def at_ms(ms: int) -> str:
    return format_at(datetime.fromtimestamp(ms / 1000, UTC))


def ms_ago(n: int) -> int:
    """A Unix time in ms such that n spans one ms apart end now."""
    return int(time.time() * 1000) - n


def jcs_fast(view: dict[str, Any]) -> bytes:
    """RFC 8785 for float-free values: what stage0's fast path emits (checked in the run)."""
    return json.dumps(view, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode()


def _noop(_: int) -> None:
    return None


#: Work for the all-cores primitive, set before the pool forks so no data is sent in the
#: timed part: (public key, [(signing view, signature)] per process).
_PARTS: tuple[bytes, list[list[tuple[dict[str, Any], bytes]]]] | None = None


def _verify_part(j: int) -> int:
    assert _PARTS is not None
    vk = VerifyKey(_PARTS[0])
    for view, sig in _PARTS[1][j]:
        vk.verify(blake3.blake3(jcs_fast(view)).digest(), sig)
    return len(_PARTS[1][j])


# ---------------------------------------------------------------------------------------------
# Measuring: wall clock, our CPU (with reaped worker processes), the backend's CPU
# ---------------------------------------------------------------------------------------------

def rate(n: float, seconds: float | None) -> float | None:
    if seconds is None:
        return None
    return n / seconds if seconds > 0 else float("inf")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def own_cpu() -> float:
    me, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def backend_cpu(pid: int | None) -> float | None:
    """CPU seconds of a PostgreSQL backend, when it runs on this host."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """`with Meter(conn) as m:` ... then m.wall, m.cpu (ours), m.server (backend or None)."""

    def __init__(self, *conns: psycopg.Connection, pids: tuple[int, ...] = ()) -> None:
        self.pids = list(pids)
        for conn in conns:
            self.pids.append(conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"])
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                conn.rollback()

    def _server_cpu(self) -> float | None:
        cpus = [backend_cpu(pid) for pid in self.pids]
        return None if not cpus or None in cpus else sum(c for c in cpus if c is not None)

    def __enter__(self) -> Meter:
        self._server = self._server_cpu()
        self._cpu, self._wall = own_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = own_cpu() - self._cpu
        end = self._server_cpu()
        self.server = end - self._server if end is not None and self._server is not None \
            else None

    def per(self, n: int) -> dict[str, Any]:
        """Rate and CPU microseconds per item."""
        return {"n": n, "seconds": round(self.wall, 3), "per_s": rate(n, self.wall),
                "client_cpu_us": self.cpu * 1e6 / n,
                "server_cpu_us": None if self.server is None else self.server * 1e6 / n}


@contextlib.contextmanager
def phase_times(acc: dict[str, float]) -> Iterator[None]:
    """Time append()'s phases by wrapping the module functions it calls: a large batch goes
    through _stream (heads query, then normalise, hash, sign and COPY span by span: this
    process signs while PostgreSQL inserts, so the two overlap and are timed together); a
    small one through _prepare_rows (normalise, hash, sign, as if its ids were new) and
    _insert_if_new (the INSERT, which commits: append() runs one statement in autocommit; it
    inserts nothing and returns the heads when an id exists, and then _prepare_rows and
    _insert_rows run again with those heads)."""
    names = ("_stream", "_prepare_rows", "_insert_if_new", "_insert_rows")
    originals = {name: getattr(store, name) for name in names}

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    for name, fn in originals.items():
        setattr(store, name, timed(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(store, name, fn)


def concurrently(conns: list[psycopg.Connection], work: Callable[[int, psycopg.Connection], None]
                 ) -> Meter:
    """Run work(k, conn) on one thread per connection; measured from start to last finish."""
    errors: list[BaseException] = []

    def run(k: int, conn: psycopg.Connection) -> None:
        try:
            work(k, conn)
        except BaseException as exc:  # surfaced below, after every thread ended
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k, c)) for k, c in enumerate(conns)]
    with Meter(*conns) as m:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return m


def copy_rows(conn: psycopg.Connection, table: str, spans: list[dict[str, Any]]) -> None:
    """The same COPY as store.insert, into another table."""
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(FIELDS)}) FROM STDIN") as cp:
        for span in spans:
            cp.write_row([store._copy_value(f, span[f]) for f in FIELDS])


# ---------------------------------------------------------------------------------------------
# Variants of the append trigger (--trigger-variants): what each part of ledger.on_append costs
# ---------------------------------------------------------------------------------------------

def _sub(pattern: str, repl: str, flags: int = re.S) -> Callable[[str], str | None]:
    def edit(body: str) -> str | None:
        out, n = re.subn(pattern, repl, body, count=1, flags=flags)
        return out if n else None
    return edit


def _minimal(body: str) -> str | None:
    """Only what a row needs to be stored: the function-call overhead of the trigger."""
    head, sep, rest = body.partition("AS $function$")
    if not sep:
        return None
    return (head + sep + " BEGIN NEW.position := nextval('ledger.position_seq'); "
            "NEW.chain_hash := repeat('0', 64); RETURN NEW; END $function$" +
            rest.split("$function$", 1)[1])


TRIGGER_VARIANTS: dict[str, Callable[[str], str | None]] = {
    "as migrated": lambda body: body,
    "without the advisory lock": _sub(r"\n\s*done := pg_advisory_xact_lock\([^;]*;", ""),
    "without SET search_path on the function (unsafe: costing only)":
        _sub(r"\n SET search_path TO [^\n]*", ""),
    "empty body (position + chain_hash only): the cost of calling a trigger": _minimal,
}


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

#: The peer's two write paths: label -> POSTGRES_ENABLE_DB_FUNCTIONS.
PEER_PATHS = {"db function": True, "pipelined, LOCK TABLE": False}


class PeerRecorder:
    """eventsourcing's PostgresApplicationRecorder in a database of its own. The same drafts
    as LogLine's (Workload, same seed), the same payload (each event's state is the draft's
    JSON), the same batching. insert() is what is timed: the JSON encoding, the StoredEvent
    objects and insert_events() (one transaction per call). Its caller must know each event's
    version (an aggregate in memory does): events() counts them before the clock starts,
    where LogLine's append reads the heads itself."""

    def __init__(self, server: db.Database, db_functions: bool, run: str, seed: int) -> None:
        from eventsourcing.persistence import StoredEvent
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
        from psycopg.conninfo import conninfo_to_dict

        self.server, self.stored_event = server, StoredEvent
        self.name = f"logline_bench_peer_{uuid.uuid4().hex[:8]}"
        with server.connect("admin", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        params = conninfo_to_dict(server.with_dbname(self.name).admin_url)
        self.datastore = PostgresDatastore(
            dbname=self.name, host=str(params.get("host") or ""),
            port=params.get("port") or 5432, user=str(params.get("user") or ""),
            password=str(params.get("password") or ""), pool_size=1,
            enable_db_functions=db_functions)
        self.recorder = PostgresApplicationRecorder(self.datastore)
        self.recorder.create_table()
        with self.datastore.get_connection() as conn:
            self.pid = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
        self.workload = Workload(f"{run}-peer-{int(db_functions)}", 0, random.Random(seed))
        self.versions: dict[str, int] = {}
        self.dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        self.sizes: list[int] = []
        self.insert(self.events(100))  # warm-up, as LogLine's
        self.sizes.clear()

    def events(self, n: int) -> list[tuple[dict[str, Any], int]]:
        out = []
        for d in self.workload.take(n):
            self.versions[d["id"]] = self.versions.get(d["id"], -1) + 1
            out.append((d, self.versions[d["id"]]))
        return out

    def insert(self, items: list[tuple[dict[str, Any], int]]) -> None:
        stored = []
        for d, v in items:
            state = self.dumps(d).encode()
            self.sizes.append(len(state))
            stored.append(self.stored_event(uuid.UUID(d["id"]), v,
                                            f"bench.{d['entity_type']}", state))
        self.recorder.insert_events(stored)

    def close(self) -> None:
        try:
            self.datastore.close()
        finally:
            with self.server.connect("admin", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Accumulated:
    """Meter figures summed over rounds."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.server = 0.0
        self.rates: list[float] = []

    def add(self, m: Meter, n: int) -> None:
        self.wall, self.cpu = self.wall + m.wall, self.cpu + m.cpu
        self.server += m.server or 0.0
        self.rates.append(rate(n, m.wall) or 0.0)

    def per(self, n: int) -> dict[str, Any]:
        return {"n": n, "seconds": round(self.wall, 3), "per_s": rate(n, self.wall),
                "client_cpu_us": self.cpu * 1e6 / n, "server_cpu_us": self.server * 1e6 / n,
                "round_rates": [round(r) for r in self.rates]}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.jobs = os.cpu_count() or 1
        self.rng = random.Random(args.seed)
        self.run = f"bench-{uuid.uuid4().hex[:8]}"
        self.next_i = 0
        self.known_ids: list[str] = []
        self.preload_range: tuple[int, int] | None = None
        self.results: dict[str, Any] = {"primitives": {}, "ingest": [], "verify": [],
                                        "lookups": [], "preload": None}
        self.tmp = Path(tempfile.mkdtemp(prefix="logline-bench-"))
        if os.geteuid() == 0:  # the embedded server runs as another user: let it traverse (only)
            self.tmp.chmod(0o711)
        self.home = Home(self.tmp / "home")
        self.external = bool(os.environ.get("LOGLINE_DATABASE_URL"))
        self.server: db.Database | None = None
        self.database: db.Database | None = None

    # --- setup / teardown ---------------------------------------------------------------------

    def setup(self) -> None:
        started = time.perf_counter()
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
        self.root = public_key_hex(self.key)
        with self.database.connect("kernel") as conn:
            seed.seed(conn, [row_dir()], self.key)
        with self.database.connect("admin", autocommit=True) as conn:
            settings = {s: conn.execute(f"SHOW {s}").fetchone()[s] for s in (
                "server_version", "fsync", "synchronous_commit", "shared_buffers",
                "wal_level", "max_wal_size")}
            self.raw_tables(conn)
        self.results["meta"] = {
            "command": "python tools/bench_ingest.py " + " ".join(sys.argv[1:]),
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cpus": self.jobs, "clients": self.args.clients,
            "python": platform.python_version(),
            "machine": platform.machine(), "load_avg_at_start": os.getloadavg(),
            "server": "LOGLINE_DATABASE_URL" if self.external else "embedded pgserver",
            "postgres": settings, "setup_seconds": round(time.perf_counter() - started, 2),
        }

    @staticmethod
    def raw_tables(conn: psycopg.Connection) -> None:
        """Tables for the DB baselines, in schema bench_raw. `bare`: the span columns with the
        ledger's types and nothing else (no trigger, index, CHECK or NOT NULL); `checked`: the
        ledger's columns and CHECK constraints; `indexed`: its columns, CHECKs and indexes but
        no append trigger, which isolates the trigger's cost.
        Columns the trigger fills get no value from COPY: position comes from an identity,
        derived columns (chain_hash) are left NULL."""
        cols = ", ".join(f'"{f}"' for f in FIELDS)
        conn.execute("CREATE SCHEMA bench_raw")
        conn.execute(f"CREATE TABLE bench_raw.bare AS SELECT position, {cols} "
                     "FROM ledger.universal_registry WITH NO DATA")
        conn.execute("CREATE TABLE bench_raw.checked "
                     "(LIKE ledger.universal_registry INCLUDING CONSTRAINTS)")
        conn.execute("CREATE TABLE bench_raw.indexed "
                     "(LIKE ledger.universal_registry INCLUDING ALL)")
        derived = [r["column_name"] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'ledger' "
            "AND table_name = 'universal_registry' AND is_nullable = 'NO'")
            if r["column_name"] not in FIELDS and r["column_name"] != "position"]
        for col in derived:
            for table in ("checked", "indexed"):
                conn.execute(f'ALTER TABLE bench_raw.{table} ALTER "{col}" DROP NOT NULL')
        conn.execute("ALTER TABLE bench_raw.bare ALTER position SET NOT NULL")
        for table in ("bare", "checked", "indexed"):
            conn.execute(f"ALTER TABLE bench_raw.{table} ALTER position "
                         "ADD GENERATED BY DEFAULT AS IDENTITY")

    def teardown(self) -> None:
        for peer in getattr(self, "peers", {}).values():
            with contextlib.suppress(Exception):
                peer.close()
        if self.args.keep:
            name = self.database.dbname if self.database else "?"
            console.print(f"[yellow]kept[/] database {name} and {self.tmp} (server running)")
            return
        release(self.server, [self.database.dbname if self.database else None],
                self.home, self.tmp, self.external)

    def connect(self, role: db.Role = "kernel", autocommit: bool = False) -> psycopg.Connection:
        assert self.database is not None
        return self.database.connect(role, autocommit=autocommit)

    def count(self) -> int:
        with self.connect("kernel", autocommit=True) as conn:
            return conn.execute("SELECT count(*) AS n FROM ledger.universal_registry"
                                ).fetchone()["n"]

    def fresh_signed(self, n: int) -> list[dict[str, Any]]:
        start, self.next_i = self.next_i, self.next_i + n
        return signed_batch(bytes(self.key).hex(), self.run, start, n, ms_ago(n))

    # --- raw primitives -----------------------------------------------------------------------

    def cpu_loop(self, name: str, n: int, loop: Callable[[], None]) -> None:
        with Meter() as m:
            loop()
        self.results["primitives"][name] = {"per_s": rate(n, m.wall),
                                            "per_cpu_s": rate(n, m.cpu)}

    def primitives(self) -> None:
        n = self.args.primitive_spans
        spans = self.fresh_signed(n)
        views = [signing_view(s) for s in spans]
        same = all(jcs_fast(v) == canonical_bytes(s) for v, s in zip(views, spans, strict=True))
        self.results["span_bytes_avg"] = statistics.mean(len(jcs_fast(v)) for v in views)
        assert same, "the baseline must canonicalise exactly like stage0"
        key, vk = self.key, self.key.verify_key
        pairs = [(bytes.fromhex(s["curr_hash"]), bytes.fromhex(s["signature"])) for s in spans]
        drafts = [{**draft(self.run, i), "at": spans[i]["at"]} for i in range(n)]

        def sign_jcs() -> None:
            for v in views:
                key.sign(blake3.blake3(jcs_fast(v)).digest())

        def sign_rfc8785() -> None:
            for v in views:
                key.sign(blake3.blake3(rfc8785.dumps(v)).digest())

        def sign_stage0() -> None:
            for d in drafts:
                seal(normalise(d), key)

        def verify_alone() -> None:
            for digest, sig in pairs:
                vk.verify(digest, sig)

        def verify_jcs() -> None:
            for v, (_, sig) in zip(views, pairs, strict=True):
                vk.verify(blake3.blake3(jcs_fast(v)).digest(), sig)

        self.cpu_loop("sign_jcs", n, sign_jcs)
        self.cpu_loop("sign_rfc8785", n, sign_rfc8785)
        self.cpu_loop("sign_stage0", n, sign_stage0)
        self.cpu_loop("ed25519_verify", n, verify_alone)
        self.cpu_loop("verify_jcs", n, verify_jcs)
        # All cores: the same loop split over `jobs` forked processes that already hold
        # their share, so only the work itself is timed.
        global _PARTS
        both = list(zip(views, (sig for _, sig in pairs), strict=True))
        _PARTS = (bytes(vk), [both[j::self.jobs] for j in range(self.jobs)])
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(self.jobs, mp_context=ctx) as pool:
            list(pool.map(_noop, range(self.jobs)))
            t = time.perf_counter()
            list(pool.map(_verify_part, range(self.jobs)))
            self.results["primitives"]["verify_jcs_all_cores"] = {
                "per_s": rate(n, time.perf_counter() - t), "per_cpu_s": None}
        _PARTS = None
        self.db_primitives(spans)

    def db_primitives(self, spans: list[dict[str, Any]]) -> None:
        prim, batch = self.results["primitives"], self.args.batch
        with self.connect("admin") as conn:
            for table, name in (("bench_raw.bare", "copy_bare"),
                                ("bench_raw.checked", "copy_checked"),
                                ("bench_raw.indexed", "copy_indexed_no_trigger")):
                with Meter(conn) as m:
                    for k in range(0, len(spans), batch):
                        with conn.transaction():
                            copy_rows(conn, table, spans[k:k + batch])
                prim[name] = m.per(len(spans))
        # The same rows through the real trigger (the DB side of append: already signed).
        with self.connect("kernel") as conn, Meter(conn) as m:
            for k in range(0, len(spans), batch):
                with conn.transaction():
                    store.insert(conn, spans[k:k + batch])
        prim["copy_ledger_trigger"] = m.per(len(spans))
        commits = self.args.commits
        cols = ", ".join('"this"' if f == "this" else f for f in FIELDS)
        sql = f"INSERT INTO bench_raw.bare ({cols}) VALUES ({', '.join(['%s'] * len(FIELDS))})"
        rows = [[store._copy_value(f, s[f]) for f in FIELDS]
                for s in (spans * (commits // len(spans) + 1))[:commits]]
        with self.connect("admin", autocommit=True) as conn, Meter(conn) as m:
            for row in rows:
                conn.execute(sql, row)
        prim["insert_per_commit"] = m.per(len(rows))
        self.bare_insert = (sql, rows)
        clients = self.args.clients
        conns = [self.connect("admin", autocommit=True) for _ in range(clients)]
        try:
            m = concurrently(conns, lambda k, conn: [conn.execute(sql, row)
                                                     for row in rows[k::clients]])
        finally:
            for client in conns:
                client.close()
        prim["insert_per_commit_clients"] = m.per(len(rows))

    # --- the real path ------------------------------------------------------------------------

    def ingest(self, label: str) -> None:
        size = self.count()
        w = Workload(self.run, self.next_i, self.rng)
        n, batch, commits = self.args.spans, self.args.batch, self.args.commits
        with self.connect("kernel") as conn:
            store.append(conn, w.take(100), self.key)  # warm-up: connection, plans
            # The drafts are made before the clock starts: making them is the benchmark's
            # work, not append()'s.
            batches = [w.take(min(batch, n - done)) for done in range(0, n, batch)]
            acc: dict[str, float] = {}
            # In rounds; into the fresh ledger each round is followed by the peer's round of
            # the same size (its per-round ratios are what a loaded machine moves least).
            peers = self.peers if label == "fresh" else {}
            peer_batch = peers.get("db function")
            ours, theirs = Accumulated(), Accumulated()
            rounds = min(PAIRED_ROUNDS, len(batches))
            for r in range(rounds):
                part = batches[r * len(batches) // rounds:(r + 1) * len(batches) // rounds]
                with phase_times(acc), Meter(conn) as m:
                    for drafts in part:
                        store.append(conn, drafts, self.key)
                ours.add(m, sum(map(len, part)))
                if peer_batch is not None:
                    items = [peer_batch.events(len(d)) for d in part]
                    with Meter(pids=(peer_batch.pid,)) as m:
                        for evs in items:
                            peer_batch.insert(evs)
                    theirs.add(m, sum(map(len, part)))
            self.record_ingest(label, "batched", size, ours.per(n), acc,
                               GOALS["batched_fresh" if label == "fresh" else "batched_large"])
            if peer_batch is not None:
                self.record_peer("batched", "db function", theirs.per(n))
                self.results["peer"]["paired_batched"] = statistics.median(
                    a / b for a, b in zip(ours.rates, theirs.rates, strict=True) if b)
            singles = w.take(commits)
            acc = {}
            # Latency-bound and so the figure a loaded machine moves most: measured in
            # PAIRED_ROUNDS rounds, each beside a round of the bare INSERT + commit on the same
            # server just before it; the per-round ratios' median is the ratio reported.
            sql, bare_rows = self.bare_insert
            rounds, wall, cpu, server, paired = PAIRED_ROUNDS, 0.0, 0.0, 0.0, []
            theirs_by = {k: Accumulated() for k in peers}
            bare_acc = Accumulated()
            with self.connect("admin", autocommit=True) as bare:
                for r in range(rounds):
                    part = singles[r * commits // rounds:(r + 1) * commits // rounds]
                    with Meter(bare) as mb:
                        for row in bare_rows[:len(part)]:
                            bare.execute(sql, row)
                    bare_acc.add(mb, len(part))
                    with phase_times(acc), Meter(conn) as m:
                        for one in part:
                            store.append(conn, [one], self.key)
                    wall, cpu = wall + m.wall, cpu + m.cpu
                    server += m.server or 0.0
                    paired.append((len(part) / m.wall, len(part) / mb.wall))
                    for k, peer in peers.items():
                        items = [peer.events(1) for _ in part]
                        with Meter(pids=(peer.pid,)) as mp:
                            for evs in items:
                                peer.insert(evs)
                        theirs_by[k].add(mp, len(part))
            figures = {"n": commits, "seconds": round(wall, 3), "per_s": rate(commits, wall),
                       "client_cpu_us": cpu * 1e6 / commits,
                       "server_cpu_us": server * 1e6 / commits,
                       "paired_rounds": [(round(a), round(b)) for a, b in paired],
                       "paired_bare": bare_acc.per(commits),
                       "paired_ratio": statistics.median(a / b for a, b in paired)}
            self.record_ingest(label, "per_commit", size, figures, acc, GOALS["per_commit"])
            for k, acc_peer in theirs_by.items():
                self.record_peer("per_commit", k, acc_peer.per(commits))
            if theirs_by:
                best = max(theirs_by.values(), key=lambda a: rate(commits, a.wall) or 0.0)
                self.results["peer"]["paired_per_commit"] = statistics.median(
                    a / b for (a, _), b in zip(paired, best.rates, strict=True) if b)
            # Concurrent appenders: batches from one client per core (signing of one batch
            # can overlap the COPY of another), and single spans from --clients clients.
            for clients, per_client, size_of in ((self.jobs, n // self.jobs, batch),
                                                 (self.args.clients,
                                                  commits // self.args.clients, 1)):
                loads = [Workload(f"{self.run}-{label}-{size_of}-c{k}", 0, random.Random(k))
                         for k in range(clients)]
                conns = [self.connect("kernel") for _ in range(clients)]

                work_of = [[load.take(min(size_of, per_client - done))
                            for done in range(0, per_client, size_of)] for load in loads]

                def work(k: int, conn: psycopg.Connection,
                         work_of: list[list[list[dict[str, Any]]]] = work_of) -> None:
                    for drafts in work_of[k]:
                        store.append(conn, drafts, self.key)

                try:
                    m = concurrently(conns, work)
                finally:
                    for client in conns:
                        client.close()
                mode = "batched" if size_of > 1 else "per_commit"
                goal = GOALS[mode if mode == "per_commit" else
                             "batched_fresh" if label == "fresh" else "batched_large"]
                self.record_ingest(label, f"{mode}, {clients} clients", size,
                                   m.per(per_client * clients), {}, goal)
            if self.args.profile and label == "fresh":
                # Profiled apart: cProfile slows Python down, so never in a measured figure.
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(5):
                    store.append(conn, w.take(batch), self.key)
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
                self.results["profile_fresh_batched"] = out.getvalue()
        self.next_i = w.i
        self.known_ids += w.ids

    def record_ingest(self, label: str, mode: str, size: int, figures: dict[str, Any],
                      acc: dict[str, float], goal: float) -> None:
        phases = {"stream_s": acc.get("_stream", 0.0), "prepare_s": acc.get("_prepare_rows", 0.0),
                  "insert_s": acc.get("_insert_if_new", 0.0) + acc.get("_insert_rows", 0.0)}
        self.results["ingest"].append({
            "ledger": label, "mode": mode,
            "batch": self.args.batch if mode.startswith("batched") else 1,
            "phases_timed": bool(acc), "rows_before": size, **figures,
            **{k: round(v, 3) for k, v in phases.items()},
            "other_s": round(figures["seconds"] - sum(phases.values()), 3), "goal": goal,
        })

    def preload(self, target: int) -> None:
        have = self.count()
        todo = max(0, target - have)
        batch, seed_hex = self.args.preload_batch, bytes(self.key).hex()
        first_ms = ms_ago(todo)
        start = self.next_i
        self.next_i += todo
        self.preload_range = (start, start + todo)
        copy_seconds = 0.0
        # Workers sign; this process COPYs. One core is left to the backend running the trigger.
        workers = max(1, self.jobs - 1)
        with self.connect("kernel") as conn, ProcessPoolExecutor(workers) as pool, \
                Meter(conn) as m:
            pending: deque = deque()
            for offset in range(start, start + todo, batch):
                n = min(batch, start + todo - offset)
                pending.append(pool.submit(signed_batch, seed_hex, self.run, offset, n,
                                           first_ms + offset - start))
                while len(pending) >= 2 * workers or (pending and offset + n >= start + todo):
                    spans = pending.popleft().result()
                    t = time.perf_counter()
                    with conn.transaction():
                        store.insert(conn, spans)
                    copy_seconds += time.perf_counter() - t
        t = time.perf_counter()
        with self.connect("admin", autocommit=True) as conn:
            conn.execute("ANALYZE ledger.universal_registry")
            conn.execute("ANALYZE ledger.span_heads")
        self.results["preload"] = {
            "target": target, "rows_before": have, **m.per(max(todo, 1)), "spans": todo,
            "copy_seconds": round(copy_seconds, 1), "batch": batch, "workers": workers,
            "analyze_seconds": round(time.perf_counter() - t, 1), "rows_after": self.count(),
        }

    # --- the peer -----------------------------------------------------------------------------

    def setup_peer(self) -> None:
        """eventsourcing's PostgresApplicationRecorder (psycopg 3) on the same server, in
        databases of its own, measured inside ingest("fresh") in rounds alternating with
        LogLine's (see PeerRecorder)."""
        self.peers: dict[str, PeerRecorder] = {}
        if self.args.no_peer:
            self.results["peer"] = {"skipped": "--no-peer"}
            return
        try:
            import eventsourcing.postgres  # noqa: F401
        except ImportError:
            self.results["peer"] = {"skipped": "eventsourcing is not installed: "
                                    "pip install -e '.[bench]'"}
            return
        assert self.server is not None
        # Two ways the recorder writes: its default (a pipelined transaction: LOCK TABLE ...
        # EXCLUSIVE, NOTIFY, INSERT ... RETURNING) and POSTGRES_ENABLE_DB_FUNCTIONS (one
        # statement calling its PL/pgSQL function: NOTIFY and INSERT, no table lock). The
        # default path deadlocks in psycopg's pipeline mode on a 1,000-event batch (~450 KB
        # of parameters: both sides wait, the server in ClientRead), so batches use the
        # function; single events are measured both ways.
        for label, db_functions in PEER_PATHS.items():
            self.peers[label] = PeerRecorder(self.server, db_functions, self.run, self.args.seed)
        from importlib.metadata import version as _version
        self.results["peer"] = {"system": "eventsourcing", "version": _version("eventsourcing"),
                                "recorder": "PostgresApplicationRecorder",
                                "batch": self.args.batch}

    def record_peer(self, mode: str, label: str, figures: dict[str, Any]) -> None:
        peer = self.results["peer"]
        peer.setdefault(label, {})[mode] = figures
        peer["state_bytes_avg"] = statistics.mean(
            b for p in self.peers.values() for b in p.sizes) if any(
            p.sizes for p in self.peers.values()) else None
        # The ratios compare LogLine with the peer's faster path of each mode.
        best = max((peer[k][mode] for k in PEER_PATHS if mode in peer.get(k, {})),
                   key=lambda f: f["per_s"])
        peer[mode] = best

    # --- verify -------------------------------------------------------------------------------

    def verify(self, label: str) -> None:
        for jobs in sorted({1, self.jobs}):
            with self.connect("kernel") as conn:
                with Meter(conn) as m:
                    report = verify.verify(conn, self.root, jobs=jobs)
            self.results["verify"].append({
                "ledger": label, "jobs": jobs, **m.per(report.spans), "spans": report.spans,
                "per_core": rate(report.spans, report.seconds) / jobs, "ok": report.ok,
                "failures": len(report.failures),
            })

    # --- lookups ------------------------------------------------------------------------------

    def lookups(self, label: str) -> None:
        size = self.count()
        n = self.args.lookups
        if self.preload_range and self.preload_range[1] > self.preload_range[0] \
                and label != "fresh":
            lo, hi = self.preload_range
            sample = [span_id(self.run, self.rng.randrange(lo, hi)) for _ in range(n)]
        else:
            sample = [self.rng.choice(self.known_ids) for _ in range(n)]
        scheduled = {"entity_type": "request", "status": "scheduled", "tenant_id": None,
                     "limit": 100}
        with self.connect("kernel", autocommit=True) as conn:
            self.lookup(label, size, "SELECT 1 (round trip)", conn,
                        lambda: conn.execute("SELECT 1").fetchone(), n)
            heads = iter(sample * 2)

            def head() -> None:
                assert store.head(conn, next(heads)) is not None

            self.lookup(label, size, "ledger.head(random id)", conn, head, n,
                        goal=GOALS["head_p99_ms"])
            self.lookup(label, size, "scheduled requests, newest 100: list_spans (current)", conn,
                        lambda: conn.execute(q("list_spans"), scheduled).fetchall(), 50)
            self.lookup(label, size, "the same from span_heads first (proposed rewrite)", conn,
                        lambda: conn.execute(HEADS_FIRST, scheduled).fetchall(), 50)
            self.lookup(label, size, "count all scheduled requests (span_heads)", conn,
                        lambda: conn.execute(COUNT_SCHEDULED).fetchone(), 50)
            self.lookup(label, size, "verify's head-consistency query (heads_inconsistent)",
                        conn, lambda: conn.execute(q("heads_inconsistent")).fetchall(), 1,
                        warm=0)
            explain = (q("list_spans").replace("%(entity_type)s", "'request'")
                       .replace("%(status)s", "'scheduled'").replace("%(tenant_id)s", "NULL")
                       .replace("%(limit)s", "100"))
            plan = [r["QUERY PLAN"] for r in conn.execute("EXPLAIN " + explain)]
            self.results.setdefault("plans", {})[f"list_spans at {size:,}"] = plan

    def lookup(self, label: str, size: int, what: str, conn: psycopg.Connection,
               fn: Callable[[], Any], n: int, goal: float | None = None, warm: int = 20) -> None:
        """n timed calls after `warm` untimed ones (psycopg prepares a statement after 5)."""
        rows = None
        for _ in range(warm):
            rows = fn()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            rows = fn()
            times.append((time.perf_counter() - t) * 1000)
        returned = len(rows) if isinstance(rows, list) else 1
        if isinstance(rows, dict) and "n" in rows:
            returned = rows["n"]
        self.results["lookups"].append({
            "ledger": label, "query": what, "rows_in_ledger": size, "rows_returned": returned,
            "n": n, "p50_ms": statistics.median(times), "p99_ms": pct(times, 99),
            "goal_p99_ms": goal,
        })

    # --- trigger variants ---------------------------------------------------------------------

    def trigger_variants(self) -> None:
        """COPY signed rows through edited copies of ledger.on_append (at the final ledger
        size), two rounds each, best of two; the migrated function is restored afterwards."""
        n, batch = self.args.variant_spans, self.args.batch
        with self.connect("admin", autocommit=True) as admin:
            original = admin.execute("SELECT pg_get_functiondef('ledger.on_append'::regproc) "
                                     "AS d").fetchone()["d"]
            out: dict[str, dict[str, Any]] = {}
            try:
                for _round in range(2):
                    for name, edit in TRIGGER_VARIANTS.items():
                        body = edit(original)
                        if body is None:
                            out[name] = {"skipped": "pattern not found: the trigger changed"}
                            continue
                        spans = self.fresh_signed(n)
                        try:
                            admin.execute(body)
                            with self.connect("kernel") as conn, Meter(conn) as m:
                                for k in range(0, n, batch):
                                    with conn.transaction():
                                        store.insert(conn, spans[k:k + batch])
                        except Exception as exc:  # a variant that fails is reported
                            out[name] = {"skipped": f"{type(exc).__name__}: {exc}"[:200]}
                            continue
                        finally:
                            admin.execute(original)
                        figures = m.per(n)
                        best = out.get(name)
                        if best is None or "skipped" in best or \
                                (figures["server_cpu_us"] or 0) < (best["server_cpu_us"] or 0):
                            out[name] = figures
            finally:
                admin.execute(original)
        self.results["trigger_variants"] = {"rows_in_ledger": self.count(), "spans": n,
                                            "variants": out}

    # --- the whole run ------------------------------------------------------------------------

    def run_all(self) -> None:
        large = f"{self.args.preload:,}"
        steps: list[tuple[str, Callable[[], None]]] = [
            ("raw primitives", self.primitives),
            ("the peer: eventsourcing's PostgreSQL recorder", self.setup_peer),
            ("ingest into a fresh ledger (beside the peer)", lambda: self.ingest("fresh")),
            ("lookups at fresh size", lambda: self.lookups("fresh")),
        ]
        if self.args.verify_at in ("fresh", "both"):
            steps.append(("verify at fresh size", lambda: self.verify("fresh")))
        steps += [
            (f"preload to {large} spans", lambda: self.preload(self.args.preload)),
            (f"ingest at {large}", lambda: self.ingest("large")),
            (f"lookups at {large}", lambda: self.lookups("large")),
        ]
        if self.args.verify_at in ("large", "both"):
            steps.append((f"verify at {large}", lambda: self.verify("large")))
        if self.args.trigger_variants:
            steps.append(("trigger variants", self.trigger_variants))
        for name, step in steps:
            t = time.perf_counter()
            with console.status(f"{name} ..."):
                step()
            console.log(f"{name}: {time.perf_counter() - t:.1f} s "
                        f"(load average {os.getloadavg()[0]:.1f})")


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def us(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def release(server: db.Database | None, dbnames: list[str | None], home: Home, tmp: Path,
            external: bool) -> None:
    """Drop a benchmark's databases; stop the embedded server (unless the server is someone
    else's, via LOGLINE_DATABASE_URL) and remove its directory. Shared by tools/bench_*.py."""
    try:
        if server is not None:
            with server.connect("admin", autocommit=True) as conn:
                for name in filter(None, dbnames):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        if not external:
            db.stop_embedded(home)
        shutil.rmtree(tmp, ignore_errors=True)


def met(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]NO[/]"


def table(title: str, columns: list[str], left: tuple[str, ...] = ()) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="left" if c in left else "right")
    return t


def ratio_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 13's ratios: (path, LogLine figure, its primitive or peer, ratio, goal)."""
    prim, meta, rows = results["primitives"], results["meta"], []

    def add(path: str, ours: float | None, what: str, theirs: float | None, goal: float,
            key: str, cpu: tuple[float | None, float | None] = (None, None),
            ratio: float | None = None) -> None:
        """cpu: CPU µs per row, ours and theirs (client + server): their ratio is the work
        ratio, which a loaded machine moves far less than the wall-clock one."""
        if ratio is None:
            ratio = ours / theirs if ours is not None and theirs else None
        cpu_ratio = cpu[1] / cpu[0] if cpu[0] and cpu[1] else None
        rows.append({"key": key, "path": path, "logline": ours, "primitive": what,
                     "primitive_per_s": theirs, "ratio": ratio, "goal": goal,
                     "cpu_ratio": cpu_ratio, "met": ratio is not None and ratio >= goal})

    def work(r: dict[str, Any] | None) -> float | None:
        if r is None or r.get("client_cpu_us") is None:
            return None
        return float(r["client_cpu_us"]) + float(r.get("server_cpu_us") or 0.0)

    def ingest(ledger: str, mode: str) -> dict[str, Any] | None:
        return next((r for r in results["ingest"] if r["ledger"] == ledger
                     and r["mode"] == mode), None)

    trigger = prim["copy_ledger_trigger"]["per_s"]
    for ledger in ("fresh", "large"):
        rows_before = ingest(ledger, "batched")
        if rows_before is None:
            continue
        size = f"{rows_before['rows_before']:,} rows"
        add(f"batched ingest ({rows_before['batch']:,} a batch), {ledger} ({size})",
            rows_before["per_s"], "COPY of signed rows through the append trigger", trigger,
            RATIO_GOALS["batched"], f"batched_{ledger}",
            (work(rows_before), work(prim["copy_ledger_trigger"])))
    add("the append trigger (COPY of signed rows through it)", trigger,
        "COPY into the same table with its CHECKs and indexes, no trigger",
        prim["copy_indexed_no_trigger"]["per_s"], RATIO_GOALS["trigger"], "trigger",
        (work(prim["copy_ledger_trigger"]), work(prim["copy_indexed_no_trigger"])))
    for ledger in ("fresh", "large"):
        r = ingest(ledger, "per_commit")
        if r is not None:
            add(f"one span per commit, {ledger} ({r['rows_before']:,} rows; ratio: median of "
                f"{len(r.get('paired_rounds') or [])} paired rounds)", r["per_s"],
                "one bare INSERT per commit (rounds beside ours)",
                statistics.median(b for _, b in r["paired_rounds"]) if r.get("paired_rounds")
                else prim["insert_per_commit"]["per_s"],
                RATIO_GOALS["per_commit"], f"per_commit_{ledger}",
                (work(r), work(r.get("paired_bare") or prim["insert_per_commit"])),
                r.get("paired_ratio"))
    for v in results["verify"]:
        size = f"{v['spans']:,} spans"
        if v["jobs"] == 1:
            per_cpu = prim["verify_jcs"]["per_cpu_s"]
            add(f"verify, 1 process ({size})", v["per_s"],
                "canonicalise + BLAKE3 + Ed25519 verify, 1 process",
                prim["verify_jcs"]["per_s"], RATIO_GOALS["verify_1"], f"verify_1_{v['ledger']}",
                (work(v), 1e6 / per_cpu if per_cpu else None))
        else:
            add(f"verify, {v['jobs']} processes ({size})", v["per_s"],
                f"the same primitive on {meta['cpus']} processes",
                prim["verify_jcs_all_cores"]["per_s"], RATIO_GOALS["verify_n"],
                f"verify_n_{v['ledger']}")
            one = next((o for o in results["verify"] if o["jobs"] == 1
                        and o["ledger"] == v["ledger"]), None)
            if one is not None:
                add(f"verify, {v['jobs']} processes against 1 (scaling, x)", v["per_s"],
                    "verify, 1 process, same ledger", one["per_s"],
                    RATIO_GOALS["verify_scaling"] * v["jobs"] / 2,
                    f"verify_scaling_{v['ledger']}")
    peer = results.get("peer") or {}
    if "batched" in peer:
        for mode, label in (("batched", f"batched ({peer['batch']:,} a batch)"),
                            ("per_commit", "one event per commit")):
            r = ingest("fresh", mode)
            if r is not None:
                paired = peer.get(f"paired_{mode}")
                add(f"LogLine against the peer, {label}, fresh (ratio: median of paired "
                    "rounds)", r["per_s"],
                    f"eventsourcing {peer['version']} {peer['recorder']}, same events",
                    peer[mode]["per_s"], RATIO_GOALS["peer"], f"peer_{mode}",
                    (work(r), work(peer[mode])), paired)
    return rows


#: What one row costs each side (the peer table beside the ratios).
PER_ROW = [
    ("what the caller hands over", "a draft span (dict): no seq, no hash, no signature",
     "an event's JSON state, its originator id and the version the caller counted"),
    ("validation", "normalise: field types, UUIDs, timestamps, JSON walk (no floats NaN, "
     "no lone surrogates), sizes", "none"),
    ("versioning", "reads the id's head (seq, curr_hash) in the same statement, chains "
     "seq + 1 and prev_hash; the trigger re-checks seq, prev_hash, owner, tenant and kind "
     "under the append lock", "primary key (originator_id, originator_version) refuses a "
     "duplicate version"),
    ("integrity", "RFC 8785 canonical JSON + BLAKE3 + Ed25519 signature per row; a "
     "ledger-wide SHA-256 chain hash per row", "none"),
    ("ordering", "position from a sequence under a transaction-scoped advisory lock "
     "(commit order)", "notification_id from a sequence; commit order only on the default "
     "path (LOCK TABLE ... EXCLUSIVE), not through its db function"),
    ("row stored", "30 columns, CHECK constraints, 12 indexes (2 GIN)",
     "4 columns (+ notification_id), 2 indexes"),
    ("after the statement", "head projection upsert, one NOTIFY per row, chain tip, "
     "execution and token counters", "one NOTIFY per transaction, RETURNING ids"),
]


def report_ratios(results: dict[str, Any]) -> None:
    rows = ratio_rows(results)
    results["ratios"] = rows
    t = table("Issue 13: each path against its primitive or peer, same run",
              ["path", "LogLine /s", "primitive or peer (same run)", "its /s", "ratio", "goal",
               "met", "CPU ratio"], ("path", "primitive or peer (same run)"))
    for r in rows:
        t.add_row(r["path"], fmt(r["logline"]), r["primitive"], fmt(r["primitive_per_s"]),
                  "-" if r["ratio"] is None else f"{r['ratio']:.2f}", f">= {r['goal']:.2f}",
                  met(r["met"]), "-" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.2f}")
    console.print("CPU ratio: the primitive's (or peer's) CPU µs per row over ours, client + "
                  "server (the work ratio: a loaded machine moves it far less than the wall "
                  "clock). Load average now " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    console.print(t)
    peer = results.get("peer") or {}
    if "skipped" in peer:
        console.print(f"peer: skipped ({peer['skipped']})")
    elif peer:
        t = table(f"What each side does per row (LogLine spans: {results['span_bytes_avg']:.0f} "
                  f"canonical bytes; the peer's events: {peer['state_bytes_avg']:.0f} bytes of "
                  "state)", ["", "LogLine append", f"eventsourcing {peer['version']} "
                  f"{peer['recorder']}"], ("", "LogLine append",
                                           f"eventsourcing {peer['version']} "
                                           f"{peer['recorder']}"))
        for row in PER_ROW:
            t.add_row(*row)
        lo = {r["mode"]: r for r in results["ingest"] if r["ledger"] == "fresh"}
        for path in ("db function", "pipelined, LOCK TABLE"):
            for mode, p in peer.get(path, {}).items():
                ours = lo.get(mode)
                t.add_row(f"{mode}, the peer's {path}: rows/s; CPU µs/row client / server",
                          "" if ours is None else f"{fmt(ours['per_s'])}/s; "
                          f"{us(ours['client_cpu_us'])} / {us(ours['server_cpu_us'])}",
                          f"{fmt(p['per_s'])}/s; {us(p['client_cpu_us'])} / "
                          f"{us(p['server_cpu_us'])}")
        console.print(t)


def report(results: dict[str, Any]) -> None:
    prim, meta = results["primitives"], results["meta"]
    pg = meta["postgres"]
    console.print(f"\n[bold]LogLine ingest benchmark[/]  {meta['date']}  {meta['cpus']} cores, "
                  f"load average at start {meta['load_avg_at_start'][0]:.1f}, Python "
                  f"{meta['python']}, PostgreSQL {pg['server_version']} ({meta['server']}; "
                  f"fsync={pg['fsync']}, synchronous_commit={pg['synchronous_commit']}, "
                  f"shared_buffers={pg['shared_buffers']})")

    t = table("Raw primitives, same run (the ceilings)",
              ["primitive", "per s (wall)", "per CPU-second", "server CPU µs/row"],
              ("primitive",))
    for label, k in (
        ("canonicalise (json fast path) + BLAKE3 + Ed25519 sign", "sign_jcs"),
        ("canonicalise (rfc8785 package) + BLAKE3 + Ed25519 sign", "sign_rfc8785"),
        ("stage0 normalise + seal (what append does per span)", "sign_stage0"),
        ("Ed25519 verify alone", "ed25519_verify"),
        ("canonicalise + BLAKE3 + Ed25519 verify", "verify_jcs"),
        (f"canonicalise + BLAKE3 + Ed25519 verify, {meta['cpus']} processes",
         "verify_jcs_all_cores"),
    ):
        t.add_row(label, fmt(prim[k]["per_s"]), fmt(prim[k]["per_cpu_s"]), "")
    for label, k in (
        ("COPY into identical table, no trigger, no index (rows)", "copy_bare"),
        ("COPY into identical table with the ledger's CHECKs, no index (rows)",
         "copy_checked"),
        ("COPY into identical table with the ledger's CHECKs and indexes (rows)",
         "copy_indexed_no_trigger"),
        ("COPY of signed rows into the ledger: trigger + indexes (rows)",
         "copy_ledger_trigger"),
        ("one INSERT per commit into the bare table (commits)", "insert_per_commit"),
        (f"the same from {meta['clients']} concurrent clients (commits)",
         "insert_per_commit_clients"),
    ):
        p = prim[k]
        t.add_row(label, fmt(p["per_s"]), fmt(rate(1e6, p["client_cpu_us"] + (
            p["server_cpu_us"] or 0))), us(p["server_cpu_us"]))
    console.print(t)

    if results["preload"]:
        p = results["preload"]
        console.print(f"preload: {p['spans']:,} signed spans (signed on {p['workers']} worker "
                      f"process(es), COPY through the append trigger in batches of "
                      f"{p['batch']:,}) in {p['seconds']:.1f} s = {fmt(p['per_s'])} spans/s; "
                      f"COPY {p['copy_seconds']:.1f} s, backend CPU {us(p['server_cpu_us'])} "
                      f"µs/span; ANALYZE {p['analyze_seconds']:.1f} s; ledger now "
                      f"{p['rows_after']:,} rows\n")

    t = table("Ingest through stage0.ledger.store.append (normalise, chain, hash, sign, COPY, "
              "commit)",
              ["ledger", "mode", "rows before", "spans", "spans/s", "CPU µs/span ours / server",
               "wall s: stream / rest, or prepare / insert / rest", "bounded by (same run)",
               "goal", "met"],
              ("ledger", "mode", "bounded by (same run)"))
    for r in results["ingest"]:
        if r["mode"].startswith("batched"):
            bound = (f"sign {fmt(prim['sign_jcs']['per_s'])}/s/core; COPY bare "
                     f"{fmt(prim['copy_bare']['per_s'])}/s, through trigger "
                     f"{fmt(prim['copy_ledger_trigger']['per_s'])}/s")
        elif "clients" in r["mode"]:
            bound = (f"INSERT+commit, {meta['clients']} clients "
                     f"{fmt(prim['insert_per_commit_clients']['per_s'])}/s")
        else:
            bound = f"INSERT+commit {fmt(prim['insert_per_commit']['per_s'])}/s"
        phases = ""
        if r.get("phases_timed"):
            phases = (f"{r['stream_s']:.1f} / {r['other_s']:.1f}" if r["stream_s"] else
                      f"{r['prepare_s']:.1f} / {r['insert_s']:.1f} / {r['other_s']:.1f}")
        mode = r["mode"].replace("batched", f"batched ({r['batch']})")
        t.add_row(r["ledger"], mode, f"{r['rows_before']:,}", f"{r['n']:,}", fmt(r["per_s"]),
                  f"{us(r['client_cpu_us'])} / {us(r['server_cpu_us'])}", phases,
                  bound, f">= {fmt(r['goal'])}", met(r["per_s"] >= r["goal"]))
    console.print(t)

    t = table("verify (hash, signature, trust, version chain, ledger chain, heads), whole ledger",
              ["ledger", "jobs", "spans", "seconds", "spans/s", "per core",
               "CPU µs/span ours / server", "bounded by (same run)", "goal", "met"],
              ("ledger", "bounded by (same run)"))
    one = next((v for v in results["verify"] if v["jobs"] == 1), None)
    for v in results["verify"]:
        if v["jobs"] == 1:
            bound = (f"canon+BLAKE3+verify {fmt(prim['verify_jcs']['per_s'])}/s/core "
                     f"(verify alone {fmt(prim['ed25519_verify']['per_s'])})")
            goal = f">= {fmt(GOALS['verify_per_core'])}/core"
            ok = v["per_core"] >= GOALS["verify_per_core"]
        else:
            scale = v["per_s"] / (one["per_s"] * v["jobs"]) if one else 0.0
            v["scaling"] = scale
            bound = (f"canon+BLAKE3+verify on {v['jobs']} processes "
                     f"{fmt(prim['verify_jcs_all_cores']['per_s'])}/s")
            goal = f">= {fmt(GOALS['verify_per_core'])}/core, scaling {scale:.0%}"
            ok = v["per_core"] >= GOALS["verify_per_core"] and scale >= GOALS["verify_scaling"]
        t.add_row(v["ledger"], str(v["jobs"]), f"{v['spans']:,}", f"{v['seconds']:.1f}",
                  fmt(v["per_s"]), fmt(v["per_core"]),
                  f"{us(v['client_cpu_us'])} / {us(v['server_cpu_us'])}", bound, goal,
                  met(ok and v["ok"]) + ("" if v["ok"] else f" ({v['failures']} FAILURES)"))
    console.print(t)

    t = table("Lookups (kernel role, autocommit, statements prepared after 5 uses)",
              ["ledger rows", "query", "rows returned", "p50 ms", "p99 ms", "goal", "met"],
              ("query",))
    for r in results["lookups"]:
        goal = f"p99 < {r['goal_p99_ms']} ms" if r["goal_p99_ms"] else ""
        ok = met(r["p99_ms"] < r["goal_p99_ms"]) if r["goal_p99_ms"] else ""
        t.add_row(f"{r['rows_in_ledger']:,}", r["query"], f"{r['rows_returned']:,}",
                  f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", goal, ok)
    console.print(t)
    if "trigger_variants" in results:
        tv = results["trigger_variants"]
        t = table(f"Append trigger variants: COPY of {tv['spans']:,} signed rows at "
                  f"{tv['rows_in_ledger']:,} rows (best of 2; variants are for costing only)",
                  ["ledger.on_append", "rows/s", "backend CPU µs/row", "vs as migrated"],
                  ("ledger.on_append",))
        base = (tv["variants"].get("as migrated") or {}).get("server_cpu_us")
        for name, v in tv["variants"].items():
            if "skipped" in v:
                t.add_row(name, "-", "-", v["skipped"])
                continue
            cpu = v["server_cpu_us"]
            delta = f"{cpu - base:+,.0f} µs" if cpu is not None and base is not None else ""
            t.add_row(name, fmt(v["per_s"]), us(cpu), delta)
        console.print(t)
    if "profile_fresh_batched" in results:
        console.print("[bold]cProfile of 5 more batches of append (fresh), by own time[/]")
        console.print(results["profile_fresh_batched"], markup=False, highlight=False)
    report_ratios(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (preload 100,000) to try the script in a minute")
    parser.add_argument("--spans", type=int, help="spans per batched ingest measurement "
                        "(default 20,000; quick 10,000)")
    parser.add_argument("--batch", type=int, default=1000, help="spans per append() batch")
    parser.add_argument("--commits", type=int, help="spans for the one-per-commit measurement "
                        "(default 1,000; quick 500)")
    parser.add_argument("--preload", type=int, help="ledger size for the 'large' measurements "
                        "(default 1,000,000; quick 100,000)")
    parser.add_argument("--preload-batch", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4,
                        help="concurrent connections for the concurrent one-per-commit figures")
    parser.add_argument("--primitive-spans", type=int, help="spans per primitive loop "
                        "(default 10,000; quick 5,000)")
    parser.add_argument("--lookups", type=int, default=2000, help="random head lookups")
    parser.add_argument("--verify-at", choices=("fresh", "large", "both"), default="fresh",
                        help="verify the ledger after the fresh ingest (default; the rate is "
                        "per span), after the preload (slow at 1M rows), or both")
    parser.add_argument("--trigger-variants", action="store_true",
                        help="at the end, cost the parts of the append trigger by COPYing "
                        "through edited copies of it (the benchmark database only)")
    parser.add_argument("--variant-spans", type=int, default=4000,
                        help="rows per trigger variant and round")
    parser.add_argument("--no-peer", action="store_true",
                        help="skip the peer (eventsourcing's PostgreSQL recorder)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile 5 extra batches of append and print the top functions")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep", action="store_true",
                        help="keep the database, its server and the temp dir")
    args = parser.parse_args(argv)
    quick = args.quick
    args.spans = args.spans or (10_000 if quick else 20_000)
    args.commits = args.commits or (500 if quick else 1_000)
    args.preload = args.preload if args.preload is not None else (100_000 if quick else 1_000_000)
    args.primitive_spans = args.primitive_spans or (5_000 if quick else 10_000)

    return run_bench(Bench(args), args, report)


def run_bench(bench: Any, args: argparse.Namespace, report: Callable[[dict[str, Any]], None],
              setup: Callable[[], None] | None = None, **meta: Any) -> int:
    """The three benchmarks' common end: set up, run every phase, tear down whatever
    happened; then the report, the total time and load average, and --json."""
    started = time.perf_counter()
    try:
        (setup or bench.setup)()
        bench.run_all()
    finally:
        bench.teardown()
    results = bench.results
    results["meta"].update(total_seconds=round(time.perf_counter() - started, 1),
                           load_avg_at_end=os.getloadavg(), **meta)
    report(results)
    console.print(f"total {results['meta']['total_seconds']:.0f} s, load average at end "
                  f"{results['meta']['load_avg_at_end'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
