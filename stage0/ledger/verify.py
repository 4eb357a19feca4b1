"""Verify every span in the ledger: hash, signature, key trust, version chain, head projection.

Spans stream over id ranges, in (id, seq) order, and are checked one by one (hash, signature,
trust, version chain, position); with several jobs, worker processes take whole id ranges on
their own connections in the same snapshot. Rows stream in chunks while they are checked (the
server reads the next rows while this process verifies signatures). The checks that need no
signature (the ledger-wide chain, its tip, a checkpoint, the head projection) run in
PostgreSQL, on a second connection in the same snapshot, at the same time: this process only
hears of rows that fail them. Nothing is loaded whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import set_json_loads

from stage0.errors import LoglineError
from stage0.ledger import checkpoint as pin
from stage0.ledger import manifest
from stage0.ledger.db import LOSSY, Connection, one, strict_loads
from stage0.ledger.queries import q
from stage0.spans.canonical import FIELDS
from stage0.spans.proofs import check_proofs

CHUNK = 2000


@dataclass(frozen=True)
class Failure:
    id: str
    seq: int
    reason: str
    detail: str


@dataclass
class Report:
    spans: int = 0
    ids: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    jobs: int = 1
    tip: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "spans": self.spans, "ids": self.ids, "jobs": self.jobs,
                "seconds": round(self.seconds, 3), "tip": self.tip,
                "failures": [asdict(f) for f in self.failures]}


class _Walk:
    """Checks spans streamed in (id, seq) order: each span's hash and signature, its key's
    trust, its version chain and its position. Collects failures as plain tuples."""

    def __init__(self, signers: manifest.Signers, root: str, high: int) -> None:
        self.signers, self.root, self.high = signers, root, high
        self.failures: list[tuple[str, int, str, str]] = []
        self.spans = self.ids = 0
        self.prev: tuple[str, int, str | None, int] | None = None  # id, seq, hash, position

    def fail(self, span: dict[str, Any], reason: str, detail: str) -> None:
        self.failures.append((span["id"], span["seq"], reason, detail))

    def see(self, span: dict[str, Any], position: int) -> None:
        self.spans += 1
        prev = self.prev if self.prev is not None and self.prev[0] == span["id"] else None
        seq = span["seq"]
        if prev is None:
            self.ids += 1
            if seq != 0:
                self.fail(span, "CHAIN_BROKEN", f"first stored version is seq {seq}; "
                          f"seq 0..{seq - 1} are missing")
        elif seq != prev[1] + 1:
            self.fail(span, "CHAIN_BROKEN", f"seq {prev[1] + 1}..{seq - 1} missing")
        elif span["prev_hash"] != prev[2]:
            self.fail(span, "CHAIN_BROKEN", f"prev_hash is not the curr_hash of seq {prev[1]}")
        if prev is not None and position <= prev[3]:
            self.fail(span, "POSITION_INVALID", "position is not after the previous version's")
        if position > self.high:
            self.fail(span, "POSITION_INVALID", "position was never handed out by the ledger")
        violation = self.signers.violation(span)
        if violation == "KEY_UNTRUSTED":
            self.fail(span, violation, f"signed by {span['public_key']}, not a trusted key")
        elif span["entity_type"] == "manifest" and span["public_key"] != self.root:
            self.fail(span, "MANIFEST_UNTRUSTED", "a manifest must be signed by the root key")
        elif violation:
            self.fail(span, violation, f"a {span['entity_type']} record counts only when a "
                      f"platform key signs it; {span['public_key']} is not one")
        check = check_proofs(span)
        if not check.ok:
            self.fail(span, check.reason or "PROOF_INVALID", check.detail)
        self.prev = (span["id"], seq, span["curr_hash"], position)


#: 16 digits in a row: maybe an integer beyond 2^53 (strings may match too, harmlessly).
_LONG_DIGITS = re.compile(rb"[0-9]{16}")
#: strict_loads for text without such integers: its float hook, and the C decoder's own
#: integers (up to 15 digits, so within 2^53: what strict_loads returns for them too).
_DECODER = json.JSONDecoder(parse_float=lambda text: _exact_float(text, float(text)))


def _exact_float(text: str, value: float) -> float | str:
    """What strict_loads makes of a float: the value, or LOSSY when the stored digits are
    not exactly what a writer could have sent."""
    return value if Decimal(text) == Decimal(repr(value)) else LOSSY + text


def _loads(data: str | bytes) -> Any:
    """strict_loads, without a Python callback per integer."""
    if isinstance(data, str):  # psycopg passes bytes, though its loads type allows str
        data = data.encode()
    if _LONG_DIGITS.search(data):
        return strict_loads(data)
    return _DECODER.decode(data.decode())


#: libpq 17 streams results in chunks (PQsetChunkedRowsMode): the server keeps sending the
#: next rows while this process checks the ones it has; an older libpq uses a server-side
#: cursor, fetched chunk by chunk (the server idles while the client works, and vice versa).
_CHUNKED = psycopg.pq.version() >= 170000


def _walk_range(conn: Connection, lo: str, hi: str, walk: _Walk) -> None:
    """Stream the versions of ids in [lo, hi] into `walk` (rows come back with ids, `at` and
    related_to already as the text a span holds: PostgreSQL converts them)."""
    see, params = walk.see, {"lo": lo, "hi": hi}
    if _CHUNKED:
        with conn.cursor(row_factory=tuple_row) as cur:
            for row in cur.stream(q("stream_range_for_verify"), params, size=CHUNK):
                see(dict(zip(FIELDS, row, strict=False)), row[-1])  # position comes last
        return
    with conn.cursor(name="verify_stream", row_factory=tuple_row) as cur:
        cur.itersize = CHUNK
        cur.execute(q("stream_range_for_verify"), params)
        for row in cur:
            see(dict(zip(FIELDS, row, strict=False)), row[-1])


def _ranges(parts: int) -> list[tuple[str, str]]:
    """`parts` contiguous, inclusive ranges of the uuid space (chains never cross them)."""
    bounds = [n * (2**128) // parts for n in range(parts + 1)]
    return [(str(uuid.UUID(int=bounds[n])), str(uuid.UUID(int=bounds[n + 1] - 1)))
            for n in range(parts)]


# --- worker processes: each verifies whole id ranges on its own connection, in the parent's
#     snapshot (pg_export_snapshot), and sends back only counts and failures.

_worker: dict[str, Any] = {}


def _worker_start(conninfo: str) -> None:
    try:
        conn = psycopg.connect(conninfo, autocommit=False)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        set_json_loads(_loads, conn)
        _worker["conn"] = conn
    except psycopg.Error as exc:  # the parent verifies this worker's ranges itself
        _worker["error"] = str(exc)


def _worker_range(snapshot: str, lo: str, hi: str, signers: manifest.Signers, root: str,
                  high: int) -> tuple[int, int, list[tuple[str, int, str, str]]]:
    conn = _worker.get("conn")
    if conn is None:
        raise RuntimeError(f"verify worker has no connection: {_worker.get('error')}")
    walk = _Walk(signers, root, high)
    with conn.transaction():
        conn.execute(sql.SQL(q("set_snapshot")).format(snapshot))
        conn.execute(q("unbounded_transaction"))
        _walk_range(conn, lo, hi, walk)
    return walk.spans, walk.ids, walk.failures


def _conninfo(conn: Connection) -> str:
    password = conn.info.password
    return make_conninfo(conn.info.dsn, **({"password": password} if password else {}))


def verify(conn: Connection, root_key: str, jobs: int | None = None,
           progress: Callable[[int], None] | None = None,
           checkpoint: dict[str, Any] | None = None) -> Report:
    """Check the whole ledger. `conn` must see every row (the kernel role or a superuser).

    Everything is read in one REPEATABLE READ snapshot, so appends running meanwhile neither
    show up halfway nor raise false alarms. With jobs > 1, worker processes verify id ranges
    on their own connections in that same snapshot while this process walks the ledger-wide
    chain; chains are per id, so a range holds whole chains."""
    started = time.perf_counter()
    jobs = jobs or os.cpu_count() or 1
    report = Report(jobs=jobs)
    failures: list[tuple[str, int, str, str]] = []
    isolation = conn.isolation_level
    own = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if own:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            # A whole ledger in one snapshot takes as long as it takes; this transaction also
            # waits, idle, for the worker processes.
            conn.execute(q("unbounded_transaction"))
            set_json_loads(_loads, conn)  # numbers exactly as stored, not as Python rounds
            try:
                signers = manifest.signers_of(manifest.latest(conn, root_key), root_key)
            except LoglineError as exc:
                report.failures.append(Failure(manifest.MANIFEST_ID, -1, exc.code,
                                               exc.message))
                signers = manifest.signers_of(None, root_key)
            high = one(conn.execute(q("position_high_water")))["high"] or 0
            ranges = _ranges(max(16, 4 * jobs))
            walk = _Walk(signers, root_key, high)
            pending = []
            pool = None
            snapshot = one(conn.execute(q("export_snapshot")))["s"] if own else None
            if jobs > 1 and snapshot is not None:
                pool = ProcessPoolExecutor(jobs, initializer=_worker_start,
                                           initargs=(_conninfo(conn),))
                pending = [(lo, hi, pool.submit(_worker_range, snapshot, lo, hi, signers,
                                                root_key, high)) for lo, hi in ranges]
                if progress:
                    for *_, future in pending:
                        future.add_done_callback(
                            lambda f: f.exception() is None and progress(f.result()[0]))
            # The checks PostgreSQL computes, on a second connection in this snapshot, while
            # this process (or the workers) verify signatures; here afterwards if it fails.
            # Started after the workers were forked (submit starts them): a fork never copies
            # a process whose other thread is inside the driver.
            side = _ServerChecks(_conninfo(conn), snapshot, checkpoint) if snapshot else None
            try:
                for lo, hi in ranges if pool is None else ():
                    before = walk.spans
                    _walk_range(conn, lo, hi, walk)
                    if progress:
                        progress(walk.spans - before)
                # Meanwhile (or then): the ledger-wide chain and the head projection.
                done = side.result() if side is not None else None
                if done is None:
                    done = _server_checks(conn, checkpoint)
                report.tip = done[0]
                report.failures += done[1]
                for lo, hi, future in pending:
                    try:
                        spans, ids, found = future.result()
                    except Exception:  # a worker that could not connect: do its range here
                        before = walk.spans
                        _walk_range(conn, lo, hi, walk)
                        if progress:
                            progress(walk.spans - before)
                        continue
                    walk.spans, walk.ids = walk.spans + spans, walk.ids + ids
                    failures += found
            finally:
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
    finally:
        if own:
            conn.isolation_level = isolation
    failures += walk.failures
    report.failures += [Failure(*f) for f in failures]
    report.spans, report.ids = walk.spans, walk.ids
    report.failures.sort(key=lambda f: (f.id, f.seq, f.reason))
    report.seconds = time.perf_counter() - started
    return report


def chain_link(prev: str | None, position: int, curr_hash: str) -> str:
    """The ledger-wide chain hash, as ledger.on_append computes it."""
    return hashlib.sha256(f"{prev or ''}:{position}:{curr_hash}".encode()).hexdigest()


def _check_ledger_chain(conn: Connection, failures: list[Failure]) -> dict[str, Any] | None:
    """Every row in position order must extend the chain of the row before it (chain_link),
    so an edited position or a removed row shows up where it happened. PostgreSQL computes
    the links and returns the rows that break them. Returns the tip (the newest row)."""
    for row in conn.execute(q("ledger_chain_breaks")):
        failures.append(Failure(row["id"], row["seq"], "LEDGER_CHAIN_BROKEN",
                                f"chain_hash at position {row['position']} does not "
                                "extend the row before it (edited or removed rows)"))
    newest = conn.execute(q("newest_row")).fetchone()
    return None if newest is None else {"position": newest["position"],
                                        "chain_hash": newest["chain_hash"]}


def _server_checks(conn: Connection, checkpoint: dict[str, Any] | None
                   ) -> tuple[dict[str, Any] | None, list[Failure]]:
    """The checks PostgreSQL computes (no signature involved): the ledger-wide chain, its
    recorded tip, a checkpoint, the head projection. Returns the tip and the failures."""
    failures: list[Failure] = []
    tip = _check_ledger_chain(conn, failures)
    _check_tip(conn, tip, failures)
    if checkpoint is not None:
        broken = pin.check(conn, checkpoint)
        if broken:
            failures.append(Failure("ledger", checkpoint["position"], *broken))
    for row in conn.execute(q("heads_inconsistent")):
        detail = ("the head projection disagrees with the stored versions"
                  if row["reason"] == "HEAD_MISMATCH" else "stored versions have no head")
        failures.append(Failure(row["id"], row["seq"], row["reason"], detail))
    return tip, failures


class _ServerChecks:
    """_server_checks on a connection of its own, in the verifying transaction's snapshot,
    on a thread (which waits on PostgreSQL: the GIL is free for the signature checks).
    result() is None when it could not run; the caller then runs them itself."""

    def __init__(self, conninfo: str, snapshot: str, checkpoint: dict[str, Any] | None
                 ) -> None:
        self._out: tuple[dict[str, Any] | None, list[Failure]] | None = None
        self._thread = threading.Thread(target=self._run, args=(conninfo, snapshot, checkpoint),
                                        name="verify-server-checks", daemon=True)
        self._thread.start()

    def _run(self, conninfo: str, snapshot: str, checkpoint: dict[str, Any] | None) -> None:
        try:
            with psycopg.connect(conninfo, autocommit=False, row_factory=dict_row) as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                with conn.transaction():
                    conn.execute(sql.SQL(q("set_snapshot")).format(snapshot))
                    conn.execute(q("unbounded_transaction"))
                    self._out = _server_checks(conn, checkpoint)
        except Exception:  # noqa: BLE001 - the caller runs them again, and raises if it must
            self._out = None

    def result(self) -> tuple[dict[str, Any] | None, list[Failure]] | None:
        self._thread.join()
        return self._out


def _check_tip(conn: Connection, tip: dict[str, Any] | None, failures: list[Failure]
               ) -> None:
    """The newest row must be the tip the last append recorded: rows deleted from the end
    leave a tip that points past them."""
    recorded = conn.execute(q("chain_tip")).fetchone()
    if recorded is None or recorded["position"] is None:
        return
    if tip is None or (tip["position"], tip["chain_hash"]) != (recorded["position"],
                                                               recorded["chain_hash"]):
        newest = tip["position"] if tip else None
        failures.append(Failure("ledger", recorded["position"], "CHAIN_TRUNCATED",
                                f"the last append recorded the tip at position "
                                f"{recorded['position']}, but the newest row is at {newest}: "
                                "rows were deleted from the end"))
