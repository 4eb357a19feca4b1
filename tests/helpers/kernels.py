"""User code on a real ledger: functions, requests and policies appended as a user's (or an
attacker's) would be, and booted through the stage-0 loader (run_code, request_worker)."""

from __future__ import annotations

import importlib.util
import threading
import time
import uuid

from helpers import REPO
from stage0.ledger import manifest, store
from stage0.runtime.worker import KERNELS
from stage0.sandbox.pool import SandboxPool

_spec = importlib.util.spec_from_file_location("kernel_run_code",
                                               REPO / "kernels" / "run_code.py")
_run_code = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_run_code)
RUN_CODE = _run_code.KERNEL_ID
WORKER = KERNELS["request_worker"]

#: A kernel's main(ctx) (tests/integration/test_loader.py boots it as a kernel).
CTX_ECHO = "def main(ctx):\n    return {'echo': ctx.input, 'tenant': ctx.identity['tenant_id']}\n"

ECHO = "def main(input):\n    return input\n"


RAISES = "def main(input):\n    raise ValueError('boom ' + str(input))\n"


SLOW = ("import datetime\n"
        "def main(input):\n"
        "    start = datetime.datetime.now()\n"
        "    while (datetime.datetime.now() - start).total_seconds() < 0.25:\n"
        "        pass\n"
        "    return 'done'\n")


def user_function(conn, operator, code: str = ECHO, tenant: str = "acme",
                  visibility: str = "tenant", **extra) -> dict:
    [fn] = store.append(conn, [{
        "entity_type": "function", "who": "alice", "did": "defined", "this": "user function",
        "name": "fn", "code": code, "language": "python", "owner_id": "alice",
        "tenant_id": tenant, "visibility": visibility, "status": "active", **extra}], operator)
    return fn


def raw_request(conn, operator, function_id: str, tenant: str, input=None, **extra) -> dict:
    """A scheduled request appended as is (no checks by stage0.runtime.requests.schedule)."""
    [req] = store.append(conn, [{
        "entity_type": "request", "who": "bob", "did": "scheduled", "this": "run",
        "parent_id": function_id, "owner_id": "bob", "tenant_id": tenant,
        "visibility": "tenant", "status": "scheduled", "input": input,
        "trace_id": str(uuid.uuid4()), "metadata": {}, **extra}], operator)
    return req


def of_type(conn, entity_type: str, tenant: str | None = None) -> list[dict]:
    rows = conn.execute(
        "SELECT id::text AS id, seq, status, parent_id::text AS parent_id, related_to, "
        "tenant_id, owner_id, input, output, error, duration_ms, metadata, position "
        "FROM ledger.universal_registry WHERE entity_type = %s "
        "AND (%s::text IS NULL OR tenant_id = %s) ORDER BY position",
        (entity_type, tenant, tenant)).fetchall()
    for row in rows:
        row["related_to"] = [str(u) for u in row["related_to"] or []]
    return rows


def set_limit(conn, operator, limit: int) -> None:
    manifest.amend(conn, operator, throttle={"per_tenant_daily_exec_limit": limit})


def run(loader, function_id: str, input=None, tenant: str = "acme", user: str = "alice") -> dict:
    args = {"span_id": function_id} if input is None else {"span_id": function_id,
                                                           "input": input}
    return loader.boot(RUN_CODE, args, user_id=user, tenant_id=tenant)


class Recorder:
    """The real sandbox pool, noting for each run the tenant it was made for and the worker
    process that ran it."""

    def __init__(self, pool: SandboxPool) -> None:
        self.pool = pool
        self.runs: list[tuple[str, str | None, int | None]] = []

    def run(self, code, *args, **kwargs):
        result = self.pool.run(code, *args, **kwargs)
        self.runs.append((code, kwargs.get("tenant"), result.worker_pid))
        return result

    def pids(self, tenant: str) -> set[int | None]:
        return {pid for _, t, pid in self.runs if t == tenant}


def await_lock_waiters(conn, n: int, timeout_s: float = 30.0) -> None:
    """Wait until `n` sessions of this database queue for an advisory lock."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        waiting = conn.execute(
            "SELECT count(*) AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND NOT l.granted "
            "AND d.datname = current_database()").fetchone()["n"]
        if waiting >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"{n} sessions never queued for the append lock")


def in_threads(*calls):
    """Run the calls in threads released together by a barrier; return results or raise."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def go(i, call):
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i, c)) for i, c in enumerate(calls)]
    return threads, results


def join_all(threads, results):
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a kernel never returned"
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def function_span(code: str = CTX_ECHO, **extra) -> dict:
    return {"entity_type": "function", "who": "t", "this": "test kernel", "name": "echo",
            "code": code, "owner_id": "system", "tenant_id": "system",
            "visibility": "public", "status": "active", **extra}


def allow(conn, operator, *ids: str) -> None:
    current = manifest.latest(conn, operator.verify_key.encode().hex())
    allowed = current["metadata"]["allowed_boot_ids"] + list(ids)
    manifest.amend(conn, operator, allowed_boot_ids=allowed)


def add(conn, operator, entity_type: str, tenant: str = "acme", **extra) -> dict:
    return store.append(conn, [{"entity_type": entity_type, "who": "alice", "this": "thing",
                                 "owner_id": "alice", "tenant_id": tenant,
                                 "visibility": "tenant", "status": "active", **extra}],
                         operator)[0]


def tenant_policy(conn, operator, code: str, tenant: str = "acme", on=("note",),
                  **meta) -> dict:
    return store.append(conn, [{
        "entity_type": "policy", "who": "alice", "did": "defined", "this": "tenant policy",
        "name": f"p{uuid.uuid4().hex[:6]}", "code": code, "owner_id": "alice",
        "tenant_id": tenant, "visibility": "tenant", "status": "active",
        "metadata": {"on_entity_types": list(on) if on else None, "scope": "tenant", **meta}}],
        operator)[0]


AGENT = KERNELS["policy_agent"]


def agent(loader, batch: int = 200) -> dict:
    return loader.boot(AGENT, {"batch": batch})


def emitted_by(conn, policy_id: str, entity_type: str | None = None) -> list[dict]:
    rows = conn.execute(
        "SELECT id::text AS id, seq, entity_type, status, parent_id::text AS parent_id, "
        "related_to, owner_id, tenant_id, error, metadata, position "
        "FROM ledger.universal_registry WHERE metadata ->> 'policy_id' = %s "
        "AND entity_type <> 'policy_cursor' AND (%s::text IS NULL OR entity_type = %s) "
        "ORDER BY position", (policy_id, entity_type, entity_type)).fetchall()
    for row in rows:
        row["related_to"] = [str(u) for u in row["related_to"] or []]
    return rows
