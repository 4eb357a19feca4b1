"""`logline worker`: one long-running process that keeps the ledger's kernels turning.

It boots observer_bot, request_worker and policy_agent by id through the stage-0 loader, on the
schedules in the manifest (metadata.schedule.<kernel>.every_ms), and earlier when a NOTIFY on
`timeline_updates` says there is work: a new request wakes the request worker at once, any
new span wakes the policy agent. NOTIFY only wakes; the ledger is the truth, so a lost
notification costs at most one poll interval. Several workers, on one machine or many, share
one PostgreSQL: claims skip rows other workers hold, scheduling is idempotent and policy
cursors are chained, so adding workers adds throughput and nothing runs twice.

Beside the kernels it does stage 0's own periodic work (CHORES): `memory_expire` destroys the
keys of memories whose ttl_at has passed, the same code as `logline memory expire`
(docs/memory.md), every metadata.schedule.memory_expire.every_ms (default 30 s).

SIGTERM/SIGINT: the current kernel call finishes (its transaction commits or rolls back as a
whole), then the worker exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from stage0.boot.loader import Loader
from stage0.config import Home
from stage0.errors import LoglineError
from stage0.ledger import notify
from stage0.ledger.db import Connection, Database, OperationalError
from stage0.log import log

KERNELS = {"observer_bot": "00000000-0000-4000-8000-000000000002",
           "request_worker": "00000000-0000-4000-8000-000000000003",
           "policy_agent": "00000000-0000-4000-8000-000000000004"}
DEFAULT_EVERY_MS = {"observer_bot": 2000, "request_worker": 2000, "policy_agent": 5000,
                    "memory_expire": 30000}
#: Stage 0's own periodic work, run in this process (not kernels): what each one does.
CHORES = ("memory_expire",)
#: Spans the kernels write about their own work: they wake nobody.
QUIET = ("policy_cursor", "policy_error", "rollup", "boot_event", "boot_refused")
#: How long one kernel drains a backlog before the others get their turn: one tenant's
#: flood of requests (or spans for the policies) never holds the other kernels up longer.
DRAIN_S = 5.0
#: Memories one round of memory_expire makes unreadable (a full batch runs again at once).
EXPIRE_BATCH = 1000


@dataclass
class Due:
    """When each kernel should next run."""

    at: dict[str, float] = field(default_factory=dict)

    def now(self, name: str) -> None:
        self.at[name] = 0.0

    def wait_s(self) -> float:
        return max(0.0, min(self.at.values()) - time.monotonic())


def _more(name: str, output: Any, kernel_input: dict[str, Any]) -> bool:
    """Did the kernel stop because its batch was full (so there is probably more)?"""
    if name == "request_worker":
        return output.get("claimed", 0) >= int(kernel_input.get("batch", 8))
    if name == "policy_agent":
        return bool(output.get("more"))
    return False


class Worker:
    def __init__(self, database: Database, home: Home, worker_id: str | None = None,
                 sandbox_size: int = 2, kernels: tuple[str, ...] = tuple(KERNELS),
                 chores: tuple[str, ...] = CHORES,
                 every_ms: dict[str, int] | None = None) -> None:
        self.database = database
        self.home = home
        self.worker_id = worker_id or f"worker-{os.getpid()}"
        self.kernels = kernels
        self.chores = chores
        self.every_ms = every_ms or {}
        self.stop = threading.Event()
        self.sandbox_size = sandbox_size
        self.stats = {name: 0 for name in (*kernels, *chores)}

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())

    def run(self, max_cycles: int | None = None) -> None:
        """Serve until stopped. A lost database is waited for and reconnected to (with
        backoff); a key the manifest does not trust stops the worker before it writes."""
        from stage0.sandbox.pool import SandboxPool

        backoff = 0.5
        with SandboxPool(size=self.sandbox_size) as pool:
            while not self.stop.is_set():
                try:
                    self._serve(pool, max_cycles)
                    return
                except (OperationalError, LoglineError) as exc:
                    if isinstance(exc, LoglineError) and exc.code != "DB_UNAVAILABLE":
                        raise
                    log("database_lost", worker=self.worker_id, error=str(exc).strip()[:300],
                        retry_in_s=backoff)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)

    def _serve(self, pool: Any, max_cycles: int | None) -> None:
        with Loader(self.database, self.home, sandbox=pool,
                    worker_id=self.worker_id) as loader, \
                self.database.connect("kernel") as listener:
            self.loader = loader
            if loader.signer_public_key not in loader.platform_keys():
                raise LoglineError("KEY_UNTRUSTED", f"this worker signs with "
                                   f"{loader.signer_public_key}, which the manifest does not "
                                   "trust as a platform key: everything it wrote would fail "
                                   "verify (`logline keys trust KEY --role platform`)")
            loader.id_secret  # noqa: B018 - ID_SECRET_MISSING now, not in every policy round
            notify.listen(listener)
            due = Due({name: 0.0 for name in (*self.kernels, *self.chores)})
            loader.log("worker_started", kernels=list(self.kernels))
            cycles = 0
            try:
                while not self.stop.is_set():
                    self._run_due(due)
                    cycles += 1
                    if max_cycles is not None and cycles >= max_cycles:
                        break
                    self._wait(listener, due)
            finally:
                loader.log("worker_stopped", **self.stats)

    def _every_s(self, name: str) -> float:
        if name in self.every_ms:
            return self.every_ms[name] / 1000
        schedule = (self.loader.manifest_metadata().get("schedule") or {}).get(name) or {}
        return float(schedule.get("every_ms", DEFAULT_EVERY_MS[name])) / 1000

    def _input(self, name: str) -> dict[str, Any]:
        schedule = (self.loader.manifest_metadata().get("schedule") or {}).get(name) or {}
        return {k: v for k, v in schedule.items() if k != "every_ms"}

    def _run_due(self, due: Due) -> None:
        for name in (*self.kernels, *self.chores):
            if self.stop.is_set() or due.at[name] > time.monotonic():
                continue
            more = self._chore(name) if name in self.chores else self._boot(name)
            due.at[name] = 0.0 if more else time.monotonic() + self._every_s(name)

    def _chore(self, name: str) -> bool:
        """One round of stage 0's periodic work; True when a full batch says there is more.
        A failure is logged (the next round tries again), as a failed kernel is."""
        from stage0.memory.service import Memory

        assert name == "memory_expire", name
        loader = self.loader
        try:
            done = Memory(loader.conn, loader.key, loader.home, id_secret=loader.id_secret,
                          root_key=loader.root).expire(limit=EXPIRE_BATCH)
        except LoglineError as exc:
            if loader.conn.broken:
                raise OperationalError(exc.message) from None
            loader.log("chore_failed", chore=name, code=exc.code, message=exc.message[:500])
            return False
        self.stats[name] += 1
        if done["expired"]:
            loader.log("memories_expired", expired=done["expired"])
        return bool(done["expired"] >= EXPIRE_BATCH)

    def _boot(self, name: str) -> bool:
        """Run one kernel. The request worker and the policy agent drain: they run again while
        they report a full batch, instead of leaving a backlog for the next poll, for at most
        DRAIN_S; True when that ran out with work left (the kernel is due again at once, after
        the others had their turn)."""
        started = time.monotonic()
        while not self.stop.is_set():
            kernel_input = self._input(name)
            try:
                output = self.loader.boot(KERNELS[name], kernel_input)
            except LoglineError as exc:
                if self.loader.conn.broken:  # not the kernel's fault: reconnect (see run)
                    raise OperationalError(exc.message) from None
                self.loader.log("kernel_failed", kernel=name, code=exc.code,
                                message=exc.message[:500])
                return False
            self.stats[name] += 1
            if name == "request_worker" and output.get("claimed"):
                self._log_requests(output)
            if not _more(name, output, kernel_input):
                return False
            if time.monotonic() - started >= DRAIN_S:
                return True
        return False

    def _log_requests(self, output: dict[str, Any]) -> None:
        """A batch's outcome by status, and each refused request with its reason: a request
        denied for its tenant's quota is said here, not only in the ledger."""
        done = output.get("executions") or []
        statuses: dict[str, int] = {}
        for one in done:
            status = "denied" if one.get("entity_type") == "policy_violation" else \
                one.get("status")
            statuses[status] = statuses.get(status, 0) + 1
        self.loader.log("requests_done", claimed=output["claimed"], statuses=statuses)
        for one in done:
            if one.get("entity_type") == "policy_violation":
                self.loader.log("request_denied", request_id=one.get("request_id"),
                                reason=one.get("reason") or "QUOTA_EXCEEDED")

    def _wait(self, listener: Connection, due: Due) -> None:
        """Sleep until the next kernel is due, a relevant NOTIFY arrives, or we are stopped."""
        timeout = min(due.wait_s(), 0.5)  # bounded so a stop request is seen promptly
        if timeout <= 0:
            return
        for payload in notify.wait(listener, timeout):
            self._wake(payload, due)

    def _wake(self, payload: str, due: Due) -> None:
        try:
            entity_type = json.loads(payload).get("entity_type")
        except ValueError:
            return
        if entity_type == "request" and "request_worker" in due.at:
            due.now("request_worker")
        if entity_type == "function" and "observer_bot" in due.at:
            due.now("observer_bot")
        if "policy_agent" in due.at and entity_type not in QUIET:
            due.at["policy_agent"] = min(due.at["policy_agent"], time.monotonic() + 0.2)
