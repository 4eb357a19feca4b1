"""Verify every span in the ledger: hash, signature, key trust, version chain, head projection.

Proof checks (BLAKE3 + Ed25519, CPU bound) run in a process pool over chunks streamed from a
server-side cursor; chain and trust checks run in order in the parent. Nothing is loaded whole.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads

from . import manifest
from .db import strict_loads
from .errors import LoglineError
from .ledger import span_from_row
from .proofs import check_proofs
from .queries import q

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


def _proof_failures(spans: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    out = []
    for i, span in enumerate(spans):
        check = check_proofs(span)
        if not check.ok:
            out.append((i, check.reason or "PROOF_INVALID", check.detail))
    return out


class _Chain:
    """Walks spans in (id, seq) order and reports chain and trust breaks."""

    def __init__(self, trusted: frozenset[str], root: str, fail: Callable[..., None]) -> None:
        self.trusted, self.root, self.fail = trusted, root, fail
        self.prev: dict[str, Any] | None = None
        self.ids = 0

    def see(self, span: dict[str, Any], position: int, high: int) -> None:
        prev = self.prev if self.prev and self.prev["id"] == span["id"] else None
        self.ids += prev is None
        if prev is None and span["seq"] != 0:
            self.fail(span, "CHAIN_BROKEN", f"first stored version is seq {span['seq']}; "
                      f"seq 0..{span['seq'] - 1} are missing")
        elif prev is not None and span["seq"] != prev["seq"] + 1:
            self.fail(span, "CHAIN_BROKEN", f"seq {prev['seq'] + 1}..{span['seq'] - 1} missing")
        elif prev is not None and span["prev_hash"] != prev["curr_hash"]:
            self.fail(span, "CHAIN_BROKEN", "prev_hash is not the curr_hash of seq "
                      f"{prev['seq']}")
        if prev is not None and position <= prev["_position"]:
            self.fail(span, "POSITION_INVALID", "position is not after the previous version's")
        if position > high:
            self.fail(span, "POSITION_INVALID", "position was never handed out by the ledger")
        if span["public_key"] not in self.trusted:
            self.fail(span, "KEY_UNTRUSTED", f"signed by {span['public_key']}, not a trusted key")
        elif span["entity_type"] == "manifest" and span["public_key"] != self.root:
            self.fail(span, "MANIFEST_UNTRUSTED", "a manifest must be signed by the root key")
        self.prev = {**span, "_position": position}


def _chunks(conn: psycopg.Connection) -> Iterator[tuple[list[dict], list[int]]]:
    with conn.cursor(name="verify_stream") as cur:
        cur.itersize = CHUNK
        cur.execute(q("stream_all_for_verify"))
        while rows := cur.fetchmany(CHUNK):
            yield [span_from_row(r) for r in rows], [r["position"] for r in rows]


def verify(conn: psycopg.Connection, root_key: str, jobs: int | None = None,
           progress: Callable[[int], None] | None = None) -> Report:
    """Check the whole ledger. `conn` must see every row (the kernel role or a superuser)."""
    started = time.perf_counter()
    jobs = jobs or os.cpu_count() or 1
    set_json_loads(strict_loads, conn)  # read numbers exactly as stored, not as Python rounds
    report = Report(jobs=jobs)

    def fail(span: dict[str, Any], reason: str, detail: str) -> None:
        report.failures.append(Failure(span["id"], span["seq"], reason, detail))

    try:
        trusted = manifest.trusted_keys(manifest.latest(conn, root_key), root_key)
    except LoglineError as exc:
        report.failures.append(Failure(manifest.MANIFEST_ID, -1, exc.code, exc.message))
        trusted = frozenset([root_key])
    high = conn.execute(q("position_high_water")).fetchone()["high"] or 0
    chain = _Chain(trusted, root_key, fail)
    with conn.transaction(), _pool(jobs) as pool:
        pending: list[tuple[list[dict], Future]] = []
        for spans, positions in _chunks(conn):
            for span, position in zip(spans, positions, strict=True):
                chain.see(span, position, high)
            pending.append((spans, pool.submit(_proof_failures, spans)))
            report.spans += len(spans)
            while pending and (pending[0][1].done() or len(pending) > 2 * jobs):
                _collect(pending.pop(0), fail)
            if progress:
                progress(len(spans))
        for item in pending:
            _collect(item, fail)
    report.tip = _check_ledger_chain(conn, report.failures)
    for row in conn.execute(q("heads_inconsistent")):
        detail = ("the head projection disagrees with the stored versions"
                  if row["reason"] == "HEAD_MISMATCH" else "stored versions have no head")
        report.failures.append(Failure(row["id"], row["seq"], row["reason"], detail))
    report.ids = chain.ids
    report.failures.sort(key=lambda f: (f.id, f.seq, f.reason))
    report.seconds = time.perf_counter() - started
    return report


def chain_link(prev: str | None, position: int, curr_hash: str) -> str:
    """The ledger-wide chain hash, as ledger.on_append computes it."""
    return hashlib.sha256(f"{prev or ''}:{position}:{curr_hash}".encode()).hexdigest()


def _check_ledger_chain(conn: psycopg.Connection, failures: list[Failure]) -> dict | None:
    """Walk the ledger in position order: every row must extend the chain of the row before
    it, so an edited position or a removed row shows up where it happened. Returns the tip."""
    prev: str | None = None
    tip = None
    with conn.transaction(), conn.cursor(name="verify_chain") as cur:
        cur.itersize = 10 * CHUNK
        cur.execute(q("stream_ledger_chain"))
        for row in cur:
            if chain_link(prev, row["position"], row["curr_hash"] or "") != row["chain_hash"]:
                failures.append(Failure(row["id"], row["seq"], "LEDGER_CHAIN_BROKEN",
                                        f"chain_hash at position {row['position']} does not "
                                        "extend the row before it (edited or removed rows)"))
            prev = row["chain_hash"]
            tip = {"position": row["position"], "chain_hash": prev}
    return tip


def _collect(item: tuple[list[dict], Future], fail: Callable[..., None]) -> None:
    spans, future = item
    for index, reason, detail in future.result():
        fail(spans[index], reason, detail)


class _Inline(Executor):
    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _pool(jobs: int) -> Executor:
    return _Inline() if jobs <= 1 else ProcessPoolExecutor(max_workers=jobs)
