"""What the server holds for its lifetime: connection pools per role, the signing key, the
rate limiter, the metrics, the auth cache and the NOTIFY broadcaster for SSE."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from stage0.api.broadcast import Broadcaster
from stage0.api.denials import Tally, summary_span
from stage0.api.edge import EdgeConfig
from stage0.api.metrics import Metrics
from stage0.api.ratelimit import RateLimiter
from stage0.config import Home
from stage0.errors import LoglineError
from stage0.gov import apikeys
from stage0.gov.contract_store import PLATFORM, contract_span, load_contract
from stage0.gov.contracts import Contract
from stage0.keys import edge_key, id_secret, operator_key
from stage0.ledger import manifest, store
from stage0.ledger.db import (
    Database,
    DatabaseError,
    one,
    resolve,
    set_identity,
)
from stage0.ledger.pools import connection_pool
from stage0.ledger.queries import q
from stage0.log import log
from stage0.spans.clip import clip_fields
from stage0.spans.proofs import public_key_hex

AUTH_CACHE_S = 2.0  # a revoked key stops working within this long
AUDIT_PER_SECOND = 20  # denial spans beyond this are counted into the next one
T = TypeVar("T")


class ServerState:
    def __init__(self, database: Database, home: Home, limiter: RateLimiter | None = None,
                 pool_size: int = 16, edge: EdgeConfig | None = None) -> None:
        self.database = database
        self.edge = edge or EdgeConfig()
        self.home = home
        self.key = operator_key(home)
        self.edge_key = edge_key(self.key)  # signs what clients post (never platform kinds)
        #: What the ids the platform derives are keyed with (api keys, contracts, jobs).
        self.id_secret = id_secret(home, self.key)
        self.signer = public_key_hex(self.key)
        self.root = home.root_public_key()
        self.limiter = limiter or RateLimiter()
        self.metrics = Metrics(self)
        self.pools = {"app": connection_pool(database, "app", pool_size, "logline-app"),
                      "kernel": connection_pool(database, "kernel", 4, "logline-kernel")}
        self.broadcaster = Broadcaster(database)
        self.platform: Contract | None = None  # loaded from the ledger at start()
        self._auth: dict[str, tuple[float, apikeys.Principal | None]] = {}
        self._audit_lock = threading.Lock()
        self._audit_window = (0.0, 0, 0)  # (second, written, dropped)
        self.anonymous = Tally()
        self._summaries: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls) -> ServerState:
        home = Home.from_env()
        return cls(resolve(home), home)

    async def start(self) -> None:
        for pool in self.pools.values():
            pool.open(wait=True, timeout=30)
        if self.signer == self.root:  # a ledger seeded before edge keys existed
            with self.pools["kernel"].connection() as conn:
                manifest.ensure_edge_key(conn, self.key)
        self.platform = self.load_platform_contract()
        await self.broadcaster.start()
        self._summaries = asyncio.create_task(self._summarise())
        self.log("api_started", pid=os.getpid())

    async def stop(self) -> None:
        if self._summaries is not None:
            self._summaries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._summaries
        await anyio.to_thread.run_sync(self.write_summary)  # what the last interval counted
        await self.broadcaster.stop()
        for pool in self.pools.values():
            pool.close()

    def load_platform_contract(self) -> Contract | None:
        """The api contract every route is gated by, as seeded and signed in the ledger.
        Absent or untrusted: every route is denied (fail closed) and the log says why."""
        with self.pools["kernel"].connection() as conn:
            try:
                span = contract_span(conn, self.id_secret, "system", *PLATFORM)
                found = span and load_contract(conn, span["id"],
                                               manifest.trust_set(conn, self.root))
            except LoglineError as exc:
                self.log("platform_contract_refused", error=str(exc))
                return None
        if found is None:
            self.log("platform_contract_missing", contract="@".join(PLATFORM),
                     hint="run `logline init` (or `logline seed`)")
        return found[0] if found else None

    # --- database -------------------------------------------------------------------------
    def in_transaction(self, role: str, principal: apikeys.Principal | None,
                       fn: Callable[..., T], *args: Any) -> T:
        """fn(conn, *args) in one transaction with the caller's identity set locally."""
        with self.pools[role].connection() as conn, conn.transaction():
            if principal is not None:
                set_identity(conn, principal.user_id, principal.tenant_id)
            return fn(conn, *args)

    def valid_principals(self, tokens: list[str]) -> dict[str, apikeys.Principal]:
        """The principals of the tokens that still authenticate (one query, no cache): the
        SSE hub re-checks the keys of open streams with it."""
        with self.pools["kernel"].connection() as conn:
            valid = apikeys.authenticate_many(conn, tokens, self.id_secret)
        for token in set(tokens) - set(valid):  # revoked: not even the auth cache has it
            self._auth.pop(token, None)
        return valid

    def end_sessions(self, application_name: str) -> int:
        """Terminate the database sessions named `application_name` (a killed boot's)."""
        with self.pools["kernel"].connection() as conn:
            ended: int = one(conn.execute(q("terminate_backends"),
                                          {"name": application_name}))["ended"]
            return ended

    def authenticate(self, token: str) -> apikeys.Principal | None:
        now = time.monotonic()
        hit = self._auth.get(token)
        if hit and now - hit[0] < AUTH_CACHE_S:
            return hit[1]
        with self.pools["kernel"].connection() as conn:
            principal = apikeys.authenticate(conn, token, self.id_secret)
        if len(self._auth) > 10_000:
            self._auth.clear()
        self._auth[token] = (now, principal)
        return principal

    # --- audit ----------------------------------------------------------------------------
    def record_allowance(self, endpoint: Any, principal: apikeys.Principal,
                         request_id: str) -> None:
        """A gate_decision ALLOW span for a route whose profile says `record: all` (admin
        actions); appended before the handler runs, so the attempt is on record even if
        the action then fails."""
        with self.pools["kernel"].connection() as conn:
            store.append(conn, [{
                "entity_type": "gate_decision", "who": "api", "did": "allowed",
                "this": endpoint.action, "owner_id": principal.user_id,
                "tenant_id": principal.tenant_id, "visibility": "private", "status": "allow",
                "trace_id": request_id,
                "content": {"outcome": "ALLOW", "reason": "G_OK", "action": endpoint.action,
                            "contract": "api@1.0.0"},
                "metadata": {"code": "G_OK", "action": endpoint.action,
                             "method": endpoint.method, "key_id": principal.key_id,
                             "roles": list(principal.roles)}}], self.key)

    def count_denial(self, code: str, endpoint: Any, request: Any) -> None:
        """A denial of a caller without a valid key: counted, never a span of its own (the
        tally becomes one audit_summary span per interval: stage0/api/denials.py)."""
        self.metrics.denials.labels(code=code).inc()
        self.metrics.anonymous_denials.labels(code=code).inc()
        self.anonymous.add(code, endpoint.action, request.client.host if request.client
                           else None)

    def write_summary(self) -> None:
        """One audit_summary span of the anonymous denials counted since the last, if any."""
        summary = self.anonymous.take()
        if summary is None:
            return
        try:
            with self.pools["kernel"].connection() as conn:
                store.append(conn, [summary_span(summary, self.edge.audit_interval_s)],
                              self.key)
        except (DatabaseError, Exception) as exc:
            self.log("audit_failed", error=str(exc)[:300], denials=summary["total"])

    async def _summarise(self) -> None:
        while True:
            await asyncio.sleep(self.edge.audit_interval_s)
            await anyio.to_thread.run_sync(self.write_summary)

    def audit_denial(self, code: str, endpoint: Any, principal: apikeys.Principal,
                     request: Any, request_id: str) -> None:
        """Record a denial of a known caller as a span, at most AUDIT_PER_SECOND a second
        (the rest are counted into the next one), so a flood of bad requests cannot flood
        the ledger; the client's text in it is cut (stage0/spans/clip.py)."""
        self.metrics.denials.labels(code=code).inc()
        second = int(time.monotonic())
        with self._audit_lock:
            start, written, dropped = self._audit_window
            if start != second:
                start, written = second, 0
            if written >= AUDIT_PER_SECOND:
                self._audit_window = (start, written, dropped + 1)
                return
            self._audit_window = (start, written + 1, 0)
        gated = code.startswith("G_")  # the gate refused: a gate decision like any other
        span = {
            "entity_type": "gate_decision" if gated else "audit_denial",
            "who": "api", "did": "denied", "this": code,
            "owner_id": principal.user_id, "tenant_id": principal.tenant_id,
            "visibility": "private", "status": "deny" if gated else "denied",
            "trace_id": request_id,
            **({"content": {"outcome": "DENY", "reason": code, "action": endpoint.action,
                            "contract": "api@1.0.0"}} if gated else {}),
            "metadata": {"code": code, "action": endpoint.action, "method": endpoint.method,
                         "key_id": principal.key_id, "dropped_before": dropped,
                         **clip_fields({
                             "path": request.url.path,
                             "user_agent": request.headers.get("user-agent"),
                             "client": request.client.host if request.client else None})},
        }
        try:
            with self.pools["kernel"].connection() as conn:
                store.append(conn, [span], self.key)
        except (DatabaseError, Exception) as exc:  # never turn a denial into a 500
            self.log("audit_failed", error=str(exc)[:300])

    def log(self, event: str, **fields: Any) -> None:
        log(event, component="api", **fields)
