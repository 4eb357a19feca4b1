"""What the console needs to say why things happen, not only what: the caller's tenant's
queue (waiting, running, today's executions against the daily quota) and a ledger-wide
verification an admin can run from the browser.

The queue is read on the kernel role (the quota's counter is the kernel's table) with the
caller's tenant in every condition; the verification walks every span with
stage0.ledger.verify.verify on one kernel connection, one at a time per server, and is cancelled
after VERIFY_TIMEOUT_S (`logline verify` has no such limit). Its failures in spans the caller
cannot see are counted, not named: an admin of one tenant learns that the ledger is damaged,
not what another tenant holds.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import anyio
from pydantic import BaseModel, Field

from stage0.api.endpoint import Call, Endpoint
from stage0.api.errors import ApiError
from stage0.ledger import manifest, records, verify
from stage0.ledger.db import Connection, QueryCanceled, one
from stage0.ledger.queries import q
from stage0.spans.canonical import format_at

#: run_code's quota when the manifest sets none (kernels/run_code.py).
DAILY_LIMIT_DEFAULT = 100
#: Under the request timeout (15 s), so the answer says what happened, not just "timeout".
VERIFY_TIMEOUT_S = 10.0
FAILURES_SHOWN = 50
_VERIFYING = threading.Lock()  # one ledger-wide walk at a time per server process


class LastExecution(BaseModel):
    id: str
    at: str
    status: str | None
    duration_ms: int | None


class Queue(BaseModel):
    tenant_id: str
    queued: int = Field(description="scheduled requests no worker has claimed yet")
    running: int = Field(description="scheduled requests a worker has claimed and is running "
                         "now (their head row is locked by the worker's open transaction)")
    oldest_queued_at: str | None = Field(description="when the longest-waiting queued "
                                         "request was scheduled")
    day: str = Field(description="today (UTC), the quota's day")
    executions_today: int = Field(description="what the daily quota counts for your tenant")
    daily_limit: int = Field(description="the manifest's throttle.per_tenant_daily_exec_limit")
    remaining: int
    last_execution: LastExecution | None


class Failure(BaseModel):
    id: str | None = Field(description="the span (or `ledger`); null for a span you cannot "
                           "see")
    seq: int | None
    reason: str
    detail: str


class Tip(BaseModel):
    position: int
    chain_hash: str


class LedgerVerification(BaseModel):
    ok: bool
    spans: int = Field(description="versions checked (hash, signature, trust, chain)")
    ids: int = Field(description="distinct span ids")
    seconds: float
    tip: Tip | None = Field(description="the newest position and its ledger chain hash")
    failure_count: int
    failures: list[Failure] = Field(description=f"the first {FAILURES_SHOWN}, yours named")
    not_visible: int = Field(description="failures in spans you cannot see (counted, not "
                             "named)")


def _at(value: datetime | None) -> str | None:
    return format_at(value) if value is not None else None


# --- the queue ----------------------------------------------------------------------------
def _daily_limit(conn: Connection, root: str) -> int:
    metadata = manifest.latest(conn, root).get("metadata") or {}
    limit = (metadata.get("throttle") or {}).get("per_tenant_daily_exec_limit")
    return limit if type(limit) is int else DAILY_LIMIT_DEFAULT


async def queue(call: Call) -> Queue:
    """The caller's tenant's queue and quota, as the workers see them."""
    p = call.principal
    assert p is not None

    def run(conn: Connection) -> Queue:
        keys = sorted(records.platform(conn, call.state.root).keys)
        args = {"tenant": p.tenant_id, "keys": keys}
        waiting = one(conn.execute(q("queue_health"), args))
        today = one(conn.execute(q("executions_today"), args))
        last = conn.execute(q("last_execution"), args).fetchone()
        limit = _daily_limit(conn, call.state.root)
        return Queue(
            tenant_id=p.tenant_id, queued=waiting["queued"], running=waiting["running"],
            oldest_queued_at=_at(waiting["oldest_queued_at"]), day=today["day"],
            executions_today=today["n"], daily_limit=limit,
            remaining=max(0, limit - today["n"]),
            last_execution=LastExecution(**{**last, "at": _at(last["at"])}) if last else None)

    return await call.db(run, role="kernel")


# --- the whole ledger ---------------------------------------------------------------------
def _walk(conn: Connection, root: str) -> verify.Report:
    """verify.verify on `conn`, cancelled after VERIFY_TIMEOUT_S. The cancel and the end of
    the walk take one lock, so a late timer never cancels what the connection does next."""
    guard = threading.Lock()
    done = False

    def cancel() -> None:
        with guard:
            if not done:
                conn.cancel_safe()

    timer = threading.Timer(VERIFY_TIMEOUT_S, cancel)
    timer.start()
    try:
        return verify.verify(conn, root, jobs=1)
    except QueryCanceled:
        raise ApiError.of("VERIFY_TIMEOUT", f"the ledger could not be verified within "
                          f"{VERIFY_TIMEOUT_S:.0f} s here; run `logline verify` (no time "
                          "limit, several processes)") from None
    finally:
        with guard:
            done = True
        timer.cancel()


def _verify_once(call: Call) -> verify.Report:
    if not _VERIFYING.acquire(blocking=False):
        raise ApiError.of("VERIFY_RUNNING", "a ledger-wide verification is already running "
                          "on this server; try again when it has finished")
    try:
        with call.state.pools["kernel"].connection() as conn:
            return _walk(conn, call.state.root)
    finally:
        _VERIFYING.release()


def _shown(report: verify.Report, visible: set[str]) -> tuple[list[Failure], int]:
    """The failures as the caller may read them, named ones first: a span the caller can
    see, or the ledger's own (`ledger`), is named; any other is only counted."""
    named, hidden = [], []
    for f in report.failures:
        if f.id in visible or not _is_uuid(f.id):
            named.append(Failure(id=f.id, seq=f.seq, reason=f.reason, detail=f.detail))
        else:
            hidden.append(Failure(id=None, seq=None, reason=f.reason,
                                  detail="a span you cannot see"))
    return named + hidden, len(hidden)


def _is_uuid(value: str) -> bool:
    return len(value) == 36 and value.count("-") == 4


async def verify_ledger(call: Call) -> LedgerVerification:
    """Every span of the ledger: hash, signature, key trust, version and ledger chains."""
    report = await anyio.to_thread.run_sync(_verify_once, call)
    ids = sorted({f.id for f in report.failures if _is_uuid(f.id)})

    def visible(conn: Connection) -> set[str]:
        return {r["id"] for r in conn.execute(q("visible_ids"), {"ids": ids})}

    seen = await call.db(visible) if ids else set()
    failures, hidden = _shown(report, seen)
    tip: dict[str, Any] | None = report.tip
    return LedgerVerification(
        ok=report.ok, spans=report.spans, ids=report.ids, seconds=round(report.seconds, 3),
        tip=Tip(**tip) if tip else None, failure_count=len(failures),
        failures=failures[:FAILURES_SHOWN], not_visible=hidden)


ENDPOINTS: list[Endpoint] = [
    Endpoint("GET", "/api/queue", queue, "Your tenant's queue: requests waiting and running, "
             "executions today against the daily quota, the last execution",
             "api.queue_read", response=Queue),
    Endpoint("POST", "/api/verify", verify_ledger, "Verify the whole ledger (admin): hash, "
             "signature, key trust and chains of every span; at most "
             f"{VERIFY_TIMEOUT_S:.0f} s", "api.ledger_verify", limit="admin",
             response=LedgerVerification),
]
